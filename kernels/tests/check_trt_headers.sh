#!/usr/bin/env bash
# Compiles and links the TensorRT plugin library (libsegdeploy_trt_plugin: DenseCRF, UpsampleArgmax
# and DepthwiseConv) against NVIDIA's public TensorRT headers, TensorRT 10.3 (JetPack 6.1/6.2) and
# the newest 11.x release, without installing TensorRT: the headers come from a git clone (or a
# bare mirror) of https://github.com/NVIDIA/TensorRT and are extracted under the build folder,
# never into the source tree. Needs nvcc (CUDA 12 or 13) and CMake; no GPU.
#
#   kernels/tests/check_trt_headers.sh TENSORRT_GIT_DIR [BUILD_PREFIX]
#
# BUILD_PREFIX (default build/trt-headers-): each release builds in ${BUILD_PREFIX}<release>
# (e.g. build/trt-headers-10.3.0), with its headers in <that folder>/tensorrt/include. Prints
# one line per release and exits non-zero if any build fails, the library does not export
# TensorRT's two entry points, or it calls a kernel that libsegdeploy_kernels.so lacks.
set -euo pipefail

git_dir=${1:?usage: $0 TENSORRT_GIT_DIR [BUILD_PREFIX]}
prefix=${2:-build/trt-headers-}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# v10.3.0, and the newest 11.x tag (tags spell 11.x as v11.0, v11.1, ...).
newest_11=$(git -C "$git_dir" tag --list 'v11.*' | sort -V | tail -n 1)
if [[ -z "$newest_11" ]]; then
  echo "no v11.* tag in $git_dir (fetch the tags)" >&2
  exit 2
fi
status=0
for tag in v10.3.0 "$newest_11"; do
  build="${prefix}${tag#v}"
  headers="$build/tensorrt"
  rm -rf "$headers"
  mkdir -p "$headers"
  git -C "$git_dir" archive "$tag" include | tar -x -C "$headers"
  log="$build/check.log"
  # One architecture: this checks the host and device code against the headers, not the GPUs.
  if cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=86 \
       -DSEGDEPLOY_TENSORRT_INCLUDE_DIR="$root/$headers/include" >"$log" 2>&1 &&
     cmake --build "$build" -j 2 --target segdeploy_trt_plugin >>"$log" 2>&1; then
    library="$build/kernels/libsegdeploy_trt_plugin.so"
    exported=$(nm -D --defined-only "$library" | awk '$2 == "T" {print $3}' | sort | tr '\n' ' ')
    # A shared library links with undefined symbols: the kernels' entry points the plugins call must
    # be in the libsegdeploy_kernels beside it, or loadLibrary fails where the plugin is used.
    unresolved=$(comm -23 <(nm -D --undefined-only "$library" | awk '$2 ~ /^sd_/ {print $2}' | sort -u) \
                          <(nm -D --defined-only "$build/kernels/libsegdeploy_kernels.so" | awk '{print $3}' | sort -u) |
                 tr '\n' ' ')
    if [[ "$exported" != *"getCreators "* || "$exported" != *"setLoggerFinder "* ]]; then
      echo "TensorRT $tag headers: $library lacks getCreators/setLoggerFinder (exports: $exported)"
      status=1
    elif [[ -n "$unresolved" ]]; then
      echo "TensorRT $tag headers: $library calls kernels that libsegdeploy_kernels.so lacks: $unresolved"
      status=1
    else
      echo "TensorRT $tag headers: $library built; exports: $exported"
    fi
  else
    echo "TensorRT $tag headers: build failed, see $log"
    tail -n 30 "$log"
    status=1
  fi
done
exit $status
