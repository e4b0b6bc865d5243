#!/usr/bin/env bash
# Builds the kernels library at each given commit, for benchmarks/crf_gpu_ab.py: nvcc needs no
# GPU, so the builds are made on a development machine and carried to the GPU, where one run
# times them against each other. Each build goes to OUT/<commit>/libsegdeploy_kernels.so, made in a
# temporary git worktree of this repository (the working tree is left as it is).
#
#   CUDA_ARCH=90 bash benchmarks/build_kernels_at.sh OUT 778b3a6 HEAD
#
# CUDA_ARCH: the GPU architectures to build for (default 90, an H100/H200; 87 for Jetson Orin).
# CMAKE_ARGS: further arguments for CMake's configure step. TARGET: the CMake target whose
# library is copied (default segdeploy_kernels).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
cd "$(dirname "$0")/.."
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
target=${TARGET:-segdeploy_kernels}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
scratch=$(mktemp -d)
trap 'git worktree remove --force "$scratch/tree" 2>/dev/null || true; rm -rf "$scratch"' EXIT

for commit in "$@"; do
  name=$(git rev-parse --short "$commit^{commit}") || { echo "not a commit: $commit" >&2; exit 2; }
  echo "building $commit ($name)"
  git worktree add --detach --force "$scratch/tree" "$name" >/dev/null
  # shellcheck disable=SC2086  # CMAKE_ARGS holds several arguments
  cmake -S "$scratch/tree" -B "$scratch/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" ${CMAKE_ARGS:-} >"$scratch/configure.log" \
    || { tail -n 30 "$scratch/configure.log" >&2; exit 1; }
  cmake --build "$scratch/build" -j "$(nproc)" --target "$target" >"$scratch/build.log" \
    || { tail -n 30 "$scratch/build.log" >&2; exit 1; }
  mkdir -p "$out/$name"
  cp "$scratch/build/kernels/lib$target.so" "$out/$name/libsegdeploy_kernels.so"
  git worktree remove --force "$scratch/tree"
  rm -rf "$scratch/build"
done
ls -l "$out"/*/libsegdeploy_kernels.so
