"""The DenseCRF ONNX node: appended after a hand-built network and run by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from segdeploy.crf import CRF_DOMAIN, append_crf_node, dense_crf, register_crf_ort
from segdeploy.errors import BadInputError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

CLASSES = 4


def tiny_network(dtype=TensorProto.FLOAT) -> tuple[onnx.ModelProto, np.ndarray]:
    """logits = 1x1 convolution of the normalised image: a stand-in for a segmentation network."""
    weights = np.random.default_rng(0).normal(0, 2, (CLASSES, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["scores"])]
    nodes.append(helper.make_node("Cast", ["scores"], ["logits"], to=dtype) if dtype != TensorProto.FLOAT
                 else helper.make_node("Identity", ["scores"], ["logits"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", dtype, ["N", CLASSES, "H", "W"])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def scene(batch=2, height=40, width=56):
    rng = np.random.default_rng(1)
    image = np.zeros((batch, height, width, 3), np.uint8)
    image[:, :, : width // 2] = (200, 40, 40)
    image[:, height // 3 :, width // 2 :] = (40, 180, 220)
    image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    return image, image.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def session(model: onnx.ModelProto):
    options = register_crf_ort(ort.SessionOptions())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_onnx_runtime_runs_the_crf_node_like_dense_crf(dtype):
    model, weights = tiny_network(dtype)
    with_crf = append_crf_node(model, iterations=5, bilateral_theta_xy=20.0, bilateral_theta_rgb=10.0, keep_logits=True)
    onnx.checker.check_model(with_crf)
    assert [o.name for o in with_crf.graph.output] == ["logits", "probabilities", "labels"]
    assert any(opset.domain == CRF_DOMAIN for opset in with_crf.opset_import)
    image, x = scene()
    logits, probabilities, labels = session(with_crf).run(None, {"x": x, "image": image})
    expected_probabilities, expected_labels = dense_crf(logits.astype(np.float32), image, iterations=5,
                                                        bilateral_theta_xy=20.0, bilateral_theta_rgb=10.0)
    np.testing.assert_array_equal(probabilities, expected_probabilities)
    np.testing.assert_array_equal(labels, expected_labels)
    assert labels.dtype == np.int32 and labels.shape == (2, 40, 56)
    assert (labels != logits.argmax(1)).mean() > 0.01  # the CRF did something


def test_crf_node_takes_planar_images():
    model, _ = tiny_network()
    with_crf = append_crf_node(model, image_layout="chw", iterations=3)
    image, x = scene(batch=1)
    probabilities, labels = session(with_crf).run(None, {"x": x, "image": image.transpose(0, 3, 1, 2).copy()})
    logits = np.einsum("nchw,kc->nkhw", x, tiny_network()[1][:, :, 0, 0])
    np.testing.assert_allclose(probabilities, dense_crf(logits.astype(np.float32), image, iterations=3,
                                                        output="probabilities"), atol=1e-5)


def test_the_onnx_runtime_op_takes_the_image_as_float32():
    """The node reads the Cast of the uint8 input (TensorRT lets only casts read uint8); its op
    turns any float image back into uint8 as the kernel takes it, rounded and clamped."""
    model, _ = tiny_network()
    with_crf = append_crf_node(model, iterations=3, keep_logits=True)
    graph = with_crf.graph
    cast = next(node for node in graph.node if node.op_type == "Cast" and list(node.input) == ["image"])
    assert [node.input[1] for node in graph.node if node.op_type == "DenseCRF"] == [cast.output[0]]
    graph.node.remove(cast)  # feed the node a float image of our own
    graph.input.remove(next(value for value in graph.input if value.name == "image"))
    graph.input.append(helper.make_tensor_value_info(cast.output[0], TensorProto.FLOAT, ["N", "H", "W", 3]))
    image, x = scene(batch=1)
    noisy = image + np.random.default_rng(2).uniform(-0.45, 0.45, image.shape).astype(np.float32)
    noisy[0, 0, :3] = [[-7.0, 300.0, 254.6], [0.4, 255.4, 1e9], [-0.6, 127.5, 128.5]]
    logits, probabilities, labels = session(with_crf).run(None, {"x": x, cast.output[0]: noisy})
    as_uint8 = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    expected_probabilities, expected_labels = dense_crf(logits, as_uint8, iterations=3)
    np.testing.assert_array_equal(probabilities, expected_probabilities)
    np.testing.assert_array_equal(labels, expected_labels)


def test_append_crf_node_rejects_what_it_cannot_wire():
    model, _ = tiny_network()
    with pytest.raises(BadInputError, match="no output named 'scores_out'"):
        append_crf_node(model, logits_name="scores_out")
    with pytest.raises(BadInputError, match="already has a tensor named 'x'"):
        append_crf_node(model, image_name="x")
    with pytest.raises(BadInputError, match="normalization"):
        append_crf_node(model, normalization="sideways")
    with pytest.raises(TypeError):
        append_crf_node(model, iteration=3)  # a misspelt parameter is not silently ignored


def test_other_python_ops_still_run_beside_the_crf_node():
    """The CRF op hands its outputs back as arrays; ops of other code keep the library's own path."""
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    @onnx_op(op_type="SegdeployTestNegate", inputs=[PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float])
    def negate(x):
        return -x

    model, _ = tiny_network()
    with_crf = append_crf_node(model, iterations=2, keep_logits=True)
    graph = with_crf.graph
    graph.node.append(helper.make_node("SegdeployTestNegate", ["logits"], ["negated"], domain=CRF_DOMAIN))
    graph.output.append(helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["N", CLASSES, "H", "W"]))
    image, x = scene(batch=1)
    logits, probabilities, labels, negated = session(with_crf).run(None, {"x": x, "image": image})
    np.testing.assert_array_equal(negated, -logits)
    np.testing.assert_array_equal(labels, dense_crf(logits, image, iterations=2, output="labels"))
