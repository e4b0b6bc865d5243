"""The dense CRF as an ONNX node after a segmentation network's logits.

:func:`append_crf_node` adds a uint8 ``image`` input and a ``DenseCRF`` node (domain
``ai.onnx.contrib``) that turns the logits into refined probabilities and int32 labels. The node
takes the image as float32 (values 0..255) from a ``Cast`` of that input: TensorRT lets no layer
but a cast read uint8 tensors (``DataType::kUINT8``), plugins included. Two runtimes execute that
node with the kernels of :mod:`segdeploy.crf` (Krähenbühl & Koltun 2011):

* ONNX Runtime, on the CPU: :func:`register_crf_ort` registers the op with a
  ``SessionOptions``. It is an onnxruntime-extensions Python op that calls the C kernel
  (ONNX Runtime's C API headers ship in no PyPI or Debian package, so a native custom-op
  library cannot be built from the registries this project installs from).
* TensorRT: the ONNX parser maps the node, by its op type, to the ``DenseCRF`` IPluginV3 plugin
  of ``kernels/trt_plugin`` (built from the same CUDA code when TensorRT headers are found),
  which reads the same attributes and turns the float image back into uint8 on the GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import BadInputError
from ..onnx_io import tensor_dims
from ._binding import UNARY_KINDS
from .params import CRFParams
from .refine import dense_crf

CRF_DOMAIN = "ai.onnx.contrib"
CRF_OP_TYPE = "DenseCRF"
_FLOAT_ATTRIBUTES = ("spatial_weight", "spatial_theta", "bilateral_weight", "bilateral_theta_xy", "bilateral_theta_rgb")


def append_crf_node(model: onnx.ModelProto, *, logits_name: str = "logits", image_name: str = "image",
                    image_layout: str = "hwc", unary_kind: str = "logits", probabilities_name: str = "probabilities",
                    labels_name: str = "labels", keep_logits: bool = False, labels_only: bool = False,
                    **crf_params) -> onnx.ModelProto:
    """Return a copy of ``model`` whose ``logits_name`` output feeds a DenseCRF node.

    The new input ``image_name`` is uint8 RGB, (N, H, W, 3) for ``image_layout="hwc"`` or
    (N, 3, H, W) for ``"chw"``, with N, H, W taken from the logits (N, C, H, W); a ``Cast``
    node hands it to the DenseCRF node as float32 (``<image_name>_float32``). The outputs
    become ``probabilities_name`` (float32, like the logits) and ``labels_name`` (int32,
    (N, H, W)); ``keep_logits`` keeps the logits output too. ``labels_only`` (a ``labels`` deployment
    head) makes the CRF's labels the only new output, as a labels head's dtype (uint8 for up to 255
    classes, through a ``Cast`` of the node's int32 labels; int32 otherwise): the probabilities stay
    inside the graph, never copied off the device. ``crf_params`` are
    :class:`~segdeploy.crf.CRFParams` fields (DeepLab v2's by default); ``unary_kind`` says what
    the logits output holds (see :mod:`segdeploy.crf`).
    """
    params = dataclasses.replace(CRFParams(), **crf_params)
    params.to_c()  # validates the normalisation and the iteration count
    if image_layout not in ("hwc", "chw"):
        raise BadInputError(f"image_layout must be 'hwc' or 'chw', got {image_layout!r}")
    if unary_kind not in UNARY_KINDS:
        raise BadInputError(f"unary_kind must be one of {sorted(UNARY_KINDS)}, got {unary_kind!r}")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    outputs = {output.name: output for output in graph.output}
    if logits_name not in outputs:
        raise BadInputError(f"the model has no output named {logits_name!r}; its outputs are {sorted(outputs)}")
    logits = outputs[logits_name]
    dims = tensor_dims(logits)
    if len(dims) != 4:
        raise BadInputError(f"output {logits_name!r} must be (N, C, H, W), its shape is {dims}")
    batch, classes, height, width = dims
    labels_dtype = TensorProto.INT32
    if labels_only and isinstance(classes, int):
        from ..head.graph import label_dtype

        labels_dtype = label_dtype(classes)
    taken = {value.name for value in graph.input} | set(outputs) | {name for node in graph.node for name in node.output}
    image_float = f"{image_name}_float32"
    crf_labels = labels_name if labels_dtype == TensorProto.INT32 else f"{labels_name}_int32"
    for name in dict.fromkeys((image_name, image_float, probabilities_name, labels_name, crf_labels)):
        if name in taken:
            raise BadInputError(f"the model already has a tensor named {name!r}; pick another name")

    crf_input = logits_name
    if logits.type.tensor_type.elem_type == TensorProto.FLOAT16:
        crf_input = f"{logits_name}_float32"
        graph.node.append(helper.make_node("Cast", [logits_name], [crf_input], to=TensorProto.FLOAT,
                                           name=f"{logits_name}_to_float32"))
    elif logits.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise BadInputError(f"output {logits_name!r} must be float32 or float16")

    image_shape = [batch, height, width, 3] if image_layout == "hwc" else [batch, 3, height, width]
    graph.input.append(helper.make_tensor_value_info(image_name, TensorProto.UINT8, image_shape))
    # TensorRT takes uint8 tensors into casts only (DataType::kUINT8), so the plugin gets float32.
    graph.node.append(helper.make_node("Cast", [image_name], [image_float], to=TensorProto.FLOAT,
                                       name=f"{image_name}_to_float32"))
    attributes = {name: float(getattr(params, name)) for name in _FLOAT_ATTRIBUTES}
    graph.node.append(helper.make_node(
        CRF_OP_TYPE, [crf_input, image_float], [probabilities_name, crf_labels], name="dense_crf", domain=CRF_DOMAIN,
        iterations=int(params.iterations), normalization=params.normalization, unary_kind=unary_kind, **attributes,
    ))
    if not keep_logits:
        graph.output.remove(logits)
    if crf_labels != labels_name:
        graph.node.append(helper.make_node("Cast", [crf_labels], [labels_name], to=labels_dtype, name="dense_crf_labels_cast"))
    if not labels_only:
        graph.output.append(helper.make_tensor_value_info(probabilities_name, TensorProto.FLOAT,
                                                          [batch, classes, height, width]))
    graph.output.append(helper.make_tensor_value_info(labels_name, labels_dtype, [batch, height, width]))
    if not any(opset.domain == CRF_DOMAIN for opset in result.opset_import):
        result.opset_import.append(helper.make_opsetid(CRF_DOMAIN, 1))
    return result


@functools.cache
def define_crf_ort_op() -> str:
    """Declares the DenseCRF Python op once per process; returns the extensions library path."""
    from ..backend.onnxrt.python_ops import define_python_op

    def dense_crf_op(logits, image, **attrs):
        params = CRFParams(**{name: attrs[name] for name in (*_FLOAT_ATTRIBUTES, "iterations", "normalization")})
        return dense_crf(logits, _image_uint8(image), params, unary_kind=attrs["unary_kind"])

    attributes = dict.fromkeys(_FLOAT_ATTRIBUTES, float) | {"iterations": int, "normalization": str, "unary_kind": str}
    return define_python_op(CRF_OP_TYPE, dense_crf_op, inputs=(np.float32, np.float32), outputs=(np.float32, np.int32),
                            attributes=attributes)


def _image_uint8(image: np.ndarray) -> np.ndarray:
    """The node's float32 image (a uint8 image cast, so whole numbers 0..255) as the kernel's uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def register_crf_ort(session_options):
    """Let sessions made with ``session_options`` run the DenseCRF node (on the CPU); returns it."""
    session_options.register_custom_ops_library(define_crf_ort_op())
    return session_options
