"""The fused upsample + argmax as an ONNX node: ``UpsampleArgmax`` (domain ``ai.onnx.contrib``, version 1).

Inputs ``scores`` (N, C, h, w) and ``reference`` (any tensor whose last two dims are the output's
H, W; the rewrite passes the graph's image input, whose data the op never reads); output ``labels``
(N, H, W), the argmax over C of the scores bilinearly resized to (H, W) as ONNX ``Resize(linear)``
would, in ``labels_dtype`` (uint8 or int32). Attributes: ``coordinate_transformation_mode``
(half_pixel | pytorch_half_pixel | align_corners | asymmetric), ``scale_height`` and ``scale_width``
(the Resize's scales; 0: out / in, as for a Resize given sizes), ``labels_dtype``. Two runtimes run it
with :mod:`segdeploy.head.kernel`'s kernels:

* ONNX Runtime, on the CPU: an onnxruntime-extensions Python op calling the C kernel
  (:mod:`segdeploy.backend.onnxrt.python_ops`). That route takes no float16 tensors, so the rewrite
  feeds the node float32 scores (a Cast of the low-resolution scores: exact, and 16-64 times smaller
  than the full-resolution tensor it replaces), and has one output dtype per op type, so sessions run
  int32 nodes as the op ``UpsampleArgmaxInt32`` (:func:`for_onnx_runtime`).
* TensorRT: the ``UpsampleArgmax`` IPluginV3 of segdeploy's plugin library, by the same name,
  version and attributes.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import BadInputError

DOMAIN = "ai.onnx.contrib"
OP_TYPE = "UpsampleArgmax"
VERSION = 1
#: The coordinate conventions the kernels implement (ONNX Resize's names).
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
LABEL_DTYPES = {"uint8": TensorProto.UINT8, "int32": TensorProto.INT32}
#: The Python op ONNX Runtime runs an int32 node as (onnxruntime-extensions: one output dtype per op type).
ORT_INT32_OP_TYPE = "UpsampleArgmaxInt32"


def make_upsample_argmax_node(scores: str, reference: str, labels: str, *, coordinate_transformation_mode: str,
                              scale_height: float = 0.0, scale_width: float = 0.0, labels_dtype: str = "uint8",
                              name: str = "upsample_argmax") -> onnx.NodeProto:
    """The node; BadInputError for a coordinate mode or labels dtype the kernels do not implement."""
    if coordinate_transformation_mode not in COORDINATE_MODES:
        raise BadInputError(f"coordinate_transformation_mode {coordinate_transformation_mode!r}: the fused upsample + "
                            f"argmax implements {', '.join(COORDINATE_MODES)}")
    if labels_dtype not in LABEL_DTYPES:
        raise BadInputError(f"labels_dtype {labels_dtype!r}: expected one of {', '.join(LABEL_DTYPES)}")
    return helper.make_node(OP_TYPE, [scores, reference], [labels], name=name, domain=DOMAIN,
                            coordinate_transformation_mode=coordinate_transformation_mode,
                            scale_height=float(scale_height), scale_width=float(scale_width), labels_dtype=labels_dtype)


def add_opset(model: onnx.ModelProto) -> None:
    """Declare the node's domain in ``model`` (once)."""
    if not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))


def _run(scores: np.ndarray, reference: np.ndarray, labels_dtype: str, **attrs) -> np.ndarray:
    from .kernel import upsample_argmax

    scales = (attrs["scale_height"], attrs["scale_width"])
    return upsample_argmax(scores, reference.shape[-2:], coordinates=attrs["coordinate_transformation_mode"],
                           scales=None if scales == (0.0, 0.0) else scales, labels_dtype=labels_dtype)


@functools.cache
def define_ort_ops() -> str:
    """Declare the node's Python ops (uint8 and int32 labels) once per process; returns the library path."""
    from ..backend.onnxrt.python_ops import define_python_op

    attributes = {"coordinate_transformation_mode": str, "scale_height": float, "scale_width": float, "labels_dtype": str}
    for op_type, dtype in ((OP_TYPE, np.uint8), (ORT_INT32_OP_TYPE, np.int32)):
        def body(scores, reference, dtype=dtype, **attrs):
            attrs.pop("labels_dtype", None)
            return _run(scores, reference, np.dtype(dtype).name, **attrs)

        library = define_python_op(op_type, body, inputs=(np.float32, np.float32), outputs=(dtype,), attributes=attributes)
    return library


def for_onnx_runtime(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose int32 ``UpsampleArgmax`` nodes are the Python op ONNX Runtime runs
    them as; None when it has none (the model runs as it is)."""
    nodes = [i for i, node in enumerate(model.graph.node) if (node.domain, node.op_type) == (DOMAIN, OP_TYPE)
             and _labels_dtype(node) == "int32"]
    if not nodes:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i in nodes:
        copy.graph.node[i].op_type = ORT_INT32_OP_TYPE
    return copy


def _labels_dtype(node: onnx.NodeProto) -> str:
    for attribute in node.attribute:
        if attribute.name == "labels_dtype":
            return attribute.s.decode()
    return "uint8"


def register_upsample_argmax_ort(session_options):
    """Let sessions made with ``session_options`` run the UpsampleArgmax node (on the CPU); returns it.
    Int32 nodes run after :func:`for_onnx_runtime`."""
    session_options.register_custom_ops_library(define_ort_ops())
    return session_options
