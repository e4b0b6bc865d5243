"""The model-zoo table of the README: params, GFLOPs, ONNX export time, ORT CPU vs PyTorch latency.

For each registered variant: parameters and GFLOPs at 512×512 (one multiply-add = one FLOP),
export to ONNX through ``segdeploy.export.export_model`` (parity gate included) with BN-calibrated
random weights, then the median latency at batch 1, 512×512, of ONNX Runtime (CPU provider) and
of PyTorch eager (``torch.inference_mode``) with the same number of threads.

The table replaces the ``zoo-table`` block of ``docs/models.md`` (``benchmarks/readme_blocks.py``).

    python benchmarks/zoo.py                                 # every variant (long: ~1 min each)
    python benchmarks/zoo.py --models deeplabv3plus,unet --iterations 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from readme_blocks import provenance, replace_block  # noqa: E402  (beside this script)


def median_latency_ms(run, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def benchmark_variant(spec, size, threads, warmup, iterations, workdir: Path) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from segdeploy.export import export_model
    from segdeploy.models.batchnorm import calibrated_state_dict
    from segdeploy.models.flops import model_complexity, reference_input_size
    from segdeploy.models.loading import build_model
    from segdeploy.parity import Thresholds

    size = reference_input_size(spec, size)
    complexity = model_complexity(spec, size)
    checkpoint = workdir / f"{spec.name}.pt"
    # Calibrated at a small size: the statistics only need realistic scales, not this resolution.
    calibration_size = reference_input_size(spec, (128, 128))
    torch.save(calibrated_state_dict(spec.name, calibration_size), checkpoint)
    # Deep random networks are ill-conditioned (float32 rounding alone moves a random Xception-65's
    # logits by ~1e-2 at 512², see tests/test_models.py): timing is the point here, the parity
    # tests are the check, and the table reports the measured max |Δ| for the record.
    gate = Thresholds(max_abs_diff=float("inf"), min_agreement=0.0)
    result = export_model(spec.name, workdir / spec.name, checkpoint=checkpoint, input_size=size, thresholds=gate)

    images = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(result.onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    ort_ms = median_latency_ms(lambda: session.run(None, {input_name: images}), warmup, iterations)

    torch.set_num_threads(threads)
    model = build_model(spec.name, {"num_classes": 21}, checkpoint=str(checkpoint))
    tensor = torch.from_numpy(images)

    def torch_run():
        with torch.inference_mode():
            model(tensor)

    torch_ms = median_latency_ms(torch_run, warmup, iterations)
    return {
        "name": spec.name,
        "params_m": complexity["params_m"],
        "gflops": complexity["gflops"],
        "size": size,
        "export_s": result.manifest["onnx"]["export_seconds"],
        "max_abs_diff": max(r.max_abs_diff for r in result.parity),
        "ort_ms": ort_ms,
        "torch_ms": torch_ms,
    }


def markdown_table(rows, threads, iterations) -> str:
    lines = [
        "| model | params (M) | GFLOPs@512² | ONNX export (s) | parity max abs diff | ORT CPU (ms) | PyTorch CPU (ms) | ORT / PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        size_note = "" if tuple(row["size"]) == (512, 512) else f" ({row['size'][0]}²)"
        lines.append(
            f"| {row['name']}{size_note} | {row['params_m']:.2f} | {row['gflops']:.1f} | {row['export_s']:.1f} "
            f"| {row['max_abs_diff']:.1e} | {row['ort_ms']:.0f} | {row['torch_ms']:.0f} "
            f"| {row['ort_ms'] / row['torch_ms']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Batch 1, 512×512, median of {iterations} runs, {threads} threads for both, random BN-calibrated "
        "weights; GFLOPs count one multiply-add as one FLOP. " + provenance("python benchmarks/zoo.py")
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="Comma-separated variant names (default: all registered).")
    parser.add_argument("--size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "docs" / "models.md")
    args = parser.parse_args(argv)

    from segdeploy.models import get_spec, list_models

    specs = [get_spec(n) for n in args.models.split(",")] if args.models else list_models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            print(f"{spec.name}…", file=sys.stderr, flush=True)
            rows.append(benchmark_variant(spec, tuple(args.size), args.threads, args.warmup, args.iterations, Path(tmp)))
            print(markdown_table(rows[-1:], args.threads, args.iterations).splitlines()[2], file=sys.stderr, flush=True)
    table = markdown_table(rows, args.threads, args.iterations)
    print(table)
    print(f"written to {replace_block('zoo-table', table, args.readme)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
