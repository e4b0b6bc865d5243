"""Deployment-head benchmark (issue 17), CPU part: the fused upsample + argmax kernel
(segdeploy.head.kernel) against the two steps it replaces, in one run.

- fused: ``upsample_argmax`` (segdeploy's CPU kernel), 1 and 2 threads;
- ONNX Runtime: a real 2-node graph, Resize(linear, half_pixel, sizes) -> ArgMax(axis=1), in a
  session with intra_op_num_threads = 1 and 2 (default graph optimisations);
- numpy: a straightforward separable bilinear interpolation (rows, then columns) + argmax (one
  thread: numpy does not thread these).

Sizes: 512x512 with 21 classes (x4 from 128x128, DeepLabV3+ on VOC) and 1024x2048 with 19
classes (x8 from 128x256, Cityscapes), batch 1, float32 logit-like scores. For each size and
thread count the implementations run alternately (fused, ORT, numpy, fused, ...) after a warm-up,
so that all see the same machine load; the table gives medians and their ratios, and a line per
size gives the label agreement with ONNX Runtime (disagreements, and how many of them are ties:
ORT's own resized scores of the two classes within 1e-5 relative).

End to end (``--end-to-end ARTIFACT``): the whole model on ONNX Runtime's CPU provider ending in
logits + the host's argmax, in ``--head labels`` and in ``--head labels --fused``, alternating.

    PYTHONPATH=. python benchmarks/head.py [--repeats 9] [--end-to-end artifacts/deeplabv3plus] [--json out.json] [--readme]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readme_blocks import provenance, replace_block  # noqa: E402  (beside this script)

from segdeploy.head.kernel import upsample_argmax  # noqa: E402

#: (name, scores shape (N, C, h, w), output size (H, W))
CASES = [
    ("512×512×21 (×4 from 128×128)", (1, 21, 128, 128), (512, 512)),
    ("1024×2048×19 (×8 from 128×256)", (1, 19, 128, 256), (1024, 2048)),
]
THREADS = (1, 2)
TIE_TOLERANCE = 1e-5
COORDINATES = "half_pixel"  # torch's align_corners=False, what DeepLab's exports use


def logit_scores(shape: tuple, seed: int = 0) -> np.ndarray:
    """Logit-like scores: smooth class fields (a coarse random grid, upsampled) plus noise, so that
    regions and boundaries look like a network's output rather than white noise."""
    rng = np.random.default_rng(seed)
    batch, classes, height, width = shape
    coarse = rng.normal(0.0, 3.0, (batch, classes, height // 8 + 2, width // 8 + 2))
    fields = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :height, :width]
    return (fields + rng.normal(0.0, 0.5, shape)).astype(np.float32)


def ort_resize_argmax(shape: tuple, size: tuple, threads: int, with_resized: bool = False):
    """An ONNX Runtime session of Resize(linear, sizes) -> ArgMax(axis=1, keepdims=0); with
    ``with_resized`` it also outputs the full-resolution scores (to tell ties)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    sizes = numpy_helper.from_array(np.array([shape[0], shape[1], *size], np.int64), "sizes")
    nodes = [helper.make_node("Resize", ["scores", "", "", "sizes"], ["resized"], mode="linear",
                              coordinate_transformation_mode=COORDINATES),
             helper.make_node("ArgMax", ["resized"], ["labels"], axis=1, keepdims=0)]
    outputs = [helper.make_tensor_value_info("labels", TensorProto.INT64, [shape[0], *size])]
    if with_resized:
        outputs.append(helper.make_tensor_value_info("resized", TensorProto.FLOAT, [shape[0], shape[1], *size]))
    graph = helper.make_graph(nodes, "resize_argmax", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, shape)],
                              outputs, initializer=[sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def half_pixel_taps(in_length: int, out_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both source indices and the weight of the second, per output index (half_pixel, clamped)."""
    coordinate = (np.arange(out_length) + 0.5) * (in_length / out_length) - 0.5
    coordinate = np.clip(coordinate, 0, in_length - 1)
    first = np.floor(coordinate).astype(np.int64)
    second = np.minimum(first + 1, in_length - 1)
    return first, second, (coordinate - first).astype(np.float32)


def numpy_upsample_argmax(scores: np.ndarray, size: tuple) -> np.ndarray:
    """Bilinear upsampling (rows, then columns) then argmax over classes, in plain numpy."""
    y0, y1, wy = half_pixel_taps(scores.shape[2], size[0])
    x0, x1, wx = half_pixel_taps(scores.shape[3], size[1])
    rows = scores[:, :, y0, :] * (1 - wy)[:, None] + scores[:, :, y1, :] * wy[:, None]
    full = rows[:, :, :, x0] * (1 - wx) + rows[:, :, :, x1] * wx
    return full.argmax(axis=1)


def time_alternating(implementations: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each implementation, run in turn (A, B, C, A, B, C, ...) after one warm-up each."""
    for run in implementations.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(repeats):
        for name, run in implementations.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def agreement_with_ort(scores: np.ndarray, size: tuple) -> dict:
    """Label agreement of the fused kernel with ONNX Runtime's Resize + ArgMax, and ties among the
    disagreements (ORT's resized scores of the two classes within TIE_TOLERANCE relative)."""
    ort_labels, resized = ort_resize_argmax(scores.shape, size, 2, with_resized=True).run(None, {"scores": scores})
    labels = upsample_argmax(scores, size, coordinates=COORDINATES).astype(np.int64)
    n, y, x = np.nonzero(labels != ort_labels)
    top = resized[n, ort_labels[n, y, x], y, x].astype(np.float64)
    chosen = resized[n, labels[n, y, x], y, x].astype(np.float64)
    ties = int((top - chosen < TIE_TOLERANCE * np.maximum(1.0, np.abs(top))).sum())
    return {"pixels": int(labels.size), "disagreements": int(n.size), "ties": ties}


def cpu_rows(repeats: int) -> list[dict]:
    """One row per (size, threads): medians (ms) of the fused kernel, ORT and numpy, alternating."""
    rows = []
    for name, shape, size in CASES:
        scores = logit_scores(shape)
        agreement = agreement_with_ort(scores, size)
        for threads in THREADS:
            session = ort_resize_argmax(shape, size, threads)
            implementations = {
                "fused": partial(upsample_argmax, scores, size, coordinates=COORDINATES, threads=threads),
                "ort": partial(session.run, None, {"scores": scores}),
            }
            if threads == 1:  # numpy runs one thread whatever the setting
                implementations["numpy"] = partial(numpy_upsample_argmax, scores, size)
            load_before = os.getloadavg()[0]
            times = time_alternating(implementations, repeats)
            medians = {key: statistics.median(values) * 1e3 for key, values in times.items()}
            rows.append({"case": name, "shape": list(shape), "size": list(size), "threads": threads,
                         "median_ms": medians, "times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
                         "ort_over_fused": medians["ort"] / medians["fused"],
                         "numpy_over_fused": medians["numpy"] / medians["fused"] if "numpy" in medians else None,
                         "agreement": agreement, "load_before": load_before, "load_after": os.getloadavg()[0]})
            print(f"{name}, {threads} thread(s): fused {medians['fused']:.1f} ms, ORT {medians['ort']:.1f} ms "
                  f"(×{rows[-1]['ort_over_fused']:.2f})"
                  + (f", numpy {medians['numpy']:.1f} ms" if "numpy" in medians else ""), file=sys.stderr)
    return rows


def cpu_table(rows: list[dict], repeats: int) -> str:
    """The CPU rows as a markdown table, the agreement lines and the provenance."""
    lines = [f"Fused upsample + argmax on the CPU against ONNX Runtime's Resize + ArgMax (a 2-node graph) and numpy, "
             f"batch 1, float32 scores, {COORDINATES}; medians of {repeats} runs, alternating:", "",
             "| output | threads | fused | ORT Resize + ArgMax | numpy | ORT / fused | numpy / fused |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        median = row["median_ms"]
        numpy_ms = f"{median['numpy']:.1f} ms" if "numpy" in median else "—"
        numpy_ratio = f"{row['numpy_over_fused']:.1f}×" if row["numpy_over_fused"] else "—"
        lines.append(f"| {row['case']} | {row['threads']} | {median['fused']:.1f} ms | {median['ort']:.1f} ms | "
                     f"{numpy_ms} | **{row['ort_over_fused']:.1f}×** | {numpy_ratio} |")
    lines.append("")
    seen = set()
    for row in rows:
        if row["case"] in seen:
            continue
        seen.add(row["case"])
        a = row["agreement"]
        lines.append(f"- {row['case']}: labels differ from ONNX Runtime's at {a['disagreements']} of {a['pixels']} "
                     f"pixels, {a['ties']} of them ties (top two within {TIE_TOLERANCE:g} relative).")
    loads = [row["load_before"] for row in rows] + [row["load_after"] for row in rows]
    lines += ["", f"Load average during the run: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} logical CPUs.",
              "", provenance("python benchmarks/head.py --readme")]
    return "\n".join(lines)


def end_to_end_rows(artifact: Path, repeats: int, work: Path, threads: int = 2) -> list[dict]:
    """ONNX Runtime on the CPU, whole model, one 512x512 image: logits + the host's argmax, against
    the same artifact with ``--head labels`` (Resize then ArgMax in the graph) and with
    ``--head labels --fused`` (the fused node), alternating. The head artifacts are made from
    ``artifact`` by ``segdeploy.head.artifact.apply_head`` (which checks them first)."""
    from segdeploy.backend.onnxrt.runner import OnnxrtRunner
    from segdeploy.head.artifact import apply_head
    from segdeploy.manifest import resolve_artifact
    from segdeploy.outputs import Head
    from segdeploy.parity import sample_feed

    variants = {"logits + host argmax": artifact}
    for name, fused in (("labels", False), ("labels_fused", True)):
        print(f"making the {name} artifact of {artifact}", file=sys.stderr)
        variants[f"--head labels{' --fused' if fused else ''}"] = apply_head(artifact, "labels", fused=fused,
                                                                               output_dir=work / name).output_dir
    runners, outputs_bytes, sessions = {}, {}, contextlib.ExitStack()
    _, manifest = resolve_artifact(artifact)
    size = manifest["input"].get("size") or [512, 512]
    feed = sample_feed((1, 3, *size), manifest)
    for label, folder in variants.items():
        onnx_path, variant_manifest = resolve_artifact(folder)
        runner = sessions.enter_context(OnnxrtRunner.from_artifact(onnx_path, variant_manifest, threads=threads))
        head = Head.from_manifest(variant_manifest)
        prediction = variant_manifest["output"]["name"]
        runners[label] = partial(lambda r, h, p: h.labels(r.infer(feed)[p]), runner, head, prediction)
        outputs_bytes[label] = int(runner.infer(feed)[prediction].nbytes)
    with sessions:
        reference = runners["logits + host argmax"]()
        agreement = {label: float((run() == reference).mean()) for label, run in runners.items()}
        times = time_alternating(runners, repeats)
    base = statistics.median(times["logits + host argmax"])
    return [{"variant": label, "median_ms": statistics.median(values) * 1e3, "speedup": base / statistics.median(values),
             "output_bytes": outputs_bytes[label], "agreement": agreement[label], "threads": threads,
             "size": list(size)} for label, values in times.items()]


def end_to_end_table(rows: list[dict], artifact: Path, repeats: int) -> str:
    size = "x".join(str(v) for v in rows[0]["size"])
    lines = [f"Whole model on ONNX Runtime (CPU, {rows[0]['threads']} threads), {artifact.name}, one {size} image, "
             f"labels on the host at the end; medians of {repeats} runs, alternating:", "",
             "| graph ends in | median | vs logits | output per image | labels = logits' argmax |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['median_ms']:.0f} ms | **{row['speedup']:.2f}×** | "
                     f"{row['output_bytes'] / 1e6:.2f} MB | {row['agreement']:.4%} |")
    lines += ["", provenance(f"python benchmarks/head.py --end-to-end {artifact} --readme")]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per implementation, size and thread count")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--readme", action="store_true", help="write the README's head-cpu-table block from this run")
    parser.add_argument("--end-to-end", metavar="ARTIFACT", type=Path,
                        help="also time the whole model (e.g. make demo's artifacts/deeplabv3plus) with each head")
    parser.add_argument("--skip-kernel", action="store_true", help="only the end-to-end part")
    args = parser.parse_args(argv)

    report, blocks = {}, {}
    if not args.skip_kernel:
        report["cpu"] = cpu_rows(args.repeats)
        blocks["head-cpu-table"] = cpu_table(report["cpu"], args.repeats)
    if args.end_to_end:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="segdeploy-head-bench-") as work:
            report["end_to_end"] = end_to_end_rows(args.end_to_end, args.repeats, Path(work))
        blocks["head-e2e-table"] = end_to_end_table(report["end_to_end"], args.end_to_end, args.repeats)
    for table in blocks.values():
        print(table + "\n")
    if args.json:
        from segdeploy.fileio import write_json

        write_json(args.json, report)
    if args.readme:
        for name, table in blocks.items():
            print(f"written to {replace_block(name, table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
