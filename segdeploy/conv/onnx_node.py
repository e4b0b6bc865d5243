"""The depthwise convolution and the separable block as ONNX nodes (domain ``ai.onnx.contrib``, version 1).

* ``DepthwiseConv``: inputs ``X`` (N, C, H, W), ``W`` (C, 1, kh, kw), optional ``B`` (C); output ``Y``.
  Attributes ``kernel_shape``, ``strides``, ``dilations`` (2 ints each), ``pads`` (4 ints: top, left,
  bottom, right), ``activation`` (``none`` | ``clip`` | ``hardswish``), ``activation_lower`` and
  ``activation_upper`` (floats; a ReLU's upper bound is FLT_MAX, never inf).
* ``SeparableConv``: inputs ``X``, ``W``, ``B`` (may be ""), ``PW`` (C_out, C, 1, 1), ``PB`` (may be "");
  the DepthwiseConv attributes plus ``pointwise_activation``, ``pointwise_activation_lower`` and
  ``pointwise_activation_upper``. CPU (ONNX Runtime) only.

ONNX Runtime runs both as onnxruntime-extensions Python ops calling :mod:`segdeploy.conv.kernel`
(:mod:`segdeploy.backend.onnxrt.python_ops`): float32 only (a float16 graph feeds the node through
Casts), every input present, and scalar attributes only, so sessions run the copy
:func:`for_onnx_runtime` makes (the geometry folded into one string attribute, absent biases as
zeros). TensorRT runs ``DepthwiseConv`` as segdeploy's IPluginV3 by the same name and attributes.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .kernel import FLT_MAX, Activation, ConvGeometry

DOMAIN = "ai.onnx.contrib"
VERSION = 1
DEPTHWISE_OP_TYPE = "DepthwiseConv"
SEPARABLE_OP_TYPE = "SeparableConv"
OP_TYPES = (DEPTHWISE_OP_TYPE, SEPARABLE_OP_TYPE)
#: The attribute ONNX Runtime's copy of a node carries its geometry in (its Python ops take scalars only).
ORT_GEOMETRY = "geometry"


def _activation_attributes(activation: Activation, prefix: str) -> dict:
    return {prefix: activation.kind, f"{prefix}_lower": float(max(activation.lower, -FLT_MAX)),
            f"{prefix}_upper": float(min(activation.upper, FLT_MAX))}


def _geometry_attributes(geometry: ConvGeometry) -> dict:
    return {"kernel_shape": list(geometry.kernel), "strides": list(geometry.strides),
            "dilations": list(geometry.dilations), "pads": list(geometry.pads)}


def make_depthwise_node(x: str, weight: str, bias: str, y: str, *, geometry: ConvGeometry,
                        activation: Activation = Activation(), name: str = "depthwise_conv") -> onnx.NodeProto:
    """A ``DepthwiseConv`` node (``bias`` "" for none)."""
    inputs = [x, weight] + ([bias] if bias else [])
    return helper.make_node(DEPTHWISE_OP_TYPE, inputs, [y], name=name, domain=DOMAIN, **_geometry_attributes(geometry),
                            **_activation_attributes(activation, "activation"))


def make_separable_node(x: str, weight: str, bias: str, pointwise_weight: str, pointwise_bias: str, y: str, *,
                        geometry: ConvGeometry, activation: Activation = Activation(),
                        pointwise_activation: Activation = Activation(), name: str = "separable_conv") -> onnx.NodeProto:
    """A ``SeparableConv`` node (``bias``/``pointwise_bias`` "" for none)."""
    return helper.make_node(SEPARABLE_OP_TYPE, [x, weight, bias, pointwise_weight, pointwise_bias], [y], name=name,
                            domain=DOMAIN, **_geometry_attributes(geometry), **_activation_attributes(activation, "activation"),
                            **_activation_attributes(pointwise_activation, "pointwise_activation"))


def add_opset(model: onnx.ModelProto) -> None:
    """Declare the nodes' domain in ``model`` (once)."""
    if not any(opset.domain == DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))


