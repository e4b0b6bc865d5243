"""Bringing a user's graph to what a step needs, checked against the original.

Two conversions, both lossless in intent and both checked by running the original and the
converted graph in ONNX Runtime on the same inputs:

- FP16-stored weights behind ``Cast(to=float)`` nodes are folded into float32 initializers:
  the graph computes in FP32 either way, and quantizers and FP16 converters only see weights
  that are initializers of the layers themselves.
- A graph older than a step needs (per-channel ``DequantizeLinear`` has an ``axis`` from opset
  13 on) is converted up with ONNX's version converter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import BadInputError
from .onnx_io import default_opset, load_onnx

#: Largest max |Δ| between the original and a converted graph, relative to the reference's
#: largest magnitude: the conversions reorder no arithmetic, so only rounding noise may remain.
CONVERSION_RTOL = 1e-5
CONVERSION_ATOL = 1e-5


def fold_fp16_weight_casts(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every float16 initializer that feeds ``Cast(to=FLOAT)`` replaced by the
    float32 tensor the Cast made (and the Cast removed); returns (model, Casts folded)."""
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    graph = model_out.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    folded, kept_nodes, new_tensors = 0, [], []
    for node in graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source is None or source.data_type != onnx.TensorProto.FLOAT16 or to != onnx.TensorProto.FLOAT \
                or node.output[0] in graph_outputs:  # fmt: skip
            kept_nodes.append(node)
            continue
        values = numpy_helper.to_array(source).astype(np.float32)
        new_tensors.append(numpy_helper.from_array(values, node.output[0]))
        folded += 1
    if not folded:
        return model, 0
    del graph.node[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(new_tensors)
    used = {name for node in graph.node for name in node.input} | graph_outputs
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    for value in list(graph.input):  # old exporters list initializers as inputs too
        if value.name in {t.name for t in unused}:
            graph.input.remove(value)
    return model_out, folded


def upgrade_opset(model: onnx.ModelProto, opset: int, source: str | os.PathLike = "the model") -> onnx.ModelProto:
    """``model`` converted to ONNX opset ``opset`` by ONNX's version converter; BadInputError
    naming what to do when the converter cannot."""
    from onnx import version_converter

    current = default_opset(model)
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise BadInputError(
            f"{source}: opset {current} must be converted to opset {opset} for this step and ONNX's version converter "
            f"cannot ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); re-export the model at opset "
            f">= {opset}"
        ) from None
    return converted


@dataclass
class Prepared:
    """A graph ready for a step: its path, and what was done to it (the manifest's ``conversion``)."""

    path: Path
    report: dict

    @property
    def changed(self) -> bool:
        return bool(self.report)


def prepare_graph(onnx_path: str | os.PathLike, work_dir: str | os.PathLike, spec: dict, *, min_opset: int | None = None,
                  fold_casts: bool = True) -> Prepared:  # fmt: skip
    """Fold FP16 weight Casts and convert to ``min_opset`` if older; checked against the original.

    Returns the original path untouched when nothing needs doing; otherwise a converted copy in
    ``work_dir`` and a report of what changed and how far the outputs moved.
    """
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    report: dict = {}
    if fold_casts:
        model, folded = fold_fp16_weight_casts(model)
        if folded:
            report["fp16_weight_casts_folded"] = folded
    opset = default_opset(model) or 0
    if min_opset and opset < min_opset:
        model = upgrade_opset(model, min_opset, onnx_path)
        report["opset"] = {"from": opset, "to": min_opset, "converter": f"onnx.version_converter {onnx.__version__}"}
    if not report:
        return Prepared(onnx_path, {})
    converted = Path(work_dir) / f"{onnx_path.stem}-prepared.onnx"
    onnx.save(model, str(converted))
    report["check"] = check_same_outputs(onnx_path, converted, spec)
    if not report["check"]["passed"]:
        raise BadInputError(f"{onnx_path}: converting it for this step changed its outputs (max |Δ| "
                            f"{report['check']['max_abs_diff']:.3g}, {report['check']['shape']}); re-export the model "
                            "at a newer opset with FP32 weights")  # fmt: skip
    return Prepared(converted, report)


def check_same_outputs(original: Path, converted: Path, spec: dict, seed: int = 0) -> dict:
    """Run both graphs in ONNX Runtime on the same input; every output must match to rounding."""
    from .backend.onnxrt.runner import SessionFromOnnx
    from .parity import sample_images

    shape = model_input_shape(load_onnx(original, load_external_data=False), spec)
    feed = {spec["name"]: sample_images(shape, spec, seed)}
    expected_session, actual_session = SessionFromOnnx(original)(), SessionFromOnnx(converted)()
    names = [o.name for o in expected_session.get_outputs()]
    expected = expected_session.run(names, feed)
    actual = actual_session.run(names, feed)
    worst, passed = 0.0, True
    for reference, candidate in zip(expected, actual):
        delta = float(np.abs(reference.astype(np.float64) - candidate).max()) if reference.size else 0.0
        scale = float(np.abs(reference).max()) if reference.size else 0.0
        passed &= reference.shape == candidate.shape and delta <= CONVERSION_ATOL + CONVERSION_RTOL * scale
        worst = max(worst, delta)
    return {"shape": list(shape), "outputs": names, "max_abs_diff": worst, "passed": bool(passed)}


def model_input_shape(model: onnx.ModelProto, spec: dict, batch: int = 1) -> tuple[int, int, int, int]:
    """A concrete input shape: the graph's fixed dims, else the manifest's size (64x64 when unknown)."""
    from .onnx_io import graph_inputs, tensor_dims
    from .preprocess import input_channels

    value = next(i for i in graph_inputs(model) if i.name == spec["name"])
    dims = tensor_dims(value)
    size = [s or 64 for s in (spec.get("size") or [None, None])]
    defaults = (batch, input_channels(spec) or 3, *size)
    return tuple(d if isinstance(d, int) else default for d, default in zip(dims, defaults))
