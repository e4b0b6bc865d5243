"""Dilated/depthwise convolution plugins (issue 18), side by side in one run.

    PYTHONPATH=. python benchmarks/plugins.py --part layers|models|atrous|coverage|all [--size 512] [--threads 2]

- ``layers``: every depthwise layer shape, our CPU kernel vs ONNX Runtime's Conv vs torch
  (``benchmarks/plugins_layers.py``);
- ``atrous``: the atrous split, MACs and ORT time per ASPP branch and model (``benchmarks/plugins_atrous.py``);
- ``coverage`` (here): which of the zoo's depthwise and dilated Convs the matcher or the atrous split
  covers (graphs exported at 64x64), and why not the others;
- ``gpu``: the CUDA kernels vs cuDNN through torch, when a GPU is there (``benchmarks/plugins_gpu.py``);
- ``models`` (here): the whole model on ONNX Runtime CPU, native graph vs the measured rewrite
  (``segdeploy plugins --plugins auto``), FP32 and the ``cpu`` INT8 target, alternating in one
  run; medians and the ratio. The INT8 line also says whether the nodes join the INT8 graph.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = ("deeplabv3plus_mobilenetv2", "deeplabv3_mobilenetv3_large", "deeplabv3plus_xception65")


def _cli(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "segdeploy", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"segdeploy {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")


def _artifact(work: Path, model: str, size: int) -> Path:
    out = work / f"{model}_{size}"
    if not (out / "manifest.json").is_file():
        _cli("export", "--model", model, "--input-size", size, size, "-o", out)
    return out


def _int8(work: Path, fp32: Path, size: int) -> Path:
    out = fp32.with_name(fp32.name + "_int8")
    if not (out / "manifest.json").is_file():
        from segdeploy.fixtures.scenes import generate_scenes, write_scene_folder

        calib = work / f"calib_{size}"
        if not calib.is_dir():
            write_scene_folder(calib, generate_scenes(16, size, size), masks=False)
        _cli("quantize", fp32, "--calib", calib / "images", "--target", "cpu", "--max-images", 16, "-o", out)
    return out


def _time_pair(native: Path, rewritten: Path, feed: dict, threads: int, seconds: float) -> tuple[float, float, int]:
    from segdeploy.backend.onnxrt.runner import SessionFromOnnx
    from segdeploy.conv.measure import alternate

    a = SessionFromOnnx(native, threads=threads or None)()
    b = SessionFromOnnx(rewritten, threads=threads or None)()
    return alternate(lambda: a.run(None, feed), lambda: b.run(None, feed), seconds)


def models_part(argv: list[str]) -> None:
    from segdeploy.conv.artifact import apply_plugins
    from segdeploy.conv.rewrite import find_candidates, named_nodes
    from segdeploy.manifest import read_manifest
    from segdeploy.onnx_io import load_onnx
    from segdeploy.parity import sample_feed

    parser = argparse.ArgumentParser(prog="plugins.py --part models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per model and precision")
    parser.add_argument("--work", type=Path, help="cache folder of the exports (default: a temporary one)")
    args, _ = parser.parse_known_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for model in args.models.split(","):
            fp32 = _artifact(work, model, args.size)
            for precision, source in (("fp32", fp32), ("int8 cpu", _int8(work, fp32, args.size))):
                manifest = read_manifest(source / "manifest.json")
                feed = sample_feed((1, 3, args.size, args.size), manifest)
                matches = find_candidates(named_nodes(load_onnx(source / manifest["onnx"]["file"])))
                out = source.with_name(source.name + "_plugins")
                result = apply_plugins(source, out, plugins="auto", atrous="none", input_size=(args.size, args.size),
                                       threads=args.threads)
                replaced = len(result.manifest["plugins"]["replaced"])
                native_ms, plugin_ms, rounds = _time_pair(source / manifest["onnx"]["file"], out / "model.onnx", feed,
                                                          args.threads, args.seconds)
                note = ""
                if not matches.candidates and matches.unmatched:
                    note = f"no candidate: {matches.unmatched[0].reason}"
                rows.append((model, precision, len({c.layer for c in matches.candidates}), replaced, native_ms, plugin_ms,
                             rounds, note))
                print(rows[-1], flush=True)
    print("\n| model | precision | depthwise layers | replaced | native ms | rewritten ms | native / rewritten | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for model, precision, layers, replaced, native_ms, plugin_ms, _rounds, note in rows:
        print(f"| {model} | {precision} | {layers} | {replaced} | {native_ms:.1f} | {plugin_ms:.1f} | "
              f"{native_ms / plugin_ms:.2f}x | {note} |")
    print("\n" + _provenance(f"python benchmarks/plugins.py --part models --size {args.size} --threads {args.threads}"))


#: Zoo models with depthwise or dilated convolutions (a scan of their Conv2d modules), one per family
#: variant (the resnet101 twins have the same conv kinds as the resnet50 ones).
COVERAGE_MODELS = ("deeplabv3plus_mobilenetv2", "deeplabv3_mobilenetv2", "deeplabv3_mobilenetv3_large",
                   "deeplabv3plus_xception65", "fastfcn_fcn_resnet50", "fastfcn_aspp_resnet50", "deeplabv3_resnet50",
                   "deeplabv2_resnet101", "deeplabv1_vgg16_largefov")


def coverage_part(argv: list[str]) -> None:
    """Which depthwise and dilated Convs of the zoo's graphs the depthwise matcher or the atrous split
    covers, and why the others are not."""
    from segdeploy.conv import atrous
    from segdeploy.conv.rewrite import find_candidates, named_nodes
    from segdeploy.onnx_io import load_onnx

    parser = argparse.ArgumentParser(prog="plugins.py --part coverage")
    parser.add_argument("--models", default=",".join(COVERAGE_MODELS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", type=Path, help="cache folder of the exports (default: a temporary one)")
    args, _ = parser.parse_known_args(argv)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="plugins-coverage-"))
    print("| model | grouped or dilated Convs | depthwise matched | atrous candidates | neither (reason) |")
    print("|---|---:|---:|---:|---|")
    for model_name in args.models.split(","):
        model = named_nodes(load_onnx(_artifact(args.work, model_name, args.size) / "model.onnx"))
        matches = find_candidates(model)
        hw = (args.size, args.size)
        split = {c.node for c in atrous.atrous_candidates(model, hw)}
        not_split = atrous.atrous_unmatched(model, hw)
        layers = set(matches.layers())
        neither = [f"{u.node}: {not_split.get(u.node, u.reason)}" for u in matches.unmatched if u.node not in split]
        total = len(layers) + len(matches.unmatched)
        print(f"| {model_name} | {total} | {len(layers)} | {len(split)} ({len(split & layers)} of them depthwise) | "
              f"{'; '.join(neither) or '-'} |", flush=True)
    print("\n" + _provenance(f"python benchmarks/plugins.py --part coverage --size {args.size}"))


def _provenance(command: str) -> str:
    from readme_blocks import provenance

    return provenance(command)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("layers", "models", "atrous", "coverage", "gpu", "all"), default="all")
    args, rest = parser.parse_known_args(argv)
    parts = ("layers", "models", "atrous") if args.part == "all" else (args.part,)
    for part in parts:
        print(f"\n## {part}\n", flush=True)
        if part in ("models", "coverage"):
            (models_part if part == "models" else coverage_part)(rest)
            continue
        module_name = {"layers": "plugins_layers", "atrous": "plugins_atrous", "gpu": "plugins_gpu"}[part]
        if not (ROOT / "benchmarks" / f"{module_name}.py").is_file():
            print(f"(benchmarks/{module_name}.py is not there: part {part} skipped)")
            continue
        importlib.import_module(module_name).main(rest)


if __name__ == "__main__":
    main()
