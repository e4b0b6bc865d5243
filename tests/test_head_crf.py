"""The dense CRF with each deployment head: probabilities read as such, labels refused (nothing to
refine), and `export --crf --head labels` whose graph hands back the CRF's own labels as uint8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto, helper

from segdeploy.crf import append_crf_node, dense_crf, register_crf_ort
from segdeploy.crf.refine import unary_kind_for
from segdeploy.errors import BadInputError
from segdeploy.head.graph import append_head
from segdeploy.outputs import Head

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

NEEDS_SCORES = "the CRF needs scores; use --head logits or probabilities"


def tiny_network(classes: int) -> onnx.ModelProto:
    """logits = 1x1 convolution of the image: a stand-in for a segmentation network."""
    weights = np.random.default_rng(0).normal(0, 2, (classes, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def scene(height=32, width=40):
    rng = np.random.default_rng(1)
    image = np.zeros((1, height, width, 3), np.uint8)
    image[:, :, : width // 2] = (200, 40, 40)
    image[:, height // 3 :, width // 2 :] = (40, 180, 220)
    image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    return image, image.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def run(model: onnx.ModelProto, feed: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), register_crf_ort(ort.SessionOptions()),
                                   providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def test_unary_kind_follows_the_head_and_labels_are_refused():
    assert unary_kind_for(Head()) == "logits"
    assert unary_kind_for(Head("multiclass", "softmax")) == "probabilities"
    with pytest.raises(BadInputError, match=NEEDS_SCORES):
        unary_kind_for(Head(form="labels"))


def test_crf_node_after_a_probabilities_head_reads_probabilities():
    model = tiny_network(4)
    with_head, head = append_head(model, "probabilities", prediction="logits", head=Head(), classes=4)
    with_crf = append_crf_node(with_head, logits_name="probabilities", unary_kind=unary_kind_for(head),
                               probabilities_name="crf_probabilities", labels_name="crf_labels", iterations=3,
                               keep_logits=True)  # fmt: skip
    image, x = scene()
    out = run(with_crf, {"x": x, "image": image})
    expected_probabilities, expected_labels = dense_crf(out["probabilities"], image, iterations=3, unary_kind="probabilities")
    np.testing.assert_array_equal(out["crf_probabilities"], expected_probabilities)
    np.testing.assert_array_equal(out["crf_labels"], expected_labels)
    # Read as probabilities, they refine exactly as the logits they came from.
    from_logits = dense_crf(run(model, {"x": x})["logits"], image, iterations=3, output="labels")
    assert (from_logits == out["crf_labels"]).mean() >= 0.999


@pytest.mark.parametrize("classes, dtype", [(4, np.uint8), (300, np.int32)])
def test_labels_only_crf_node_outputs_its_labels_in_a_labels_heads_dtype(classes, dtype):
    with_crf = append_crf_node(tiny_network(classes), labels_only=True, iterations=3)
    onnx.checker.check_model(with_crf)
    assert [o.name for o in with_crf.graph.output] == ["labels"]
    image, x = scene()
    out = run(with_crf, {"x": x, "image": image})
    assert out["labels"].dtype == dtype and out["labels"].shape == (1, 32, 40)
    logits = run(tiny_network(classes), {"x": x})["logits"]
    np.testing.assert_array_equal(out["labels"], dense_crf(logits, image, iterations=3, output="labels"))
    assert any(n.op_type == "Cast" for n in with_crf.graph.node if "labels" in n.output) == (dtype == np.uint8)


def test_crf_cli_refuses_a_label_map_and_flags_probabilities(tmp_path):
    from PIL import Image

    image, x = scene()
    Image.fromarray(image[0]).save(tmp_path / "frame.png")
    logits = run(tiny_network(4), {"x": x})["logits"]
    np.save(tmp_path / "labels.npy", logits.argmax(1).astype(np.uint8))
    proc = run_cli("crf", "--logits", tmp_path / "labels.npy", "--image", tmp_path / "frame.png", "--out", tmp_path / "m.png")
    assert_clean_error(proc, 2, NEEDS_SCORES, "labels.npy", "uint8")
    assert not (tmp_path / "m.png").exists()

    exp = np.exp(logits - logits.max(1, keepdims=True))
    np.save(tmp_path / "probabilities.npy", (exp / exp.sum(1, keepdims=True)).astype(np.float32))
    args = ["crf", "--logits", tmp_path / "probabilities.npy", "--image", tmp_path / "frame.png", "--out", tmp_path / "p.png"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "give --unary-kind probabilities" in proc.stderr
    proc = run_cli(*args, "--unary-kind", "probabilities", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and json.loads(proc.stdout)["classes"] == 4


@pytest.mark.slow
def test_export_crf_with_labels_head_outputs_the_crfs_uint8_labels(tmp_path):
    from segdeploy.backend.onnxrt.runner import OnnxrtRunner
    from segdeploy.manifest import resolve_artifact
    from segdeploy.parity import sample_feed

    out = tmp_path / "crf_labels"
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "64", "64",
                   "--crf", "--crf-param", "iterations=5", "--head", "labels", "-o", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    onnx_path, manifest = resolve_artifact(out)
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["images", "image"] and [o.name for o in graph.output] == ["labels"]
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    output = manifest["output"]
    assert (output["name"], output["dtype"], output["layout"], output["head"]) == ("labels", "uint8", "NHW", "labels")
    assert manifest["crf"]["parity"]["passed"] and manifest["crf"]["labels"] == {"dtype": "uint8", "agreement": 1.0}
    # The graph's labels are the CRF's: the same graph with the logits kept, refined by the kernel.
    feed = sample_feed((1, 3, 64, 64), manifest, seed=3)
    with OnnxrtRunner.from_artifact(onnx_path, manifest) as runner:
        labels = runner.infer(feed)["labels"]
    model = onnx.load(str(onnx_path))
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    logits = run(model, feed)["logits"]
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, dense_crf(logits, feed["image"], iterations=5, output="labels"))
    # The torch backend (bench's reference) hands back what the graph does: the CRF's labels alone.
    from segdeploy.backend.torch.runner import TorchRunner

    with TorchRunner.from_artifact(onnx_path, manifest) as runner:
        torch_out = runner.infer(feed)
    assert list(torch_out) == ["labels"] and torch_out["labels"].dtype == np.uint8
    assert (torch_out["labels"] == labels).mean() >= 0.999

    refused = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "64", "64",
                      "--crf", "--head", "labels", "--fused", "-o", tmp_path / "fused")  # fmt: skip
    assert_clean_error(refused, 2, "--crf with --fused")
