"""Depthwise layers of the zoo's efficient models (issue 18), one layer at a time, side by side in one run.

    PYTHONPATH=. python benchmarks/plugins_layers.py [--size 512] [--threads 1,2] [--seconds 1.0]
                                                     [--models deeplabv3plus_xception65,...] [--no-separable]

For every depthwise convolution shape of the models (group == in_channels, found by running each
model once at ``--size`` with hooks on its ``nn.Conv2d`` modules; identical shapes are measured once
and counted), three implementations of ``ReLU(depthwise conv + bias)`` run alternately on the same
float32 input (a rotating order, one warm-up each, medians):

- **ours**: segdeploy's CPU kernel, ``sd_depthwise_conv_cpu`` through ``segdeploy.conv._binding``
  (the call's struct built once, as a runtime node holds it);
- **ORT**: a one-node ONNX model, ``Conv(group=C)`` + ``Relu`` (which ONNX Runtime fuses), in an
  ONNX Runtime CPU session with ``intra_op_num_threads`` = the thread count;
- **torch**: ``torch.relu_(F.conv2d(..., groups=C))`` with ``torch.set_num_threads``.

The separable part times, for every depthwise layer that the model follows by a 1x1 convolution,
segdeploy's fused block (``sd_separable_conv_cpu``: depthwise + bias + ReLU, then the 1x1 + bias +
ReLU, the depthwise result never written to memory) against ONNX Runtime running the two
convolutions as a two-node graph. Ratios above 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("deeplabv3plus_xception65", "deeplabv3plus_mobilenetv2", "deeplabv3_mobilenetv3_large")
SHORT = {"deeplabv3plus_xception65": "X65", "deeplabv3plus_mobilenetv2": "MNv2", "deeplabv3_mobilenetv3_large": "MNv3"}
MIN_ROUNDS, MAX_ROUNDS = 5, 400
RELU_UPPER = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Layer:
    """A depthwise convolution's shape (batch 1) and, when a 1x1 convolution follows it, that one's outputs."""

    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    pointwise: int = 0  # output channels of the 1x1 convolution that follows, 0: none

    def out_size(self) -> tuple[int, int]:
        return tuple((size + self.pads[i] + self.pads[i + 2] - self.dilation[i] * (self.kernel[i] - 1) - 1)
                     // self.stride[i] + 1 for i, size in enumerate((self.height, self.width)))

    def depthwise(self) -> Layer:
        return Layer(self.channels, self.height, self.width, self.kernel, self.stride, self.dilation, self.pads)

    def label(self) -> str:
        text = f"{self.channels}×{self.height}×{self.width} k{self.kernel[0]}"
        if self.kernel[0] != self.kernel[1]:
            text += f"×{self.kernel[1]}"
        text += f" s{self.stride[0]}" + (f" d{self.dilation[0]}" if self.dilation != (1, 1) else "")
        if self.pads[:2] != self.pads[2:]:
            text += f" pads {','.join(map(str, self.pads))}"
        return text + (f" → {self.pointwise}" if self.pointwise else "")


def model_layers(model_name: str, size: int) -> list[Layer]:
    """The model's depthwise convolutions at a size×size input, in execution order, each with the
    output channels of a 1x1 convolution that runs right after it on its channels (0: none)."""
    import torch

    from segdeploy.models.registry import create_model

    model = create_model(model_name).eval()
    executed: list[tuple[torch.nn.Conv2d, tuple]] = []
    hooks = [module.register_forward_hook(lambda module, inputs, _out: executed.append((module, tuple(inputs[0].shape))))
             for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    layers = []
    for i, (conv, shape) in enumerate(executed):
        channels = shape[1]
        if conv.groups != channels or conv.out_channels != channels or channels == 1:
            continue
        if isinstance(conv.padding, str):
            raise SystemExit(f"{model_name}: padding={conv.padding!r} is not handled here")
        pointwise = 0
        if i + 1 < len(executed):
            following = executed[i + 1][0]
            if (following.kernel_size == (1, 1) and following.groups == 1 and following.in_channels == channels
                    and following.stride == (1, 1) and following.padding == (0, 0)):
                pointwise = following.out_channels
        ph, pw = conv.padding
        layers.append(Layer(channels, shape[2], shape[3], tuple(conv.kernel_size), tuple(conv.stride),
                            tuple(conv.dilation), (ph, pw, ph, pw), pointwise))
    return layers


def alternate(runs: list[Callable[[], object]], seconds: float) -> list[float]:
    """Median ms of each of ``runs``, run in turn (the first of each round rotating) after a warm-up,
    for about ``seconds`` (at least MIN_ROUNDS rounds)."""
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    start = time.perf_counter()
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < seconds):
        for k in range(len(runs)):
            index = (rounds + k) % len(runs)
            t0 = time.perf_counter()
            runs[index]()
            times[index].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return [statistics.median(t) for t in times]


def _relu():
    from segdeploy.conv._binding import ACTIVATIONS, SdActivation

    return SdActivation(ACTIVATIONS["clip"], 0.0, RELU_UPPER)


def _depthwise_io(layer: Layer, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, out: np.ndarray | None):
    from segdeploy.conv._binding import DTYPES, SdDepthwiseConvIO

    out_h, out_w = layer.out_size()
    return SdDepthwiseConvIO(x.ctypes.data, DTYPES["float32"], 1, layer.channels, layer.height, layer.width,
                             *layer.kernel, *layer.stride, *layer.dilation, *layer.pads, weight.ctypes.data,
                             bias.ctypes.data, _relu(), None if out is None else out.ctypes.data, out_h, out_w)


def _ort_session(nodes, inputs, initializers, threads: int):
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _conv_node(layer: Layer, x: str, y: str, w: str, b: str):
    from onnx import helper

    return helper.make_node("Conv", [x, w, b], [y], group=layer.channels, kernel_shape=list(layer.kernel),
                            strides=list(layer.stride), dilations=list(layer.dilation), pads=list(layer.pads))


class Contestants:
    """The implementations of one layer at one thread count, on one random input, checked against each other."""

    def __init__(self, layer: Layer, threads: int, separable: bool, seed: int = 0):
        import torch
        from onnx import helper

        from segdeploy import _native

        rng = np.random.default_rng(seed)
        c = layer.channels
        self.x = rng.standard_normal((1, c, layer.height, layer.width), dtype=np.float32)
        self.w = (rng.standard_normal((c, 1, *layer.kernel), dtype=np.float32) / np.prod(layer.kernel)).astype(np.float32)
        self.b = rng.standard_normal(c, dtype=np.float32) * np.float32(0.1)
        out_h, out_w = layer.out_size()
        lib = _native.load_library()
        self.threads = threads
        nodes = [_conv_node(layer, "x", "dw", "w", "b"), helper.make_node("Relu", ["dw"], ["dwr"])]
        initializers = {"w": self.w, "b": self.b}
        if not separable:
            self.out = np.empty((1, c, out_h, out_w), np.float32)
            self.io = _depthwise_io(layer, self.x, self.w, self.b, self.out)
            self.ours = lambda: _native.check(lib.sd_depthwise_conv_cpu(ctypes.byref(self.io), threads))
            nodes[-1].output[0] = "y"
        else:
            from segdeploy.conv._binding import SdSeparableConvIO

            k = layer.pointwise
            self.pw = (rng.standard_normal((k, c, 1, 1), dtype=np.float32) / np.sqrt(c)).astype(np.float32)
            self.pb = rng.standard_normal(k, dtype=np.float32) * np.float32(0.1)
            self.out = np.empty((1, k, out_h, out_w), np.float32)
            self.io = SdSeparableConvIO(_depthwise_io(layer, self.x, self.w, self.b, None), k, self.pw.ctypes.data,
                                        self.pb.ctypes.data, _relu(), self.out.ctypes.data)
            self.ours = lambda: _native.check(lib.sd_separable_conv_cpu(ctypes.byref(self.io), threads))
            nodes += [helper.make_node("Conv", ["dwr", "pw", "pb"], ["pwo"]), helper.make_node("Relu", ["pwo"], ["y"])]
            initializers.update(pw=self.pw, pb=self.pb)
        session = _ort_session(nodes, [("x", list(self.x.shape))], initializers, threads)
        feed = {"x": self.x}
        self.ort = lambda: session.run(None, feed)[0]
        xt, wt, bt = (torch.from_numpy(a) for a in (self.x, self.w, self.b))
        padded = layer.pads[:2] != layer.pads[2:]
        pad = (layer.pads[1], layer.pads[3], layer.pads[0], layer.pads[2])

        def torch_depthwise():
            with torch.no_grad():
                source = torch.nn.functional.pad(xt, pad) if padded else xt
                return torch.relu_(torch.nn.functional.conv2d(source, wt, bt, layer.stride,
                                                              0 if padded else layer.pads[:2], layer.dilation, c))

        self.torch = torch_depthwise
        self.ours()
        reference = self.ort()
        scale = float(np.abs(reference).max()) or 1.0
        error = float(np.abs(self.out - reference).max())
        if error > 1e-4 * scale:
            raise SystemExit(f"{layer.label()}: ours differs from ONNX Runtime by {error:.3g} (scale {scale:.3g})")
        if not separable:
            error = float(np.abs(torch_depthwise().numpy() - reference).max())
            if error > 1e-4 * scale:
                raise SystemExit(f"{layer.label()}: torch differs from ONNX Runtime by {error:.3g}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×"


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def run(layers: dict[Layer, collections.Counter], threads_list: list[int], seconds: float, separable: bool,
        progress=print) -> list[tuple]:
    """Rows (layer, counts, threads, median ms per contestant...) for every layer and thread count."""
    import torch

    rows = []
    for i, (layer, counts) in enumerate(layers.items(), 1):
        for threads in threads_list:
            torch.set_num_threads(threads)
            contestants = Contestants(layer, threads, separable)
            runs = [contestants.ours, contestants.ort] + ([] if separable else [contestants.torch])
            times = alternate(runs, seconds)
            rows.append((layer, counts, threads, *times))
            progress(f"  [{i}/{len(layers)}] {layer.label()}, {threads} thread(s): " +
                     " / ".join(f"{t:.3f}" for t in times) + " ms")
    return rows


def table(rows: list[tuple], separable: bool) -> str:
    """The markdown table of ``run``'s rows and a geometric-mean line per thread count."""
    if separable:
        lines = ["| separable block (C×H×W k s d → C_out) | layers | threads | ours ms | ORT 2 convs ms | ORT / ours |",
                 "|---|---|---|---|---|---|"]
    else:
        lines = ["| depthwise layer (C×H×W k s d) | layers | threads | ours ms | ORT ms | torch ms | ORT / ours | "
                 "torch / ours |", "|---|---|---|---|---|---|---|---|"]
    for layer, counts, threads, *times in rows:
        used = " ".join(f"{SHORT.get(model, model)}×{n}" for model, n in counts.items())
        cells = [layer.label(), used, str(threads)] + [f"{t:.3f}" for t in times]
        cells += [_ratio(times[1], times[0])] + ([] if separable else [_ratio(times[2], times[0])])
        lines.append("| " + " | ".join(cells) + " |")
    summary = []
    for threads in sorted({row[2] for row in rows}):
        subset = [row for row in rows if row[2] == threads]
        weights = [sum(row[1].values()) for row in subset]
        ours_total = sum(w * row[3] for w, row in zip(weights, subset))
        ort_total = sum(w * row[4] for w, row in zip(weights, subset))
        text = (f"{threads} thread(s): geometric mean ORT / ours {_geomean([r[4] / r[3] for r in subset]):.2f}×, "
                f"all {sum(weights)} layers of the models (each shape × its count) ours {ours_total:.1f} ms vs "
                f"ORT {ort_total:.1f} ms ({ort_total / ours_total:.2f}×)")
        if not separable:
            torch_total = sum(w * row[5] for w, row in zip(weights, subset))
            text += f", torch {torch_total:.1f} ms ({torch_total / ours_total:.2f}×)"
        wins = sum(1 for row in subset if row[4] >= 2 * row[3])
        text += f"; ours ≥ 2× ORT on {wins} of {len(subset)} shapes"
        summary.append(text)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {line}" for line in summary)


