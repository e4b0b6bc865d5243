"""ONNX Runtime CPU latency of FP32 vs INT8, measured side by side in one run, at the accuracy budget.

    python benchmarks/precision.py                       # deeplabv3plus at 512x512
    python benchmarks/precision.py --model fixture       # the small trained fixture network (seconds)

A model with random weights has near-tied logits, so its INT8 agreement with FP32 says little:
unless ``--checkpoint`` is given, the zoo model's head is first trained briefly on procedural
scenes (backbone frozen, a few minutes on 2 cores). Then the FP32 export is quantized twice from
the same calibration images (generated scenes + scikit-image photos): for the ``cpu`` target
(asymmetric uint8 activations, the form ORT's CPU kernels are fast with) and, for comparison,
TensorRT-style (symmetric int8 activations). Each INT8 model passes the accuracy gate against
FP32 on held-out scenes with masks (sensitivity analysis keeps layers in float if needed), and the
three models are then timed round-robin on the same batch so machine load hits them alike.
Artifacts are kept in --workdir, and a re-run reuses them (same inputs, same results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv3plus", help="zoo model name, or 'fixture' (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="input height and width (default: %(default)s)")
    parser.add_argument("--checkpoint", help="trained weights for --model (skips the short head training)")
    parser.add_argument("--train-steps", type=int, default=120, help="head training steps without --checkpoint (default: %(default)s)")
    parser.add_argument("--calib-images", type=int, default=16, help="generated calibration scenes, plus 10 photos (default: %(default)s)")
    parser.add_argument("--val-images", type=int, default=8, help="held-out scenes with masks (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per model (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, 0 = all cores (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "bench-precision")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.model == "fixture":
        args.size = 64  # the fixture is exported at its training size

    from segdeploy.fixtures.photos import write_photo_folder
    from segdeploy.fixtures.scenes import generate_scenes, write_scene_folder
    from segdeploy.precision.pipeline import make_int8

    work = args.workdir / f"{args.model}-{args.size}"
    size = args.size
    fp32 = _fp32_artifact(args, work)
    calib, val = work / "calib", work / "val"
    if not calib.is_dir():
        write_photo_folder(calib / "photos")
        write_scene_folder(calib, generate_scenes(args.calib_images, size, size, seed=7), masks=False)
    if not val.is_dir():
        write_scene_folder(val, generate_scenes(args.val_images, size, size, seed=8))

    quantized = {}
    for label, target, method in (("int8 cpu", "cpu", "minmax"), ("int8 tensorrt-style", "trt11", "entropy")):
        _say(f"quantizing: {label} ({method})")
        started = time.perf_counter()
        result = make_int8(fp32, calib, work / label.replace(" ", "_"), method=method, target=target, val_dir=val,
                           progress=lambda message: _say(f"  {message}"))  # fmt: skip
        quantized[label] = (result, time.perf_counter() - started)

    _say("timing, round-robin")
    paths = {"fp32": fp32 / "model.onnx", **{label: r.output_dir / "model.onnx" for label, (r, _) in quantized.items()}}
    latency = _round_robin(paths, size, args.runs, args.threads)
    report = {
        "model": args.model,
        "size": [size, size],
        "machine": _machine(),
        "latency_ms": {k: round(v, 2) for k, v in latency.items()},
        "speedup_vs_fp32": {k: round(latency["fp32"] / v, 2) for k, v in latency.items() if k != "fp32"},
        "accuracy": {
            label: {
                "gate_passed": r.passed,
                "agreement": r.report["gate"]["final"]["agreement"],
                "miou_drop_pt": r.report["gate"]["final"]["miou_drop"],
                "fp32_miou": r.report["gate"]["fp32_miou"],
                "kept_in_float": r.report["gate"]["kept_in_higher_precision"],
                "quantize_seconds": round(seconds, 1),
                "reused": r.reused,
            }
            for label, (r, seconds) in quantized.items()
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0 if all(r.passed for r, _ in quantized.values()) else 1


def _fp32_artifact(args, work: Path) -> Path:
    fp32 = work / "fp32"
    if (fp32 / "manifest.json").is_file():
        return fp32
    if args.model == "fixture":
        from segdeploy.fixtures.artifact import export_fixture_artifact
        from segdeploy.fixtures.train import train_fixture_model

        _say("training the fixture network")
        return export_fixture_artifact(train_fixture_model(cache_dir=work), fp32, target="cpu")
    from segdeploy.export import export_model

    checkpoint = args.checkpoint or _train_head(args, work)
    _say(f"exporting {args.model} at {args.size}x{args.size}")
    export_model(args.model, fp32, num_classes=6, checkpoint=checkpoint, input_size=(args.size, args.size))
    return fp32


def _train_head(args, work: Path) -> Path:
    """A zoo model whose head learnt the procedural scenes (backbone frozen): decisive logits, quickly."""
    import torch

    from segdeploy.fixtures.scenes import NUM_CLASSES
    from segdeploy.fixtures.train import TrainingConfig, fit_on_scenes
    from segdeploy.models.loading import build_model
    from segdeploy.preprocess import input_spec

    checkpoint = work / "head_trained.pt"
    if checkpoint.is_file():
        return checkpoint
    config = TrainingConfig(size=128, train_scenes=256, steps=args.train_steps, batch=4, learning_rate=2e-3)
    _say(f"training the head of {args.model} on scenes ({config.steps} steps at {config.size}x{config.size})")
    torch.set_num_threads(2)
    model = build_model(args.model, {"num_classes": NUM_CLASSES})
    head = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    started = time.perf_counter()
    fit_on_scenes(model, config, input_spec(config.size, config.size), trainable=head)
    _say(f"  trained in {time.perf_counter() - started:.0f} s")
    work.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    return checkpoint


def _round_robin(paths: dict[str, Path], size: int, runs: int, threads: int) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for name, session in sessions.items():  # warm-up
        for _ in range(2):
            session.run(None, feeds[name])
    times = {k: [] for k in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append(1000 * (time.perf_counter() - started))
    return {k: statistics.median(v) for k, v in times.items()}


def _machine() -> dict:
    import os
    import platform

    import onnxruntime as ort

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "onnxruntime": ort.__version__,
    }


def _print_table(report: dict) -> None:
    machine = report["machine"]
    print(f"{report['model']} {report['size'][0]}x{report['size'][1]}, ONNX Runtime {machine['onnxruntime']} CPU, "
          f"{machine['cores']} cores, VNNI: {machine['vnni']}")  # fmt: skip
    print(f"  {'model':<22}{'median ms':>10}{'vs FP32':>9}  {'agreement':>9}  {'mIoU drop':>9}  kept in float")
    print(f"  {'fp32':<22}{report['latency_ms']['fp32']:>10.1f}{'1.00x':>9}")
    for label, acc in report["accuracy"].items():
        drop = f"{acc['miou_drop_pt']:.2f} pt" if acc["miou_drop_pt"] is not None else "-"
        print(f"  {label:<22}{report['latency_ms'][label]:>10.1f}{report['speedup_vs_fp32'][label]:>8.2f}x"
              f"  {acc['agreement']:>9.2%}  {drop:>9}  {len(acc['kept_in_float'])} layer(s)"
              f"{'' if acc['gate_passed'] else '  GATE FAILED'}")  # fmt: skip


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
