"""The rewrite decided by measurement: each candidate layer timed native vs plugin, then the whole model.

Each layer is cut out of the graph as a small ONNX model (its nodes, its constants) and fed the
activation the full graph computes there at the measured input size; the native and the rewritten
layer then run alternately in one process on ONNX Runtime's CPU provider with the artifact's
threads, for a bounded time each. A layer is replaced only where the plugin's median is at most
the native median / ``margin``. Then the whole model runs native vs rewritten the same way; the
rewrite is dropped when it is not faster. Everything timed is recorded (:class:`Measurement`).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .rewrite import DEPTHWISE, Candidate, apply_rewrite

#: A plugin replaces a layer only where it is this many times faster than the native layer.
MARGIN = 1.10
#: Time budget of one layer's alternating runs (both variants), and the bounds on the rounds.
LAYER_SECONDS = 1.0
MODEL_SECONDS = 4.0
MIN_ROUNDS, MAX_ROUNDS = 3, 200


def _no_progress(message: str) -> None:
    pass


@dataclass(frozen=True)
class LayerTiming:
    """One option for one layer: native vs plugin medians (ms) at ``shape``."""

    name: str
    shape: tuple[int, ...]
    native_ms: float
    plugin_ms: float
    rounds: int

    @property
    def ratio(self) -> float:
        return self.native_ms / self.plugin_ms if self.plugin_ms else float("inf")

    def to_json(self) -> dict:
        return {"name": self.name, "input_shape": list(self.shape), "native_ms": round(self.native_ms, 4),
                "plugin_ms": round(self.plugin_ms, 4), "speedup": round(self.ratio, 3), "rounds": self.rounds}


@dataclass
class Measurement:
    """What :func:`choose_by_measurement` timed and chose."""

    chosen: list = field(default_factory=list)
    #: (candidate or atrous node name, reason) of the options not taken.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layers: list[LayerTiming] = field(default_factory=list)
    model: LayerTiming | None = None
    dropped: bool = False
    threads: int = 0

    def to_json(self) -> dict:
        data = {"layers": [t.to_json() for t in self.layers], "machine": machine(self.threads)}
        if self.model is not None:
            data["model"] = self.model.to_json()
        data["rewrite_dropped"] = self.dropped
        return data


def machine(threads: int) -> dict:
    """Where the times were taken."""
    import onnxruntime

    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "runtime": f"onnxruntime {onnxruntime.__version__}", "provider": "CPUExecutionProvider",
            "threads": threads or "default"}


class _Sessions:
    """ONNX Runtime CPU sessions of in-memory models, written to a scratch folder so that the runner's
    loader registers segdeploy's nodes as for any artifact."""

    def __init__(self, threads: int):
        self.threads = threads
        self._dir = tempfile.TemporaryDirectory(prefix=".segdeploy-measure-")
        self._count = 0

    def __call__(self, model: onnx.ModelProto):
        from ..backend.onnxrt.runner import SessionFromOnnx

        self._count += 1
        path = Path(self._dir.name) / f"m{self._count}.onnx"
        onnx.save(model, str(path))
        return SessionFromOnnx(path, threads=self.threads or None)()

    def close(self):
        self._dir.cleanup()


def alternate(run_a: Callable[[], object], run_b: Callable[[], object], seconds: float) -> tuple[float, float, int]:
    """Median ms of ``run_a`` and ``run_b`` run alternately (one warm-up each) for about ``seconds``."""
    run_a(), run_b()
    times_a, times_b = [], []
    start = time.perf_counter()
    while len(times_a) < MAX_ROUNDS and (len(times_a) < MIN_ROUNDS or time.perf_counter() - start < seconds):
        for run, times in ((run_a, times_a), (run_b, times_b)) if len(times_a) % 2 == 0 else \
                ((run_b, times_b), (run_a, times_a)):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times_a), statistics.median(times_b), len(times_a)


def _race(native, plugin, feed: dict, seconds: float) -> tuple[float, float, int]:
    return alternate(lambda: native.run(None, feed), lambda: plugin.run(None, feed), seconds)


