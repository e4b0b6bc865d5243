"""A deployment head appended to existing artifacts (FP32, FP16, INT8, a user's bare ONNX file):
checked by ONNX Runtime against the scores graph, written atomically as a new artifact."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from segdeploy.errors import BadInputError, VerificationError
from segdeploy.fileio import sha256_file
from segdeploy.head.artifact import HeadParity, apply_head
from segdeploy.manifest import read_manifest
from segdeploy.outputs import Head
from segdeploy.parity import Thresholds, sample_feed

ort = pytest.importorskip("onnxruntime")


def run(folder, feed) -> dict:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def schema_valid(manifest: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path

    import segdeploy

    schema = json.loads((Path(segdeploy.__file__).parent / "schemas" / "manifest.schema.json").read_text())
    jsonschema.validate(manifest, schema)


@pytest.mark.parametrize("head_name", ["labels", "probabilities"])
def test_fixture_artifact_gets_the_head_its_scores_give(head_name, fixture_artifact, tmp_path):
    out = tmp_path / head_name
    result = apply_head(fixture_artifact, head_name, output_dir=out)
    parent = read_manifest(fixture_artifact / "manifest.json")
    manifest = read_manifest(out / "manifest.json")
    schema_valid(manifest)
    assert manifest == result.manifest and manifest["onnx"]["sha256"] == sha256_file(out / "model.onnx")
    assert manifest["onnx"]["precision"] == "fp32" and manifest["classes"] == parent["classes"]
    assert manifest["head"]["name"] == head_name and manifest["head"]["source_output"] == "logits"
    assert manifest["head"]["source"]["sha256"] == sha256_file(fixture_artifact / "model.onnx")
    assert [HeadParity.from_json(p) for p in manifest["head"]["parity"]] == result.parity
    assert len(result.parity) == 2 and {p.shape[0] for p in result.parity} == {1, 2}
    output = manifest["output"]
    assert output["name"] == head_name and output["all"] == [head_name] and output["head"] == head_name

    feed = sample_feed((2, 3, 64, 64), parent, seed=5)
    logits = run(fixture_artifact, feed)["logits"]
    value = run(out, feed)[head_name]
    head = Head.from_manifest(manifest)
    if head_name == "labels":
        assert output["dtype"] == "uint8" and output["layout"] == "NHW" and output["fused"] is False
        assert value.dtype == np.uint8 and value.shape == (2, 64, 64)
        np.testing.assert_array_equal(head.labels(value), logits.argmax(1))
    else:
        assert output["dtype"] == "float32" and output["activation"] == "softmax"
        np.testing.assert_allclose(value, Head().probabilities(logits), atol=1e-6)
    # The trained fixture predicts several classes: agreement on them proves something.
    assert len(np.unique(logits.argmax(1))) >= 3
    assert all(p.passed and p.label_agreement == 1.0 and p.disagreeing_pixels == 0 for p in result.parity)


def test_default_folder_is_beside_the_artifact_and_bad_requests_write_nothing(fixture_artifact, tmp_path):
    import shutil

    source = tmp_path / "dlv3"
    shutil.copytree(fixture_artifact, source)
    result = apply_head(source, "labels")
    assert result.output_dir == tmp_path / "dlv3_labels" and (tmp_path / "dlv3_labels" / "model.onnx").is_file()
    with pytest.raises(BadInputError, match="already holds labels"):
        apply_head(result.output_dir, "probabilities", output_dir=tmp_path / "again")
    with pytest.raises(BadInputError, match="already holds logits; nothing to do"):
        apply_head(source, "logits", output_dir=tmp_path / "same")
    with pytest.raises(BadInputError, match="needs --head labels"):
        apply_head(source, "probabilities", fused=True, output_dir=tmp_path / "fused_probabilities")
    with pytest.raises(BadInputError, match="is the source model's folder"):
        apply_head(source, "labels", output_dir=source)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not an artifact folder"):
        apply_head(source, "labels", output_dir=tmp_path / "notes")
    with pytest.raises(BadInputError, match="expected one of"):
        apply_head(source, "argmax", output_dir=tmp_path / "argmax")
    # A failed check writes nothing: no folder, no temporary files left beside it.
    with pytest.raises(VerificationError, match="nothing written"):
        apply_head(source, "probabilities", output_dir=tmp_path / "strict", thresholds=Thresholds(0.0, 1.0, 0.0))
    assert not (tmp_path / "strict").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dlv3", "dlv3_labels", "notes"]


def test_a_crf_artifact_is_refused(fixture_artifact, tmp_path):
    import shutil

    crf = tmp_path / "crf"
    shutil.copytree(fixture_artifact, crf)
    manifest = read_manifest(crf / "manifest.json")
    manifest["crf"] = {"params": {}, "image_input": "image", "image_layout": "hwc"}
    (crf / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="dense CRF"):
        apply_head(crf, "labels", output_dir=tmp_path / "out")


def test_a_users_bare_onnx_file_takes_the_head_with_its_options(foreign_models, tmp_path):
    from segdeploy.adopt import ModelOptions

    model = foreign_models["opset12"]
    with pytest.raises(BadInputError, match="--mean and --std"):
        apply_head(model.path, "labels", output_dir=tmp_path / "x")
    options = ModelOptions(mean=model.mean, std=model.std)
    result = apply_head(model.path, "labels", options=options, output_dir=tmp_path / "labels")
    manifest = result.manifest
    assert manifest["input"]["name"] == "x" and manifest["input"]["mean"] == list(model.mean)
    assert manifest["head"]["source_output"] == "out" and manifest["output"]["name"] == "labels"
    feed = sample_feed((1, 3, 64, 64), manifest, seed=3)
    source = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(run(tmp_path / "labels", feed)["labels"], source.run(None, feed)[0].argmax(1))
    assert result.parity[0].passed and len(result.parity) == 2


def test_binary_model_gets_thresholded_labels(foreign_models, tmp_path):
    from segdeploy.adopt import ModelOptions

    model = foreign_models["binary_logits"]
    result = apply_head(model.path, "labels", options=ModelOptions(mean=model.mean, std=model.std),
                        output_dir=tmp_path / "labels")
    output = result.manifest["output"]
    assert output["kind"] == "binary" and output["dtype"] == "uint8" and output["threshold"] == 0.0
    feed = sample_feed((1, 3, 64, 64), result.manifest, seed=1)
    logit = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    labels = run(tmp_path / "labels", feed)["labels"]
    np.testing.assert_array_equal(labels, (logit[:, 0] > 0).astype(np.uint8))
    assert 0 < labels.mean() < 1  # both classes predicted


@pytest.mark.slow
def test_fp16_and_int8_artifacts_keep_their_precision_and_parent(fixture_artifact, image_folders, tmp_path):
    from segdeploy.precision.pipeline import make_fp16, make_int8

    fp16 = make_fp16(fixture_artifact, tmp_path / "fp16").output_dir
    int8 = make_int8(fixture_artifact, image_folders["calib"], tmp_path / "int8", target="trt11").output_dir
    for folder, precision in ((fp16, "fp16"), (int8, "int8")):
        parent = read_manifest(folder / "manifest.json")
        result = apply_head(folder, "labels", output_dir=tmp_path / f"{precision}_labels")
        manifest = result.manifest
        assert manifest["onnx"]["precision"] == precision and manifest["parent"] == parent["parent"]
        assert manifest["head"]["source"]["sha256"] == sha256_file(folder / "model.onnx")
        assert all(p.passed for p in result.parity)
        feed = sample_feed((2, 3, 64, 64), parent, seed=9)
        scores = run(folder, feed)["logits"]
        labels = run(result.output_dir, feed)["labels"]
        np.testing.assert_array_equal(labels, scores.argmax(1))
        model = onnx.load(str(result.output_dir / "model.onnx"))
        if precision == "int8":
            assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        else:
            assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
        # Fused: the FP16 graph's Resize rounds to float16, so disagreements may occur, at near-ties only.
        fused = apply_head(folder, "labels", fused=True, output_dir=tmp_path / f"{precision}_fused")
        assert fused.manifest["onnx"]["precision"] == precision and fused.manifest["output"]["fused"] is True
        assert all(p.passed and p.near_ties == p.disagreeing_pixels for p in fused.parity), fused.parity


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_probabilities_are_per_pixel_at_every_opset(opset):
    """Before opset 13 ONNX's Softmax(axis=1) normalises the classes and pixels together."""
    from onnx_graphs import seg_graph

    from segdeploy.head.graph import append_head

    model, _ = append_head(seg_graph(classes=4, opset=opset), "probabilities", prediction="logits", head=Head(), classes=4)
    onnx.checker.check_model(model, full_check=True)
    images = np.random.default_rng(opset).normal(size=(2, 3, 9, 11)).astype(np.float32)
    scores_session = ort.InferenceSession(seg_graph(classes=4, opset=opset).SerializeToString(), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"images": images})[0]
    np.testing.assert_allclose(probabilities, Head().probabilities(scores_session.run(None, {"images": images})[0]), atol=1e-6)