def collect_layers(models: list[str], size: int, progress=print) -> tuple[dict, dict]:
    """Unique depthwise shapes and unique (depthwise, 1x1) blocks, each with its count per model."""
    depthwise: dict[Layer, collections.Counter] = {}
    blocks: dict[Layer, collections.Counter] = {}
    for model in models:
        started = time.perf_counter()
        found = model_layers(model, size)
        progress(f"{model}: {len(found)} depthwise convolutions ({time.perf_counter() - started:.0f} s to trace)")
        for layer in found:
            depthwise.setdefault(layer.depthwise(), collections.Counter())[model] += 1
            if layer.pointwise:
                blocks.setdefault(layer, collections.Counter())[model] += 1
    order = lambda item: -item[0].channels * item[0].height * item[0].width  # noqa: E731  (largest first)
    return dict(sorted(depthwise.items(), key=order)), dict(sorted(blocks.items(), key=order))


def main(argv: list[str] | None = None) -> None:
    from readme_blocks import provenance

    parser = argparse.ArgumentParser(prog="plugins_layers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--size", type=int, default=512, help="input size (square)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per layer and thread count")
    parser.add_argument("--no-separable", action="store_true", help="skip the separable block's part")
    args, _ = parser.parse_known_args(argv)
    import onnxruntime
    import torch

    threads_list = [int(t) for t in args.threads.split(",")]
    models = args.models.split(",")
    depthwise, blocks = collect_layers(models, args.size, progress=lambda m: print(m, file=sys.stderr))
    print(f"\n### Depthwise layers at {args.size}×{args.size}: {sum(sum(c.values()) for c in depthwise.values())} "
          f"layers, {len(depthwise)} shapes (ReLU(conv + bias), float32, batch 1)\n")
    rows = run(depthwise, threads_list, args.seconds, False, progress=lambda m: print(m, file=sys.stderr))
    print(table(rows, False))
    if not args.no_separable and blocks:
        print(f"\n### Separable blocks (depthwise + ReLU, 1×1 + ReLU) at {args.size}×{args.size}: "
              f"{sum(sum(c.values()) for c in blocks.values())} blocks, {len(blocks)} shapes\n")
        rows = run(blocks, threads_list, args.seconds, True, progress=lambda m: print(m, file=sys.stderr))
        print(table(rows, True))
    print(f"\nAlternating in one run, medians; ONNX Runtime {onnxruntime.__version__} (CPU provider, default "
          f"options), torch {torch.__version__}. "
          + provenance("PYTHONPATH=. python benchmarks/plugins_layers.py " + " ".join(argv or sys.argv[1:])))


if __name__ == "__main__":
    main()
