"""A user's ONNX file as an artifact: what ``segdeploy adopt`` reads from the graph and records,
how the prediction output is read (outputs.Head), and the conversions a step may need (convert.py),
on small hand-built graphs run in the real ONNX Runtime."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import F, conv_weights, make_model

import segdeploy
from segdeploy.adopt import ModelOptions, describe_onnx
from segdeploy.convert import fold_fp16_weight_casts, prepare_graph, upgrade_opset
from segdeploy.errors import BadInputError
from segdeploy.manifest import resolve_artifact
from segdeploy.outputs import Head

SCHEMA = json.loads((__import__("pathlib").Path(segdeploy.__file__).parent / "schemas" / "manifest.schema.json").read_text())
IMAGENET = ("--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")


def binary_graph(input_name="input.1", dims=("n", 3, "h", "w"), sigmoid=True, side_output=False, shapes=True, opset=13):
    """Conv(3->1) [-> Sigmoid] -> ``mask``; optionally a second, 4-channel output ``edges`` first."""
    nodes = [helper.make_node("Conv", [input_name, "w", "b"], ["score"], pads=[1, 1, 1, 1])]
    nodes.append(helper.make_node("Sigmoid" if sigmoid else "Identity", ["score"], ["mask"]))
    inits = [conv_weights(out=1), numpy_helper.from_array(np.array([0.1], np.float32), "b")]
    out_dims = [dims[0], 1, dims[2], dims[3]] if shapes else None
    outputs = [helper.make_tensor_value_info("mask", F, out_dims)]
    if side_output:
        nodes.append(helper.make_node("Conv", [input_name, "w4"], ["edges"], pads=[1, 1, 1, 1]))
        inits.append(conv_weights("w4", out=4, seed=1))
        outputs.insert(0, helper.make_tensor_value_info("edges", F, [dims[0], 4, dims[2], dims[3]] if shapes else None))
    graph = make_model(nodes, [helper.make_tensor_value_info(input_name, F, list(dims))], outputs, inits, opset=opset)
    if not shapes:
        del graph.graph.value_info[:]
    return graph


def save(model, folder, name="model.onnx"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, str(path))
    return path


def test_adopt_records_what_the_graph_says_and_every_later_read_uses_it(tmp_path):
    path = save(binary_graph(dims=(1, 3, 48, 64)), tmp_path / "bg", "matting.onnx")
    proc = run_cli("adopt", path, *IMAGENET)
    assert proc.returncode == 0, proc.stderr
    assert "binary: one sigmoid probability channel, foreground where > 0.5" in proc.stdout
    manifest = json.loads((tmp_path / "bg" / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["input"]["name"] == "input.1" and manifest["input"]["size"] == [48, 64]
    assert manifest["input"]["channels"] == 3 and manifest["onnx"]["file"] == "matting.onnx"
    expected = {"name": "mask", "kind": "binary", "activation": "sigmoid", "threshold": 0.5}
    assert {k: manifest["output"][k] for k in expected} == expected
    assert manifest["classes"] == ["background", "foreground"] and manifest["onnx"]["opset"] == 13
    # the folder and the file both resolve to the adopted file and its manifest
    for given in (tmp_path / "bg", path):
        onnx_path, found = resolve_artifact(given)
        assert onnx_path == path and found["output"]["name"] == "mask"


def test_a_manifest_beside_another_file_is_not_taken_for_this_one(tmp_path):
    first = save(binary_graph(), tmp_path, "a.onnx")
    second = save(binary_graph(), tmp_path, "b.onnx")
    assert run_cli("adopt", first, *IMAGENET).returncode == 0
    assert resolve_artifact(second)[1] is None
    assert_clean_error(run_cli("adopt", second, *IMAGENET), 2, "already describes a.onnx")


def test_the_user_picks_the_prediction_among_several_outputs(tmp_path):
    path = save(binary_graph(side_output=True), tmp_path)
    manifest = describe_onnx(path, ModelOptions(mean=(0.5,) * 3, std=(0.2,) * 3))
    assert manifest["output"]["name"] == "edges" and manifest["output"]["kind"] == "multiclass"  # the first, by default
    manifest = describe_onnx(path, ModelOptions(mean=(0.5,) * 3, std=(0.2,) * 3, output="mask", drop_side_outputs=True))
    assert manifest["output"]["name"] == "mask" and manifest["output"]["kind"] == "binary"
    assert manifest["output"]["side_outputs"] == ["edges"] and manifest["output"]["drop_side_outputs"]
    assert_clean_error(run_cli("adopt", path, *IMAGENET, "--output-name", "nope"), 2, "no output named 'nope'", "edges, mask")


def test_output_channels_missing_from_the_graph_are_read_by_running_it(tmp_path):
    path = save(binary_graph(sigmoid=False, shapes=False), tmp_path)
    manifest = describe_onnx(path, ModelOptions(mean=(0.5,) * 3, std=(0.2,) * 3))
    assert manifest["output"]["kind"] == "binary" and manifest["output"]["threshold"] == 0.0  # a raw logit


def test_inputs_segdeploy_cannot_feed_are_refused_clearly(tmp_path):
    nhwc = save(binary_graph(dims=(1, 64, 64, 3)), tmp_path / "nhwc")
    assert_clean_error(run_cli("adopt", nhwc, *IMAGENET), 2, "channels-last (NHWC)")
    as_uint8 = binary_graph()
    as_uint8.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    assert_clean_error(run_cli("adopt", save(as_uint8, tmp_path / "u8"), *IMAGENET), 2, "is uint8")
    assert_clean_error(run_cli("adopt", save(binary_graph(), tmp_path / "nonorm")), 2, "--mean and --std")
    assert_clean_error(run_cli("adopt", save(binary_graph(), tmp_path / "fixed"), *IMAGENET, "--mean", "0.5,0.5"), 2,
                       "3 channel(s)")  # fmt: skip


def test_channel_counts_choose_the_colour_and_tensors_take_no_normalisation(tmp_path):
    grey = save(binary_graph(dims=("n", 1, "h", "w")), tmp_path / "grey")
    manifest = describe_onnx(grey, ModelOptions(mean=(0.5,), std=(0.25,)))
    assert manifest["input"]["color"] == "GRAY" and manifest["input"]["size"] == [None, None]
    bands = save(binary_graph(dims=("n", 6, "h", "w")), tmp_path / "bands")
    manifest = describe_onnx(bands)
    assert manifest["input"]["color"] == "tensor" and manifest["input"]["mean"] == [] and manifest["input"]["channels"] == 6
    jsonschema.validate(manifest, SCHEMA)
    with pytest.raises(BadInputError, match="already normalised"):
        describe_onnx(bands, ModelOptions(mean=(0.0,) * 6, std=(1.0,) * 6))


def test_heads_read_labels_and_probabilities_by_kind():
    scores = np.array([[[[-2.0, 0.5]]], [[[3.0, -0.1]]]], np.float32)  # (2, 1, 1, 2): one channel
    logit = Head.detect(1)
    assert logit.kind == "binary" and logit.labels(scores).tolist() == [[[0, 1]], [[1, 0]]]
    assert np.allclose(logit.probabilities(scores), 1 / (1 + np.exp(-scores)))
    sigmoid = Head.detect(1, "sigmoid")
    assert sigmoid.labels(np.array([[[[0.4, 0.6]]]])).tolist() == [[[0, 1]]]
    many = Head.detect(3)
    logits = np.array([[[[1.0]], [[3.0]], [[2.0]]]], np.float32)
    assert many.labels(logits).tolist() == [[[1]]] and np.isclose(many.probabilities(logits).sum(), 1.0)
    assert Head.from_manifest({"output": {"name": "logits"}}) == Head()  # manifests from before heads existed


def fp16_cast_graph():
    """The weights stored as float16, each behind a Cast to float: an FP32 graph with small files."""
    w = numpy_helper.to_array(conv_weights(out=4)).astype(np.float16)
    nodes = [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["images", "w"], ["logits"], pads=[1, 1, 1, 1])]  # fmt: skip
    return make_model(nodes, [helper.make_tensor_value_info("images", F, ["n", 3, "h", "w"])],
                      [helper.make_tensor_value_info("logits", F, ["n", 4, "h", "w"])],
                      [numpy_helper.from_array(w, "w16")], opset=11)  # fmt: skip


def test_fp16_weights_behind_casts_are_recognised_and_folded_without_changing_outputs(tmp_path):
    path = save(fp16_cast_graph(), tmp_path)
    manifest = describe_onnx(path, ModelOptions(mean=(0.5,) * 3, std=(0.2,) * 3))
    assert manifest["onnx"]["precision"] == "fp32" and manifest["onnx"]["fp16_weight_casts"] == 1
    folded, count = fold_fp16_weight_casts(onnx.load(str(path)))
    assert count == 1 and not [n for n in folded.graph.node if n.op_type == "Cast"]
    assert [t.data_type for t in folded.graph.initializer] == [TensorProto.FLOAT]

    prepared = prepare_graph(path, tmp_path, manifest["input"], min_opset=13)
    assert prepared.report["fp16_weight_casts_folded"] == 1 and prepared.report["opset"] == {
        "from": 11, "to": 13, "converter": f"onnx.version_converter {onnx.__version__}"}  # fmt: skip
    assert prepared.report["check"]["passed"] and prepared.report["check"]["max_abs_diff"] == 0.0
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"images": x})[0]
    after = ort.InferenceSession(str(prepared.path)).run(None, {"images": x})[0]
    assert np.array_equal(before, after)
    assert prepare_graph(prepared.path, tmp_path, manifest["input"], min_opset=13).path == prepared.path  # nothing to do


def test_a_graph_the_version_converter_cannot_take_is_refused_with_what_to_do(tmp_path):
    model = fp16_cast_graph()
    model.graph.node.append(helper.make_node("NotAnOnnxOp", ["logits"], ["unused"]))  # no schema to convert by
    with pytest.raises(BadInputError, match="re-export the model at opset >= 13"):
        upgrade_opset(model, 13, tmp_path / "custom.onnx")
