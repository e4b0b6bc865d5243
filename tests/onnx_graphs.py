"""Small ONNX graphs built by hand (no torch), shared by the lint and TensorRT tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def image_input(name="images", dims=("batch", 3, "height", "width"), dtype=F):
    return helper.make_tensor_value_info(name, dtype, list(dims))


def conv_weights(name="w", out=4, cin=3, seed=0):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.normal(0, 0.3, (out, cin, 3, 3)).astype(np.float32), name)


def seg_graph(classes=4, opset=17, dims=("batch", 3, "height", "width")) -> onnx.ModelProto:
    """images -> Conv(3x3) -> Relu -> logits (N, classes, H, W): a valid segmentation graph."""
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["logits"], name="relu1"),
    ]
    bias = numpy_helper.from_array(np.linspace(-0.5, 0.5, classes).astype(np.float32), "b")
    out_dims = [dims[0], classes, dims[2], dims[3]]
    return make_model(nodes, [image_input(dims=dims)], [helper.make_tensor_value_info("logits", F, out_dims)],
                      [conv_weights(out=classes), bias], opset=opset)


def qdq_graph(zero_point=0, bias_int32=False, per_channel=True) -> onnx.ModelProto:
    """seg_graph in TensorRT's explicit quantization (Q/DQ on the input and the weights, float bias),
    or with one of its rules broken."""
    w = numpy_helper.to_array(conv_weights(out=4))
    w_scale = (np.abs(w).reshape(4, -1).max(axis=1) / 127).astype(np.float32)
    if not per_channel:
        w_scale = np.array(np.abs(w).max() / 127, dtype=np.float32)
    scale_b = w_scale if per_channel else np.full(4, w_scale, np.float32)
    w_q = np.clip(np.round(w / scale_b[:, None, None, None]), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.025, np.float32), "x_scale"),  # normalised pixels lie within +-3.2
        numpy_helper.from_array(np.array(zero_point, np.int8), "x_zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zp"], ["x_q"], name="quant_in"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dequant_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dequant_w",
                         **({"axis": 0} if per_channel else {})),
    ]
    bias = np.linspace(-0.5, 0.5, 4).astype(np.float32)  # seg_graph's
    if bias_int32:
        b_scale = (0.025 * w_scale * np.ones(4)).astype(np.float32)
        inits += [numpy_helper.from_array(np.round(bias / b_scale).astype(np.int32), "b_q"),
                  numpy_helper.from_array(b_scale, "b_scale"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="dequant_bias", axis=0))
    else:
        inits.append(numpy_helper.from_array(bias, "b"))
    nodes += [
        helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["c"], name="conv_q", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["logits"], name="relu1"),
    ]
    return make_model(nodes, [image_input()], [helper.make_tensor_value_info("logits", F, ["batch", 4, "height", "width"])],
                      inits, opset=17)


def with_node(model: onnx.ModelProto, node, output=None, output_type=F, opset=None, domain_opset=None) -> onnx.ModelProto:
    """``model`` with ``node`` appended after ``logits`` and its output as the graph's output."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.node.append(node)
    del copy.graph.output[:]
    copy.graph.output.append(helper.make_tensor_value_info(output or node.output[0], output_type, None))
    if opset:
        copy.opset_import[0].version = opset
    if domain_opset:
        copy.opset_import.append(helper.make_opsetid(*domain_opset))
    return copy