def node_geometry(node: onnx.NodeProto) -> ConvGeometry:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return ConvGeometry(tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", (1, 1))),
                        tuple(attrs.get("dilations", (1, 1))), tuple(attrs.get("pads", (0, 0, 0, 0))))


def node_activation(node: onnx.NodeProto, prefix: str = "activation") -> Activation:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kind = attrs.get(prefix, b"none")
    return Activation(kind.decode() if isinstance(kind, bytes) else kind, float(attrs.get(f"{prefix}_lower", 0.0)),
                      float(attrs.get(f"{prefix}_upper", FLT_MAX)))


def _encode_geometry(geometry: ConvGeometry) -> str:
    return ",".join(map(str, (*geometry.kernel, *geometry.strides, *geometry.dilations, *geometry.pads)))


def _decode_geometry(text: str) -> ConvGeometry:
    v = tuple(int(x) for x in text.split(","))
    return ConvGeometry(v[0:2], v[2:4], v[4:6], v[6:10])


_ACTIVATION_ATTRS = {"activation": str, "activation_lower": float, "activation_upper": float}
_POINTWISE_ATTRS = {"pointwise_activation": str, "pointwise_activation_lower": float,
                    "pointwise_activation_upper": float}


def _activation_of(attrs: dict, prefix: str) -> Activation:
    return Activation(attrs[prefix], attrs[f"{prefix}_lower"], attrs[f"{prefix}_upper"])


@functools.cache
def define_ort_ops() -> str:
    """Declare both nodes' Python ops once per process; returns the library path."""
    from ..backend.onnxrt.python_ops import define_python_op
    from .kernel import depthwise_conv, separable_conv

    def depthwise(x, weight, bias, **attrs):
        return depthwise_conv(x, weight, bias, geometry=_decode_geometry(attrs[ORT_GEOMETRY]),
                              activation=_activation_of(attrs, "activation"))

    def separable(x, weight, bias, pointwise_weight, pointwise_bias, **attrs):
        return separable_conv(x, weight, bias, pointwise_weight, pointwise_bias,
                              geometry=_decode_geometry(attrs[ORT_GEOMETRY]),
                              activation=_activation_of(attrs, "activation"),
                              pointwise_activation=_activation_of(attrs, "pointwise_activation"))

    f32 = np.float32
    define_python_op(DEPTHWISE_OP_TYPE, depthwise, inputs=(f32,) * 3, outputs=(f32,),
                     attributes={ORT_GEOMETRY: str, **_ACTIVATION_ATTRS})
    return define_python_op(SEPARABLE_OP_TYPE, separable, inputs=(f32,) * 5, outputs=(f32,),
                            attributes={ORT_GEOMETRY: str, **_ACTIVATION_ATTRS, **_POINTWISE_ATTRS})


def uses_conv_nodes(model: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN and node.op_type in OP_TYPES for node in model.graph.node)


def for_onnx_runtime(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose conv nodes ONNX Runtime's Python ops can run: the geometry as one
    string attribute, absent biases as zero initializers. None when it has no such node."""
    if not uses_conv_nodes(model):
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name: init for init in copy.graph.initializer}
    for node in copy.graph.node:
        if node.domain != DOMAIN or node.op_type not in OP_TYPES:
            continue
        node.attribute.append(helper.make_attribute(ORT_GEOMETRY, _encode_geometry(node_geometry(node))))
        wanted = 3 if node.op_type == DEPTHWISE_OP_TYPE else 5
        inputs = list(node.input) + [""] * (wanted - len(node.input))
        for slot, of in ((2, 1), (4, 3)):
            if slot < wanted and not inputs[slot]:
                channels = _dims(copy, initializers, inputs[of])[0]
                zero = numpy_helper.from_array(np.zeros(channels, np.float32), f"{node.name}_zero_bias_{slot}")
                copy.graph.initializer.append(zero)
                inputs[slot] = zero.name
        del node.input[:]
        node.input.extend(inputs)
    return copy


def _dims(model: onnx.ModelProto, initializers: dict, name: str) -> list[int]:
    if name in initializers:
        return list(initializers[name].dims)
    raise ValueError(f"{name}: a conv node's weight must be an initializer")
