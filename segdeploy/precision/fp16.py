"""FP16-typed ONNX graphs with float32 inputs and outputs.

Conversion is ONNX Runtime's float16 converter (it keeps Resize's ``scales`` float32, the input
the onnxconverter-common converter breaks), with

* float32 graph inputs and outputs (a Cast at each end) - checked afterwards, not assumed: a
  segmentation head usually ends in a Resize, the op converters most often leave in FP16;
* numerically sensitive ops kept in FP32: ``SENSITIVE_OPS`` (softmax, normalisation statistics,
  exp/log/pow/sqrt) and any layer whose FP32 activations on the probe images come near the FP16
  range (``overflowing_nodes``);
* layers named by the caller or by the sensitivity analysis kept in FP32.

ONNX Runtime on the CPU runs the result (inserting float32 kernels where it has no FP16 one, with
FP16 tensors between layers), so the FP16 decisions can be checked without a GPU.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..backend.onnxrt.runner import import_onnxruntime
from ..errors import MissingDependencyError, VerificationError
from .data import ImageSet
from .graph import sort_topologically

SENSITIVE_OPS = (
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt", "Exp", "Log", "Reciprocal",
)  # fmt: skip
FP16_MAX = 65504.0
#: Activations above this share of the FP16 range keep their layer in FP32 (headroom for the next op).
OVERFLOW_SHARE = 0.5


def _converter():
    try:
        from onnxruntime.transformers import float16
    except ImportError:
        raise MissingDependencyError("onnxruntime", "ort", "the FP16 converter and its check use it") from None
    return float16


def convert_to_fp16(model: onnx.ModelProto, keep_fp32: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """FP16 copy of ``model`` with float32 I/O; the nodes named in ``keep_fp32`` and SENSITIVE_OPS stay FP32."""
    float16 = _converter()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the converter edits the model it is given
    converted = float16.convert_float_to_float16(
        copy, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *SENSITIVE_OPS], node_block_list=sorted(keep_fp32),
    )  # fmt: skip
    sort_topologically(converted)  # the converter appends its Casts at the end
    converted.graph.ClearField("value_info")  # optional, and the converter leaves some with stale types
    remove_redundant_casts(converted)
    check_float32_io(converted)
    return converted


def remove_redundant_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Casts that change nothing or only lose precision (nodes must be in topological order).

    The converter casts float32 weights of FP32-kept layers to float32, and routes even a tensor
    between two FP32-kept layers through FP16 (float32 -> float16 -> float32), which loses the
    precision, or the range (1e5 becomes inf), that keeping them was for. Consumers of such a
    Cast read the original tensor instead; a graph output keeps its name through an Identity.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    dtypes.update({i.name: i.data_type for i in model.graph.initializer})
    graph_outputs = {o.name for o in model.graph.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers, renamed = {}, {}
    for node in list(model.graph.node):
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
        target, source = cast_to(node), node.input[0] if node.input else None
        first = producers.get(source)
        if target is not None and dtypes.get(source) != target and target == TensorProto.FLOAT and first is not None \
                and cast_to(first) == TensorProto.FLOAT16 and dtypes.get(first.input[0]) == TensorProto.FLOAT:
            source = first.input[0]  # a float32 -> float16 -> float32 round trip
        if target is None or dtypes.get(source) != target:
            producers.update((out, node) for out in node.output)
            continue
        if node.output[0] in graph_outputs:
            node.op_type = "Identity"
            node.ClearField("attribute")
            node.input[0] = source
        else:
            renamed[node.output[0]] = source
            model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input} | graph_outputs
    for node in list(model.graph.node):
        if node.op_type == "Cast" and node.output[0] not in used:
            model.graph.node.remove(node)
    return model


def check_float32_io(model: onnx.ModelProto) -> None:
    """Raise VerificationError unless every graph input and output is float32 and the graph type-checks."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            kind = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            raise VerificationError(f"FP16 conversion left graph input/output {value.name!r} as {kind}, not float32")
    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"the FP16 graph is not valid ONNX: {exc}") from None


def overflowing_nodes(model: onnx.ModelProto, images: ImageSet, spec: dict, input_name: str) -> list[str]:
    """Nodes that produce or consume a tensor whose FP32 values on ``images`` exceed OVERFLOW_SHARE of
    the FP16 range: both ends stay FP32, so the tensor is never cast to FP16."""
    ort = import_onnxruntime()
    probe = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in probe.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    graph_outputs = {o.name for o in probe.graph.output}
    for name in known.keys() - graph_outputs:
        probe.graph.output.append(known[name])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    peaks = dict.fromkeys(names, 0.0)
    for x in images.batches(spec, 1):  # one image at a time: every activation of a large model is in memory
        for name, value in zip(names, session.run(names, {input_name: x})):
            if value.size and value.dtype == np.float32:
                peaks[name] = max(peaks[name], float(np.abs(value).max()))
    large = {name for name, peak in peaks.items() if peak > OVERFLOW_SHARE * FP16_MAX}
    return sorted(n.name for n in model.graph.node if large & {*n.input, *n.output})
