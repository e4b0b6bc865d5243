"""`segdeploy lint`'s verdict against what a real TensorRT does with the same ONNX file.

The real TensorRT is TensorRT for RTX (``tensorrt_rtx``), which parses ONNX and builds engines ahead
of time for a compute capability (SM86 here) without a GPU. Each graph is parsed and built in a fresh
subprocess (``--one PATH``), since a parser or builder may abort the process; a crash reads "abort".

Cases: the crafted graphs of tests/test_lint.py (built with its helpers and tests/onnx_graphs.py) and
a few zoo exports (``--zoo N``; each export takes 10-60 s on a small machine). Lint errors agree
with a failed parse/build or an abort; lint ok/warning agrees with an engine that builds.

    PYTHONPATH=. .venv/bin/python benchmarks/lint_vs_parser.py --zoo 2 --out /tmp/lint_vs_parser.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
ZOO_DEFAULT = ("deeplabv3plus_mobilenetv2", "unet", "fcn_resnet50", "fcdensenet56")
CASE_TIMEOUT_S = 600
EXPORT_TIMEOUT_S = 900


# --------------------------------------------------------------------------- one case, in a subprocess

def _profile_shape(dims) -> tuple[int, ...]:
    """Small concrete shape for a dynamic input: batch 1, every other dynamic dim 64 (images 1x3x64x64)."""
    return tuple(d if d >= 0 else (1 if i == 0 else 64) for i, d in enumerate(dims))


def run_one(path: str) -> dict:
    import tensorrt_rtx as trt

    from segdeploy.backend.trt import loader
    from segdeploy.backend.trt.plan import plugin_library_path

    loader.use_edition("rtx")
    loader.import_tensorrt()  # links the parser's libtensorrt_rtx.so name, which plugin nodes need
    logger = trt.Logger(trt.Logger.ERROR)
    if plugin_library_path().is_file():  # segdeploy's plugins, where the library was built (TensorRT headers)
        loader.load_plugins([plugin_library_path()])
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(path):
        errs = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        return {"verdict": "parse-fails", "detail": "; ".join(errs)}
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = _profile_shape(tuple(tensor.shape))
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return {"verdict": "build-fails", "detail": ""}
    return {"verdict": "builds", "detail": f"{plan.nbytes} bytes"}


def real_verdict(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True,
                              timeout=CASE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"verdict": "abort", "detail": f"timed out after {CASE_TIMEOUT_S} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    return {"verdict": "abort", "detail": f"exit {proc.returncode}: {tail}"}


# --------------------------------------------------------------------------- the cases

def crafted_cases() -> list[tuple[str, object]]:
    """(name, onnx.ModelProto) for each graph tests/test_lint.py lints (its DLA graphs aside)."""
    sys.path[:0] = [str(REPO_ROOT), str(TESTS_DIR)]
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnx_graphs import qdq_graph, seg_graph, with_node
    from test_lint import resize_model, resize_node

    from segdeploy.crf import CRF_DOMAIN, CRF_OP_TYPE

    I32, I64 = TensorProto.INT32, TensorProto.INT64
    cases = [("plain seg_graph", seg_graph()), ("opset 19", seg_graph(opset=19)), ("opset 21", seg_graph(opset=21))]

    pool = helper.make_node("MaxPool", ["logits"], ["pooled", "indices"], name="pool_with_indices", kernel_shape=[2, 2], strides=[2, 2])
    unpool = helper.make_node("MaxUnpool", ["pooled", "indices"], ["unpooled"], name="segnet_unpool", kernel_shape=[2, 2],
                              strides=[2, 2])
    model = with_node(seg_graph(), pool)
    model.graph.node.append(unpool)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("unpooled", TensorProto.FLOAT, None))
    cases.append(("MaxPool indices + MaxUnpool", model))
    cases.append(("unnamed QLinearMatMul", with_node(seg_graph(), helper.make_node("QLinearMatMul", ["logits"] * 8, ["y"]))))
    cases.append(("com.microsoft FusedConv", with_node(
        seg_graph(), helper.make_node("FusedConv", ["logits", "w"], ["y"], name="ort_fused", domain="com.microsoft"),
        domain_opset=("com.microsoft", 1))))
    crf = with_node(seg_graph(), helper.make_node(CRF_OP_TYPE, ["logits", "image"], ["probabilities", "labels"],
                                                  name="dense_crf", domain=CRF_DOMAIN), domain_opset=(CRF_DOMAIN, 1))
    cases.append(("segdeploy DenseCRF node", crf))

    good = {
        "bilinear": dict(mode="linear", coordinate_transformation_mode="half_pixel"),
        "pytorch_nearest": dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        "aligned": dict(mode="linear", coordinate_transformation_mode="align_corners"),
    }
    cases += [(f"Resize {name}", resize_model(resize_node(name, **attrs))) for name, attrs in good.items()]
    bad = {
        "crop": dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"),
        "symmetric": dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
        "antialias": dict(mode="linear", antialias=1),
        "nearest": dict(mode="nearest", nearest_mode="round_half_even"),
        "policy": dict(mode="linear", keep_aspect_ratio_policy="not_larger"),
        "tf_nn_ceil": dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="round_prefer_ceil"),
    }
    cases += [(f"Resize {name} (opset 19)", resize_model(resize_node(name, **attrs), opset=19)) for name, attrs in bad.items()]
    cases.append(("Resize cubic", resize_model(resize_node("cubic", mode="cubic"))))
    cases.append(("Resize tf_nn_linear (opset 19)", resize_model(resize_node(
        "tf_nn_linear", mode="linear", coordinate_transformation_mode="tf_half_pixel_for_nn"), opset=19)))

    argmax = helper.make_node("ArgMax", ["logits"], ["labels"], name="head_argmax", axis=1, keepdims=0)
    int64 = with_node(seg_graph(), argmax, output_type=I64)
    cases.append(("ArgMax INT64 output", int64))
    cases.append(("ArgMax + Cast(INT32)", with_node(int64, helper.make_node("Cast", ["labels"], ["labels_i32"], name="to_int32", to=I32),
                                                    output_type=I32)))
    cases.append(("ArgMax select_last_index", with_node(
        seg_graph(), helper.make_node("ArgMax", ["logits"], ["l"], name="last_index", axis=1, select_last_index=1), output_type=I64)))
    cases.append(("CLI 'bad': opset 19 + ArgMax INT64", with_node(seg_graph(opset=19), argmax, output_type=I64)))

    cases += [("Q/DQ symmetric", qdq_graph()), ("Q/DQ zero point 3", qdq_graph(zero_point=3)),
              ("Q/DQ INT32 bias", qdq_graph(bias_int32=True)), ("Q/DQ per-tensor weights", qdq_graph(per_channel=False))]

    fp16 = seg_graph(dims=(1, 3, 64, 64))
    for i, name in ((0, "w"), (1, "b")):
        half = numpy_helper.to_array(fp16.graph.initializer[i]).astype(np.float16)
        fp16.graph.initializer[i].CopyFrom(numpy_helper.from_array(half, name))
    cases.append(("FP16 weights, fixed shape (DLA test's graph, dla=False)", fp16))
    return cases


def zoo_case(name: str, root: Path, target: str) -> tuple[Path | None, str]:
    """Export ``name`` at 64x64 (or the nearest valid size) with the CLI; the model.onnx path, or None and why."""
    sys.path.insert(0, str(REPO_ROOT))
    from segdeploy.models import get_spec

    spec = get_spec(name)
    size = spec.valid_input_size(64, 64) if spec.valid_input_size else (64, 64)
    out = root / name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "segdeploy", "export", "--model", name, "--input-size", str(size[0]), str(size[1]),
           "--num-classes", "2", "--target", target, "--max-abs-diff", "1e9", "--min-agreement", "0", "-o", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return None, f"export timed out after {EXPORT_TIMEOUT_S} s"
    if (out / "model.onnx").is_file():
        return out / "model.onnx", f"{size[0]}x{size[1]}"
    return None, f"export failed (exit {proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]}"


# --------------------------------------------------------------------------- lint, the table

def lint_verdict(model_or_path, target: str) -> tuple[str, list[str]]:
    from segdeploy.lint import lint_onnx

    found = lint_onnx(model_or_path, target)
    rules = sorted({f"{f.rule}:{f.severity}" for f in found})
    if any(f.severity == "error" for f in found):
        return "error", rules
    return ("warning" if any(f.severity == "warning" for f in found) else "ok"), rules


def agrees(lint: str, real: str) -> bool:
    return (lint == "error") == (real != "builds")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", metavar="PATH", help="parse and build PATH with TensorRT for RTX; print one JSON line")
    parser.add_argument("--zoo", type=int, default=len(ZOO_DEFAULT), help="how many zoo models to export (default 4)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--readme", action="store_true", help="write the short table into docs/tensorrt_rtx.md (lint-parser block)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)), flush=True)
        return

    start = time.monotonic()
    sys.path.insert(0, str(REPO_ROOT))
    from segdeploy.targets import TARGETS

    primary = "rtx" if "rtx" in TARGETS else "trt11"
    targets = [primary] + (["trt11"] if primary != "trt11" else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="lint_vs_parser-") as tmp:
        root = Path(tmp)
        import onnx

        items: list[tuple[str, Path | None, str]] = []
        for i, (name, model) in enumerate(crafted_cases()):
            path = root / f"case{i:02d}.onnx"
            onnx.save(model, path)
            items.append((name, path, ""))
        for name in ZOO_DEFAULT[: max(args.zoo, 0)]:
            print(f"[export] {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            path, note = zoo_case(name, root / "zoo", primary)
            print(f"[export] {name}: {note} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
            items.append((f"zoo {name}", path, note))

        for k, (name, path, note) in enumerate(items, 1):
            t0 = time.monotonic()
            if path is None:
                rows.append((name, "-", "-", "not run", "-", note))
                print(f"[{k}/{len(items)}] {name}: skipped ({note})", file=sys.stderr, flush=True)
                continue
            lints = {t: lint_verdict(path, t) for t in targets}
            real = real_verdict(path)
            verdicts = {t: lints[t][0] for t in targets}
            agree = {t: agrees(verdicts[t], real["verdict"]) for t in targets}
            if len(set(verdicts.values())) == 1:
                lint_cell, agree_cell = verdicts[primary], "yes" if agree[primary] else "**no**"
            else:
                lint_cell = ", ".join(f"{t}: {v}" for t, v in verdicts.items())
                agree_cell = ", ".join(f"{t}: {'yes' if a else '**no**'}" for t, a in agree.items())
            detail = "; ".join(x for x in (note, real["detail"][:160]) if x)
            rows.append((name, ", ".join(lints[primary][1]) or "-", lint_cell, real["verdict"], agree_cell, detail, agree[primary]))
            print(f"[{k}/{len(items)}] {name}: lint {lint_cell}, real {real['verdict']}, agree {agree_cell} "
                  f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)

    lines = [f"Lint target `{primary}`" + (" (trt11 shown where it differs)" if primary != "trt11" else " (no `rtx` target yet)")
             + "; real: TensorRT for RTX, parse + ahead-of-time build for SM86 without a GPU.", "",
             "| case | lint rule(s) | lint verdict | real verdict | agree? | detail |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell(str(c)) for c in row[:6]) + " |" for row in rows]
    lines.append("| DLA rules (dla-op, dla-precision, dla-dynamic-shape, dla-pooling, dla) | - | - | not checked | - "
                 "| DLA rules cannot be checked without a Jetson (TensorRT for RTX has no DLA) |")
    run = [row for row in rows if len(row) > 6]
    lines += ["", f"{len(run)} cases, {sum(row[6] for row in run)} agree (lint target {primary}); "
                  f"{time.monotonic() - start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_blocks import provenance, replace_block

        short = ["| case | lint rule(s) | lint | TensorRT for RTX | agree? |", "| --- | --- | --- | --- | --- |"]
        short += ["| " + " | ".join(cell(str(c)) for c in row[:5]) + " |" for row in run]
        summary = f"**{sum(row[6] for row in run)} of {len(run)} agree** (lint target `{primary}`; DLA rules need a Jetson)."
        body = "\n".join([*short, "", summary, "", provenance(f"python benchmarks/lint_vs_parser.py --zoo {args.zoo} --readme")])
        # The table lives in docs/ (the README links it): it is for those who change the lint rules.
        replace_block("lint-parser", body, readme=Path(__file__).resolve().parent.parent / "docs" / "tensorrt_rtx.md")


if __name__ == "__main__":
    main()
