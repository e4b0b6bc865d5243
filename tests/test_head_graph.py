"""Deployment heads appended to a scores graph, run by ONNX Runtime against the host's own reading."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx_graphs import seg_graph

from segdeploy.errors import BadInputError
from segdeploy.head.graph import append_head, label_dtype
from segdeploy.outputs import Head


def run(model: onnx.ModelProto, images: np.ndarray) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 3, 17, 23)).astype(np.float32)


@pytest.mark.parametrize("classes", [4, 300])
def test_labels_head_gives_the_hosts_argmax_in_the_smallest_dtype_every_target_takes(classes, images):
    scores_model = seg_graph(classes=classes)
    logits = run(scores_model, images)["logits"]
    model, head = append_head(scores_model, "labels", prediction="logits", head=Head(), classes=classes)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["labels"]
    assert model.graph.output[0].type.tensor_type.elem_type == label_dtype(classes)
    labels = run(model, images)["labels"]
    assert labels.dtype == (np.uint8 if classes <= 255 else np.int32) and labels.shape == (2, 17, 23)
    np.testing.assert_array_equal(labels, Head().labels(logits))
    assert head.name == "labels" and head.form == "labels" and np.array_equal(head.labels(labels), labels)
    with pytest.raises(BadInputError, match="labels only"):
        head.probabilities(labels)


@pytest.mark.parametrize("opset", [11, 17])  # before 13, ONNX's Softmax normalises over C x H x W
def test_probabilities_head_is_the_softmax_the_host_would_compute(opset, images):
    scores_model = seg_graph(classes=5, opset=opset)
    logits = run(scores_model, images)["logits"]
    model, head = append_head(scores_model, "probabilities", prediction="logits", head=Head(), classes=5)
    probabilities = run(model, images)["probabilities"]
    np.testing.assert_allclose(probabilities, Head().probabilities(logits), rtol=1e-5, atol=1e-6)
    assert head.name == "probabilities" and head.activation == "softmax"
    np.testing.assert_array_equal(head.labels(probabilities), Head().labels(logits))


@pytest.mark.parametrize("head_name", ["labels", "probabilities"])
def test_binary_heads_keep_the_threshold_meaning(head_name, images):
    scores_model = seg_graph(classes=1)
    logits = run(scores_model, images)["logits"]
    binary = Head.detect(1)  # a raw logit, foreground above 0
    model, head = append_head(scores_model, head_name, prediction="logits", head=binary, classes=2)
    out = run(model, images)[head_name]
    np.testing.assert_array_equal(head.labels(out), binary.labels(logits))
    if head_name == "probabilities":
        assert head.threshold == pytest.approx(0.5) and head.activation == "sigmoid"
    else:
        assert out.dtype == np.uint8 and out.shape == (2, 17, 23)


def test_the_manifest_round_trips_each_head():
    for head in (Head(), Head("multiclass", "softmax"), Head(form="labels", fused=True), Head("binary", "sigmoid", 0.5, "labels")):
        recorded = head.to_manifest()
        assert recorded["head"] == head.name
        assert Head.from_manifest({"output": recorded}) == head


def test_heads_that_cannot_be_appended_are_refused():
    model = seg_graph(classes=3)
    with pytest.raises(BadInputError, match="no output named 'scores'"):
        append_head(model, "labels", prediction="scores", head=Head(), classes=3)
    with pytest.raises(BadInputError, match="expected one of"):
        append_head(model, "argmax", prediction="logits", head=Head(), classes=3)
    labelled, head = append_head(model, "labels", prediction="logits", head=Head(), classes=3)
    with pytest.raises(BadInputError, match="cannot be turned back"):
        append_head(labelled, "probabilities", prediction="labels", head=head, classes=3)
    same, _ = append_head(model, "logits", prediction="logits", head=Head(), classes=3)
    assert same is model
    taken = seg_graph(classes=3)
    taken.graph.node[-1].output[0] = "labels"
    taken.graph.output[0].name = "labels"
    with pytest.raises(BadInputError, match="already has a tensor named 'labels'"):
        append_head(taken, "labels", prediction="labels", head=Head(), classes=3)
    assert TensorProto.INT64 not in {label_dtype(n) for n in (1, 255, 256, 70000)}


def test_a_users_onnx_that_outputs_labels_is_read_as_a_label_map(tmp_path, images):
    from cli import assert_clean_error, run_cli
    from PIL import Image

    from segdeploy.adopt import ModelOptions, describe_onnx

    model, _ = append_head(seg_graph(classes=4), "labels", prediction="logits", head=Head(), classes=4)
    path = tmp_path / "theirs.onnx"
    onnx.save(model, str(path))
    options = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    manifest = describe_onnx(path, ModelOptions(**options, classes=("a", "b", "c", "d")))
    assert manifest["output"] | {"head": "labels", "dtype": "uint8", "layout": "NHW"} == manifest["output"]
    assert Head.from_manifest(manifest).form == "labels"
    with pytest.raises(BadInputError, match="label map .* give --classes"):
        describe_onnx(path, ModelOptions(**options))

    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(picture)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\nd\n")
    mean_std = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    proc = run_cli("infer", str(path), str(picture), *mean_std, "--classes", str(classes), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    scores_path = tmp_path / "scores.onnx"
    onnx.save(seg_graph(classes=4), str(scores_path))
    proc = run_cli("infer", str(scores_path), str(picture), *mean_std, "--classes", str(classes), "-o", str(tmp_path / "ref"))
    assert proc.returncode == 0, proc.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    assert mask.shape == (20, 30) and len(np.unique(mask)) > 1
    np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "ref" / "photo_mask.png")))
    assert_clean_error(run_cli("infer", str(path), str(picture), *mean_std, "-o", str(tmp_path / "o2")), 2, "give --classes")
