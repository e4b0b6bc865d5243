"""Does every zoo variant take each deployment head, and does the fused upsample + argmax apply?

Exports each registered variant (default arguments, seeded random weights, 21 classes) at 128x128
through ``segdeploy.export.export_model`` (the parity gate against PyTorch), then appends each head
to the gated scores artifact with ``segdeploy.head.artifact.apply_head`` - the same ``build_head``
that ``export --head`` runs after the gate - ``probabilities``, ``labels`` and ``labels --fused``,
each checked by ONNX Runtime against the scores graph at two shapes. Prints one row per variant:
the heads that passed, whether the fused rewrite applied (or why not), the fused graph's lowest
label agreement with the host's argmax of the scores, and its disagreeing pixels (near-ties of two
classes among them), then a summary.

    python benchmarks/head_zoo.py                         # 27 variants (15-25 min on 2 cores)
    python benchmarks/head_zoo.py --models fcn8s_vgg16,unet --size 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

HEADS = ("probabilities", "labels", "labels --fused")
HEADER = f"| {'variant':<28} | {'heads passed':<30} | {'fused':<90} | {'agreement':>9} | {'differ (ties)':>13} | {'s':>5} |"


def variant_row(spec, side: int, workdir: Path) -> tuple[str, dict]:
    from segdeploy.errors import SegdeployError
    from segdeploy.export import export_model
    from segdeploy.head.artifact import apply_head

    size = spec.valid_input_size(side, side) if spec.valid_input_size else (side, side)
    started = time.perf_counter()
    scores = workdir / "scores"
    outcome = {"passed": [], "fused": None, "agreement": None, "differ": None}
    try:
        export_model(spec.name, scores, input_size=size)
    except SegdeployError as exc:
        outcome["fused"] = f"export failed: {str(exc).splitlines()[0][:50]}"
        return _row(spec.name, outcome, time.perf_counter() - started), outcome
    for head in HEADS:
        name, fused = head.split()[0], head.endswith("--fused")
        try:
            result = apply_head(scores, name, fused=fused, output_dir=workdir / head.replace(" --", "_"))
        except SegdeployError as exc:
            if fused:
                outcome["fused"] = "no: " + str(exc).removeprefix("--fused: ").split("; ")[0][:86]
            else:
                outcome["passed"].append(f"{name} FAILED")
            continue
        outcome["passed"].append(name if not fused else "fused")
        if fused:
            worst = min(result.parity, key=lambda p: p.label_agreement)
            outcome["fused"] = f"yes ({result.manifest['head']['coordinate_transformation_mode']})"
            outcome["agreement"] = worst.label_agreement
            outcome["differ"] = (sum(p.disagreeing_pixels for p in result.parity), sum(p.near_ties for p in result.parity))
    return _row(spec.name, outcome, time.perf_counter() - started), outcome


def _row(name: str, outcome: dict, seconds: float) -> str:
    agreement = "" if outcome["agreement"] is None else f"{outcome['agreement']:.4%}"
    differ = "" if outcome["differ"] is None else f"{outcome['differ'][0]} ({outcome['differ'][1]})"
    passed = ", ".join(h for h in outcome["passed"] if h != "fused")
    return f"| {name:<28} | {passed:<30} | {outcome['fused'] or '':<90} | {agreement:>9} | {differ:>13} | {seconds:5.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", help="comma-separated variant names (default: every registered variant)")
    args = parser.parse_args()

    from segdeploy.models.registry import get_spec, list_models

    specs = [get_spec(n) for n in args.models.split(",")] if args.models else list_models()
    print(f"deployment heads on the model zoo at {args.size}x{args.size} (21 classes, random weights); "
          f"heads: {', '.join(HEADS)}", flush=True)
    print(HEADER)
    print("|" + "|".join("-" * (len(c) + 2) for c in HEADER.strip("|").split("|")[:-1]) + "|" + "-" * 7 + "|", flush=True)
    fused = heads_ok = 0
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix="head-zoo-") as work:
            row, outcome = variant_row(spec, args.size, Path(work))
        print(row, flush=True)
        heads_ok += all("FAILED" not in h for h in outcome["passed"]) and len(outcome["passed"]) >= 2
        fused += "fused" in outcome["passed"]
    print(f"\n{heads_ok}/{len(specs)} variants passed every unfused head; the fused rewrite applied to {fused}/{len(specs)}")


if __name__ == "__main__":
    main()
