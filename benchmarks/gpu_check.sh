#!/usr/bin/env bash
# GPU check of the dense CRF kernels on a machine with nvcc, cmake, ninja and python3 (numpy,
# pytest): builds the kernels (and the TensorRT plugin where TensorRT headers exist), runs the
# C++ tests (also under compute-sanitizer when present), the GPU pytest tests and the GPU
# benchmark. Every step logs to $OUT/<step>.log; the exit status is non-zero if a step failed.
#
#   OUT=/tmp/gpu_check CUDA_ARCH=90 CRF_BENCH_IMAGE=astronaut.npy bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
BUILD=${BUILD_DIR:-build/gpu}
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac  # absolute: the Python steps run from here too
mkdir -p "$OUT"
failed=()

step() {  # step NAME COMMAND...: runs COMMAND, logs to $OUT/NAME.log, records a failure
  local name=$1
  shift
  local started=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "ok      $name ($((SECONDS - started)) s)"
  else
    echo "FAILED  $name ($((SECONDS - started)) s): last lines of $name.log:"
    tail -n 40 "$OUT/$name.log" | sed 's/^/    /'
    failed+=("$name")
  fi
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
arch=()  # CUDA_ARCH unset: the GPU of this machine (kernels/cmake/cuda_architectures.cmake)
[ -n "${CUDA_ARCH:-}" ] && arch=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH")
step configure cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${arch[@]+"${arch[@]}"} \
  -DSEGDEPLOY_BUILD_TESTS=ON
grep -E "CUDA architectures" "$OUT/configure.log" | sed 's/^/        /'
grep -E "TensorRT|CUDA compiler identification" "$OUT/configure.log" | sed 's/^/        /'
step build cmake --build "$BUILD" -j "$(nproc)"
# The emulated CUDA tests (CUDA kernels run on the host, for machines without a GPU) are left out.
step ctest ctest --test-dir "$BUILD" --output-on-failure --exclude-regex emulated

# The benchmark before the slower checks, so that a short device session still gets its figures.
export SEGDEPLOY_KERNELS_LIB="$BUILD/kernels/libsegdeploy_kernels.so" PYTHONPATH="$PWD"
benchmark=(python3 benchmarks/crf.py --repeats 3 --gpu-profile --json "$OUT/crf_benchmark.json")
[ -n "${CRF_BENCH_IMAGE:-}" ] && benchmark+=(--image "$CRF_BENCH_IMAGE")
[ -n "${CRF_BENCH_SKIP_CPU:-}" ] && benchmark+=(--skip-cpu)
step benchmark "${benchmark[@]}"
cat "$OUT/benchmark.log"
# The fused upsample + argmax against torch's interpolate + argmax (the kernel alone without torch).
head_benchmark=(python3 benchmarks/head_gpu.py --json "$OUT/head_gpu_benchmark.json")
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || head_benchmark+=(--fused-only)
step head-benchmark "${head_benchmark[@]}"
cat "$OUT/head-benchmark.log"
step pytest python3 -m pytest tests/test_crf.py tests/test_crf_onnx.py -v -p no:cacheprovider -rs
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck initcheck racecheck synccheck; do  # racecheck, synccheck: shared memory, barriers
    step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/kernels/test_densecrf"
    step "sanitizer-$tool-head" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$BUILD/kernels/test_upsample_argmax_cuda"
  done
fi
if command -v nsys >/dev/null; then  # time per kernel, for tuning
  profile=(nsys profile --stats=true --force-overwrite true -o "${TMPDIR:-/tmp}/crf_profile" "${benchmark[@]:0:2}"
           --skip-cpu --gpu-repeats 5)
  [ -n "${CRF_BENCH_IMAGE:-}" ] && profile+=(--image "$CRF_BENCH_IMAGE")
  step nsys-profile "${profile[@]}"
  grep -A 40 "cuda_gpu_kern_sum" "$OUT/nsys-profile.log" | head -45
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
