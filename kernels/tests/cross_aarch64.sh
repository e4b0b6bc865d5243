#!/usr/bin/env bash
# Cross-compiles the kernels for aarch64 (the Jetson's CPU; no CUDA) and runs every C++ test that
# kernels/CMakeLists.txt registers (add_test) under qemu-aarch64, through ctest.
#
#   kernels/tests/cross_aarch64.sh [BUILD_DIR] [extra cmake -D options...]
#
# BUILD_DIR defaults to build/aarch64 (relative to the repository root); JOBS (default 2) sets
# the build's and ctest's parallelism. Needs Debian's g++-aarch64-linux-gnu and qemu-user
# (.ci/run installs them). The last line is a summary; the exit status is ctest's.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build_dir="${1:-$root/build/aarch64}"
shift $(( $# > 0 ? 1 : 0 ))
jobs="${JOBS:-2}"
triple=aarch64-linux-gnu

for tool in "$triple-g++" "$triple-readelf" "$triple-nm" qemu-aarch64 cmake ctest; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool not found (apt-get install g++-aarch64-linux-gnu qemu-user cmake)" >&2
    exit 2
  fi
done

# The host's compiler flags (-march=native) do not fit the target: pass -DCMAKE_CXX_FLAGS=... instead.
unset CFLAGS CXXFLAGS LDFLAGS

start=$SECONDS
# CUDA off: the target has no CUDA compiler here (nvcc is x86-64's), and the toolchain file keeps
# the host's CUDA headers out, so the emulated CUDA tests are not configured either.
cmake -S "$root" -B "$build_dir" -DCMAKE_TOOLCHAIN_FILE="$root/kernels/cmake/toolchain-aarch64.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DSEGDEPLOY_WITH_CUDA=OFF -DSEGDEPLOY_BUILD_TESTS=ON "$@"
cmake --build "$build_dir" -j "$jobs"
build_s=$(( SECONDS - start ))

# The build is really aarch64's and takes the portable CPU paths: an AArch64 ELF without the
# x86-64 (AVX2) build of the CPU drivers, with the baseline one.
library="$build_dir/kernels/libsegdeploy_kernels.so"
if ! "$triple-readelf" -h "$library" | grep -q 'Machine:.*AArch64'; then
  echo "error: $library is not an AArch64 library" >&2
  exit 1
fi
symbols="$("$triple-nm" -C "$library")"
if grep -q 'x86_64_v3::' <<<"$symbols" || ! grep -q 'baseline::' <<<"$symbols"; then
  echo "error: $library should hold the baseline CPU drivers and no x86_64_v3 ones" >&2
  exit 1
fi

start=$SECONDS
status=0
(cd "$build_dir" && ctest --output-on-failure -j "$jobs" --timeout 900) || status=$?
test_s=$(( SECONDS - start ))
count="$(cd "$build_dir" && ctest -N | sed -n 's/^Total Tests: //p')"
echo "aarch64 cross: $count C++ tests run under qemu-aarch64, ctest status $status" \
     "(configure + build ${build_s} s, tests ${test_s} s, -j $jobs)"
exit "$status"
