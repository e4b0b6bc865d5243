"""Does every zoo variant pass the export parity gate with its defaults?

Exports each registered variant with its default arguments and seeded random weights (no
checkpoint), at each size, through ``segdeploy.export.export_model`` with the default
``Thresholds``, and prints one row per (variant, size): the tightest output and shape's max |Δ|
(torch vs ONNX Runtime), the reference's max |value|, their ratio, the lowest label agreement,
pass/fail and seconds; then how many passed. Variants with their own size rule (the unpadded
U-Net) run at the nearest valid size, noted in the row.

    python benchmarks/zoo_gate.py                                  # 27 variants × 128² and 512² (hours on 2 cores)
    python benchmarks/zoo_gate.py --sizes 128 --models unet,fcn8s_vgg16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

HEADER = (f"{'variant':<28} {'size':<18} {'max|Δ|':>9} {'ref max':>9} {'relative':>9} {'limit':>9} {'agreement':>10} "
          f"{'result':<6} {'seconds':>7}  note")


def input_size(spec, side: int) -> tuple[tuple[int, int], str]:
    """(side, side), or the nearest size the variant takes, with a note saying so."""
    if spec.valid_input_size is None:
        return (side, side), ""
    size = spec.valid_input_size(side, side)
    return size, "" if size == (side, side) else f"nearest valid size to {side}x{side}"


def tightest(parity: dict) -> dict:
    """The (shape, output) result closest to its limit, with its shape and output name."""
    candidates = [
        {**result, "shape": entry["shape"], "output": name}
        for entry in parity["shapes"]
        for name, result in entry["outputs"].items()
    ]
    return max(candidates, key=lambda r: (not r["passed"], r["max_abs_diff"] / r["limit"] if r["limit"] else float("inf")))


def gate_row(spec, side: int, workdir: Path) -> tuple[str, bool]:
    from segdeploy.errors import SegdeployError, VerificationError
    from segdeploy.export import export_model
    from segdeploy.manifest import read_manifest

    size, note = input_size(spec, side)
    label = f"{spec.name:<28} {size[0]}x{size[1]:<14}"
    started = time.perf_counter()
    failure = None
    try:
        export_model(spec.name, workdir, input_size=size)
    except VerificationError as exc:  # the manifest records the figures (or the lint errors) that failed
        failure = str(exc)
    except SegdeployError as exc:
        return f"{label} ERROR {exc}", False
    seconds = time.perf_counter() - started
    parity = read_manifest(workdir / "manifest.json")["parity"]
    worst = tightest(parity)
    agreement = min(entry["argmax_agreement"] for entry in parity["shapes"])
    notes = [note]
    if worst["output"] != parity["shapes"][0]["output"]:
        notes.append(f"tightest: output {worst['output']}")
    if failure and parity["passed"]:
        notes.append(failure)  # not the gate: the target's parser would reject the graph
    passed = failure is None
    note = "; ".join(filter(None, notes))
    row = (f"{label} {worst['max_abs_diff']:>9.2e} {worst['reference_max_abs']:>9.3g} {worst['relative_diff']:>9.2e} "
           f"{worst['limit']:>9.2e} {agreement:>10.4%} {'pass' if passed else 'FAIL':<6} {seconds:>7.0f}  {note}")
    return row, passed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="Comma-separated variant names (default: all registered).")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 512], metavar="SIDE",
                        help="Square export sizes; every variant runs at the first, then at the next.")
    args = parser.parse_args(argv)

    from segdeploy.models import get_spec, list_models
    from segdeploy.parity import Thresholds

    specs = [get_spec(n) for n in args.models.split(",")] if args.models else list_models()
    print(f"parity gate, default thresholds: {Thresholds().describe()}", flush=True)
    print(HEADER, flush=True)
    passed = total = 0
    for side in args.sizes:
        for spec in specs:
            # One folder per export: the VGG variants' ONNX files are 0.5 GB each.
            with tempfile.TemporaryDirectory() as tmp:
                row, ok = gate_row(spec, side, Path(tmp) / spec.name)
            print(row, flush=True)
            passed, total = passed + ok, total + 1
    print(f"{passed} of {total} passed", flush=True)
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
