#!/usr/bin/env bash
# GPU benchmark of DeepLabV3+ (ResNet-50, 512x512) on the torch CUDA backends (FP32, FP16,
# CUDA graphs) and, where its CUDA provider is installed, ONNX Runtime: GPU time from CUDA
# events and end-to-end time with host<->device copies, side by side in one run.
# Needs python3 with torch, onnx, onnxruntime, click and rich (no install step: PYTHONPATH=.).
#
#   OUT=/tmp/gpu_bench bash benchmarks/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_bench_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
artifact=$(mktemp -d)/deeplabv3plus
python3 -m segdeploy export --model deeplabv3plus --input-size 512 512 -o "$artifact" --json >"$OUT/export.json"
backends=torch-cuda,torch-cuda-fp16,torch-cuda-graph
python3 -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())" \
  && backends+=,ort-cuda
python3 -m segdeploy bench "$artifact" --backends "$backends" --batch 1,8 --warmup auto --iterations 100 \
  -o "$OUT/bench_gpu.json"
