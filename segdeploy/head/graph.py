"""The deployment head appended to a scores graph: probabilities or the label map, computed in the graph.

A segmentation network ends in full-resolution float32 logits (N, C, H, W); reading them on the host
means copying C x 4 bytes per pixel off the device (84x the bytes of a uint8 label map for 21
classes) and an argmax on the CPU. :func:`append_head` ends the graph in what the application wants:

- ``probabilities``: a Softmax over the classes (a Sigmoid for a one-channel binary head), in the
  scores' own dtype (float16 in an FP16 graph);
- ``labels``: ArgMax over the classes (a threshold for a binary head) cast to uint8 when the classes
  fit (255 or fewer), else int32 — never int64, which TensorRT cannot output.

The fused alternative for ``labels`` (one node that interpolates and takes the argmax without writing
the full-resolution scores) is :mod:`segdeploy.head.fuse`.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import BadInputError
from ..onnx_io import default_opset, tensor_dims
from ..outputs import HEAD_NAMES, Head

#: Largest class count whose labels fit in uint8 (ids 0..254 leave 255 free as "unlabelled" for tools).
UINT8_CLASSES = 255
#: Output names of the appended heads.
OUTPUT_NAMES = {"probabilities": "probabilities", "labels": "labels"}


def label_dtype(classes: int) -> int:
    """The ONNX element type of a label map for ``classes`` classes: uint8 when they fit, else int32."""
    return TensorProto.UINT8 if classes <= UINT8_CLASSES else TensorProto.INT32


def label_dtype_name(classes: int) -> str:
    return "uint8" if label_dtype(classes) == TensorProto.UINT8 else "int32"


def append_head(model: onnx.ModelProto, head_name: str, *, prediction: str, head: Head,
                classes: int) -> tuple[onnx.ModelProto, Head]:
    """A copy of ``model`` whose ``prediction`` output (scores read with ``head``) is replaced by
    ``head_name``'s output; returns it with the new output's :class:`Head`.

    ``classes`` is the number of classes the labels take (the channel count, 2 for a binary head).
    Asking for the head the graph has already returns the model unchanged; a head cannot be taken
    back off (a Softmax removed, labels turned into scores): that is refused.
    """
    if head_name not in HEAD_NAMES:
        raise BadInputError(f"--head {head_name!r}: expected one of {', '.join(HEAD_NAMES)}")
    if head_name == head.name:
        return model, head
    if not head.has_scores or (head_name == "logits" and head.activation != "none"):
        raise BadInputError(f"the model's output {prediction!r} already holds {head.name}; it cannot be turned back "
                            f"into {head_name} (export or adopt the scores graph instead)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    output = next((value for value in graph.output if value.name == prediction), None)
    if output is None:
        raise BadInputError(f"the model has no output named {prediction!r}; its outputs are "
                            f"{[value.name for value in graph.output]}")
    dims = tensor_dims(output)
    if len(dims) != 4:
        raise BadInputError(f"output {prediction!r} must be (N, C, H, W) scores to append a head, its shape is {dims}")
    scores_type = output.type.tensor_type.elem_type
    if scores_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise BadInputError(f"output {prediction!r} must be float32 or float16 scores to append a head")
    new_name = OUTPUT_NAMES[head_name]
    _check_free(graph, new_name)
    batch, _, height, width = dims

    if head_name == "probabilities":
        if head.kind == "binary":
            graph.node.append(helper.make_node("Sigmoid", [prediction], [new_name], name="head_sigmoid"))
        else:
            _softmax_over_classes(result, prediction, new_name)
        new_output = helper.make_tensor_value_info(new_name, scores_type, dims)
        threshold = 1.0 / (1.0 + math.exp(-head.threshold)) if head.activation == "none" else head.threshold
        new_head = Head(head.kind, "sigmoid" if head.kind == "binary" else "softmax",
                        threshold if head.kind == "binary" else 0.0)
    else:
        dtype = label_dtype(classes)
        if head.kind == "binary":
            _binary_labels(result, prediction, new_name, head.threshold, scores_type)
        else:
            graph.node.append(helper.make_node("ArgMax", [prediction], [f"{new_name}_int64"], name="head_argmax",
                                               axis=1, keepdims=0))
            graph.node.append(helper.make_node("Cast", [f"{new_name}_int64"], [new_name], name="head_cast", to=dtype))
        new_output = helper.make_tensor_value_info(new_name, dtype, [batch, height, width])
        new_head = Head(head.kind, head.activation, head.threshold, form="labels")
    position = list(graph.output).index(output)
    graph.output.remove(output)
    graph.output.insert(position, new_output)
    return result, new_head


def _softmax_over_classes(model: onnx.ModelProto, scores: str, probabilities: str) -> None:
    """Softmax over axis 1. Before opset 13 ONNX's Softmax normalises over every axis from ``axis`` on
    (the classes *and* the pixels together), so older graphs get it spelled out per pixel."""
    graph = model.graph
    if (default_opset(model) or 13) >= 13:
        graph.node.append(helper.make_node("Softmax", [scores], [probabilities], name="head_softmax", axis=1))
        return
    names = {step: f"{probabilities}_{step}" for step in ("max", "shifted", "exp", "sum")}
    graph.node.extend([
        helper.make_node("ReduceMax", [scores], [names["max"]], name="head_softmax_max", axes=[1], keepdims=1),
        helper.make_node("Sub", [scores, names["max"]], [names["shifted"]], name="head_softmax_shift"),
        helper.make_node("Exp", [names["shifted"]], [names["exp"]], name="head_softmax_exp"),
        helper.make_node("ReduceSum", [names["exp"]], [names["sum"]], name="head_softmax_sum", axes=[1], keepdims=1),
        helper.make_node("Div", [names["exp"], names["sum"]], [probabilities], name="head_softmax"),
    ])


def _binary_labels(model: onnx.ModelProto, scores: str, labels: str, threshold: float, scores_type: int) -> None:
    """Foreground (1) where the one-channel score is above ``threshold``, as uint8 (N, H, W).

    The Cast to uint8 is the last node: TensorRT's parser refuses uint8 intermediate tensors (a
    Squeeze after the Cast fails to parse), uint8 graph outputs it takes.
    """
    graph = model.graph
    numpy_type = np.float16 if scores_type == TensorProto.FLOAT16 else np.float32
    graph.initializer.append(numpy_helper.from_array(np.array(threshold, numpy_type), f"{labels}_threshold"))
    if (default_opset(model) or 13) >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{labels}_channel_axis"))
        graph.node.append(helper.make_node("Squeeze", [scores, f"{labels}_channel_axis"], [f"{labels}_nhw"], name="head_squeeze"))
    else:
        graph.node.append(helper.make_node("Squeeze", [scores], [f"{labels}_nhw"], name="head_squeeze", axes=[1]))
    graph.node.append(helper.make_node("Greater", [f"{labels}_nhw", f"{labels}_threshold"], [f"{labels}_mask"], name="head_greater"))
    graph.node.append(helper.make_node("Cast", [f"{labels}_mask"], [labels], name="head_cast", to=TensorProto.UINT8))


def _check_free(graph: onnx.GraphProto, name: str) -> None:
    taken = {value.name for value in graph.input} | {value.name for value in graph.output} \
        | {tensor.name for tensor in graph.initializer} | {out for node in graph.node for out in node.output}
    if name in taken or f"{name}_int64" in taken:
        raise BadInputError(f"the model already has a tensor named {name!r}; the {name} head cannot be appended")