def activations(model: onnx.ModelProto, names: list[str], feed: dict, sessions: _Sessions) -> dict[str, np.ndarray]:
    """The values the graph computes for ``names`` on ``feed`` (one run with them as extra outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = sessions(probe)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def layer_model(model: onnx.ModelProto, node_names: tuple[str, ...], input_name: str, output_name: str,
                sample: np.ndarray) -> onnx.ModelProto:
    """The nodes ``node_names`` of ``model`` (with the constants they read) as a model of their own."""
    from onnx import TensorProto

    wanted = set(node_names)
    nodes = [n for n in model.graph.node if n.name in wanted]
    reads = {i for n in nodes for i in n.input}
    constants = [n for n in model.graph.node if n.op_type == "Constant" and set(n.output) & reads]
    initializers = [init for init in model.graph.initializer if init.name in reads]
    elem = TensorProto.FLOAT16 if sample.dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(constants + nodes, "layer", [helper.make_tensor_value_info(input_name, elem, sample.shape)],
                              [helper.make_empty_tensor_value_info(output_name)], initializers)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def choose_by_measurement(model: onnx.ModelProto, candidates: list[Candidate], feed: dict, *, threads: int = 0,
                          atrous: list | None = None, atrous_rewrite: Callable | None = None,
                          layer_seconds: float = LAYER_SECONDS, model_seconds: float = MODEL_SECONDS,
                          progress: Callable[[str], None] = _no_progress,
                          counter: Callable[[int, int], None] | None = None) -> Measurement:
    """Time every candidate layer (and every atrous candidate, rewritten by ``atrous_rewrite(model,
    names)``) native vs rewritten on ``feed``; keep the options that win by :data:`MARGIN`, then check
    the whole model. Returns what was chosen (``chosen``: depthwise candidates and atrous node names)."""
    result = Measurement(threads=threads)
    sessions = _Sessions(threads)
    try:
        by_layer: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            by_layer.setdefault(candidate.layer, []).append(candidate)
        atrous = list(atrous or [])
        total = len(by_layer) + len(atrous) + 1
        progress("computing the layers' inputs")
        values = activations(model, [c.input for c in candidates], feed, sessions)
        done = 0
        for layer, options in by_layer.items():
            progress(f"timing {layer} native vs plugin")
            best, best_gain = None, MARGIN
            for candidate in options:
                sample = values[candidate.input]
                native = layer_model(model, candidate.nodes, candidate.input, candidate.output, sample)
                plugin = apply_rewrite(native, [candidate])
                native_ms, plugin_ms, rounds = _race(sessions(native), sessions(plugin), {candidate.input: sample},
                                                     layer_seconds)
                timing = LayerTiming(candidate.name, tuple(sample.shape), native_ms, plugin_ms, rounds)
                result.layers.append(timing)
                if timing.ratio >= best_gain:
                    best, best_gain = candidate, timing.ratio
            for candidate in options:
                if candidate is not best:
                    ratio = next(t.ratio for t in result.layers if t.name == candidate.name)
                    why = (f"plugin {ratio:.2f}x native, under the {MARGIN:.2f}x margin" if best is None
                           else f"the {best.kind} option is faster ({best_gain:.2f}x vs {ratio:.2f}x)")
                    result.skipped.append((candidate.name, why))
            if best is not None:
                result.chosen.append(best)
            done += 1
            if counter:
                counter(done, total)
        replaced_layers = {c.layer for c in result.chosen}
        for entry in atrous:
            if entry.node in replaced_layers:  # one rewrite per node: the depthwise plugin won it already
                result.skipped.append((f"{entry.node}:atrous", "the layer is replaced by the depthwise plugin"))
                continue
            progress(f"timing the atrous {entry.node} native vs rewritten")
            rewritten = atrous_rewrite(model, [entry.node])
            # the whole model runs for each split: its budget, not a layer's, so that noise cannot pick it
            native_ms, plugin_ms, rounds = _race(sessions(model), sessions(rewritten), feed, model_seconds)
            timing = LayerTiming(f"{entry.node}:atrous", tuple(next(iter(feed.values())).shape), native_ms, plugin_ms,
                                 rounds)
            result.layers.append(timing)
            if timing.ratio >= MARGIN:
                result.chosen.append(entry.node)
            else:
                result.skipped.append((timing.name, f"whole model {timing.ratio:.2f}x native, under the {MARGIN:.2f}x margin"))
            done += 1
            if counter:
                counter(done, total)
        if result.chosen:
            progress("timing the whole model native vs rewritten")
            rewritten = rewrite_with(model, result.chosen, atrous_rewrite)
            native_ms, plugin_ms, rounds = _race(sessions(model), sessions(rewritten), feed, model_seconds)
            result.model = LayerTiming("model", tuple(next(iter(feed.values())).shape), native_ms, plugin_ms, rounds)
            if plugin_ms > native_ms:
                result.dropped = True
                result.skipped += [(c.name if isinstance(c, Candidate) else f"{c}:atrous",
                                    f"the rewritten model is slower ({plugin_ms:.1f} vs {native_ms:.1f} ms)")
                                   for c in result.chosen]
                result.chosen = []
        if counter:
            counter(total, total)
    finally:
        sessions.close()
    return result


def rewrite_with(model: onnx.ModelProto, chosen: list, atrous_rewrite: Callable | None) -> onnx.ModelProto:
    """``model`` with the chosen depthwise candidates and atrous nodes (names) rewritten."""
    atrous_nodes = [c for c in chosen if isinstance(c, str)]
    rewritten = model
    if atrous_nodes:
        rewritten = atrous_rewrite(rewritten, atrous_nodes)
    return apply_rewrite(rewritten, [c for c in chosen if isinstance(c, Candidate)])


__all__ = ["DEPTHWISE", "MARGIN", "LayerTiming", "Measurement", "alternate", "choose_by_measurement", "rewrite_with"]
