"""Atrous benchmark (issue 18, part 4): dilated convolutions with only the taps that see the image
(segdeploy.conv.atrous) against the dense dilated Conv, on ONNX Runtime's CPU provider, in one run.

(a) ``branch``: one ASPP branch, a 2048→256 3×3 Conv (+bias, ReLU) at 64×64 (output stride 8 at 512²)
    and 32×32 (stride 16), rates 6/12/18/24/36: MACs before/after, and the time of the native graph vs
    the rewritten one, alternating (native, rewritten, native, ...) after a warm-up, 1 and 2 threads.
(b) ``models``: whole models exported from the zoo at the given sizes (random weights: the time does
    not depend on them), output stride 8 and 16: the dilated Convs' MACs before/after (ASPP, rate ≥ 6,
    and the backbone's), each ASPP branch timed alone at its real shape, and the whole model with its
    ASPP rewritten, native vs rewritten, alternating.

Both parts time two ONNX Runtime settings: ``all`` (the default graph optimisations: on x86 its NCHWc
convolution already skips the kernel taps that fall in the padding) and ``extended`` (no NCHWc layout:
im2col + GEMM, which multiplies the padding's zeros like most runtimes do — ONNX Runtime on ARM, where the
NCHWc layout does not exist, among them). The target checked: "ASPP's time down by at least the share of
its taps that fall in the padding, minus 10%".

    PYTHONPATH=. python benchmarks/plugins_atrous.py [--part branch|models|all] [--repeats 5]
        [--sizes 512x512 1024x2048] [--levels all extended] [--readme]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readme_blocks import provenance, replace_block  # noqa: E402  (beside this script)

from segdeploy.conv.atrous import atrous_candidates, rewrite_atrous  # noqa: E402

RATES = (6, 12, 18, 24, 36)
BRANCH_MAPS = (64, 32)
#: (zoo name, output strides it is timed at); every constructor here takes ``output_stride``.
MODELS = (("deeplabv3_resnet50", (8, 16)), ("deeplabv2_resnet101", (8, 16)), ("deeplabv3plus", (16, 8)))
#: Dilated Convs at this rate or more are the ASPP's; the backbones' dilations are 2 and 4.
ASPP_MIN_RATE = 6
TARGET_SLACK = 0.10


def session(model, threads: int, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def alternate(models: dict, feed_shape, threads: int, level: str, repeats: int) -> dict[str, float]:
    """Median seconds per run of each model, run in turn after one warm-up each; checks they agree."""
    sessions = {name: session(model, threads, level) for name, model in models.items()}
    x = np.random.default_rng(0).normal(size=feed_shape).astype(np.float32)
    outputs = {name: s.run(None, {s.get_inputs()[0].name: x})[0] for name, s in sessions.items()}
    reference = next(iter(outputs.values()))
    for name, out in outputs.items():  # a speed-up of a wrong answer is no speed-up
        assert np.abs(out - reference).max() <= 1e-4 * max(float(np.abs(reference).max()), 1e-6), name
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def branch_model(cin: int, cout: int, rate: int, weight=None):
    """x -> Conv(3×3, dilation and padding ``rate``, bias) -> Relu: an ASPP branch with BN folded."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(rate)
    weight = rng.normal(0, 0.02, (cout, cin, 3, 3)).astype(np.float32) if weight is None else weight
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="branch", dilations=[rate, rate], pads=[rate] * 4),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "branch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, "h", "w"])],
                              [numpy_helper.from_array(weight, "w"),
                               numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def target_line(before: float, after: float, padding_share: float) -> str:
    saved = 1 - after / before
    holds = saved >= padding_share - TARGET_SLACK
    return f"time {-saved:+.0%} vs −({padding_share:.0%} − 10%): {'holds' if holds else 'does not hold'}"


def part_branch(threads_list, levels, repeats) -> list[str]:
    lines = ["#### One ASPP branch: 2048→256 3×3 Conv + ReLU, batch 1", "",
             "| map | rate | taps in padding | GMAC before → after | ORT opt | threads | native ms | rewritten ms | "
             "native / rewritten | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size in BRANCH_MAPS:
        for rate in RATES:
            model = branch_model(2048, 256, rate)
            (candidate,) = atrous_candidates(model, (size, size))
            rewritten = rewrite_atrous(model, (size, size), ["branch"])
            for level in levels:
                for threads in threads_list:
                    t = alternate({"native": model, "rewritten": rewritten}, (1, 2048, size, size), threads, level, repeats)
                    row = (f"| {size}×{size} | {rate} | {candidate.padding_share:.0%} | {candidate.macs_before / 1e9:.2f} → "
                           f"{candidate.macs_after / 1e9:.2f} | {level} | {threads} | {ms(t['native'])} | {ms(t['rewritten'])} | "
                           f"{t['native'] / t['rewritten']:.2f}× | "
                           f"{'holds' if 1 - t['rewritten'] / t['native'] >= candidate.padding_share - TARGET_SLACK else 'no'} |")
                    print(row, flush=True)
                    lines.append(row)
    return lines


@dataclass
class Exported:
    name: str
    output_stride: int
    size: tuple[int, int]
    model: object  # onnx.ModelProto at the fixed size


def export(name: str, output_stride: int, size: tuple[int, int], folder: Path) -> Exported:
    import onnx
    import torch

    from segdeploy.models.registry import create_model

    torch.manual_seed(0)
    net = create_model(name, num_classes=21, output_stride=output_stride).eval()
    path = folder / f"{name}_os{output_stride}_{size[0]}x{size[1]}.onnx"
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, *size), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"])
    return Exported(name, output_stride, size, onnx.load(str(path)))


def part_models(sizes, levels, repeats, time_sizes) -> list[str]:
    import warnings

    from onnx import numpy_helper

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    macs_rows = ["#### Whole models: dilated-Conv MACs for one image", "",
                 "| model | OS | input | ASPP GMAC before → after (taps in padding) | backbone dilated GMAC before → after |",
                 "|---|---|---|---|---|"]
    time_rows = ["#### ASPP branches alone and the whole model (ASPP rewritten), 2 threads", "",
                 "| model | OS | input | ORT opt | ASPP branches native ms | rewritten ms | ratio | whole model native ms | "
                 "rewritten ms | ratio | target (ASPP) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for name, strides in MODELS:
                for output_stride in strides:
                    exported = export(name, output_stride, size, Path(tmp))
                    candidates = atrous_candidates(exported.model, size)
                    aspp = [c for c in candidates if min(c.dilation) >= ASPP_MIN_RATE]
                    backbone = [c for c in candidates if min(c.dilation) < ASPP_MIN_RATE]

                    def gmac(group):
                        before, after = sum(c.macs_before for c in group), sum(c.macs_after for c in group)
                        return before / 1e9, after / 1e9

                    (ab, aa), (bb, ba) = gmac(aspp), gmac(backbone)
                    share = 1 - aa / ab if ab else 0.0
                    row = (f"| {name} | {output_stride} | {size[0]}×{size[1]} | {ab:.2f} → {aa:.2f} ({share:.0%}) | "
                           f"{bb:.2f} → {ba:.2f} ({1 - ba / bb if bb else 0:.0%}) |")
                    print(row, flush=True)
                    macs_rows.append(row)
                    if size not in time_sizes:
                        continue
                    weights = {i.name: i for i in exported.model.graph.initializer}
                    nodes = {n.name: n for n in exported.model.graph.node}
                    rewritten = rewrite_atrous(exported.model, size, [c.node for c in aspp])
                    for level in levels:
                        branch_native = branch_rewritten = 0.0
                        for c in aspp:  # each branch alone at its real shape and weights
                            weight = numpy_helper.to_array(weights[nodes[c.node].input[1]])
                            branch = branch_model(weight.shape[1], weight.shape[0], c.dilation[0], weight)
                            t = alternate({"native": branch, "rewritten": rewrite_atrous(branch, c.map_size, ["branch"])},
                                          (1, weight.shape[1], *c.map_size), 2, level, repeats)
                            branch_native += t["native"]
                            branch_rewritten += t["rewritten"]
                        whole = alternate({"native": exported.model, "rewritten": rewritten}, (1, 3, *size), 2, level,
                                          max(2, repeats // 2))
                        row = (f"| {name} | {output_stride} | {size[0]}×{size[1]} | {level} | {ms(branch_native)} | "
                               f"{ms(branch_rewritten)} | {branch_native / branch_rewritten:.2f}× | {ms(whole['native'])} | "
                               f"{ms(whole['rewritten'])} | {whole['native'] / whole['rewritten']:.2f}× | "
                               f"{target_line(branch_native, branch_rewritten, share)} |")
                        print(row, flush=True)
                        time_rows.append(row)
    return macs_rows + [""] + time_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("branch", "models", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per graph (whole models: half, at least 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts for the branch part")
    parser.add_argument("--levels", nargs="+", choices=("all", "extended"), default=["all", "extended"],
                        help="ONNX Runtime graph optimisation levels to time")
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"], help="model input sizes HxW")
    parser.add_argument("--time-sizes", nargs="+", default=["512x512"],
                        help="sizes whose models are timed (the others get MACs only: 1024×2048 is slow on 2 cores)")
    parser.add_argument("--readme", action="store_true", help="write the tables to the README's plugins_atrous block")
    args = parser.parse_args(argv)

    def hw(text: str) -> tuple[int, int]:
        height, width = text.lower().split("x")
        return int(height), int(width)

    lines = []
    if args.part in ("branch", "all"):
        lines += part_branch(args.threads, args.levels, args.repeats) + [""]
    if args.part in ("models", "all"):
        lines += part_models([hw(s) for s in args.sizes], args.levels, args.repeats, {hw(s) for s in args.time_sizes}) + [""]
    command = "python benchmarks/plugins_atrous.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += [f"Medians of {args.repeats} alternating runs (whole models: {max(2, args.repeats // 2)}); "
              "ratio = native / rewritten (> 1: the rewrite is faster).", "", provenance(command.strip())]
    text = "\n".join(lines)
    print(text)
    if args.readme:
        print(f"written to {replace_block('plugins_atrous', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
