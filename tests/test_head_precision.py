"""`segdeploy fp16` and `segdeploy quantize` on artifacts with a deployment head (probabilities,
labels, fused labels): the reduced graph keeps the head as it was, and the gate compares label maps.

The head artifacts are made from the trained fixture's FP32 artifact by ``segdeploy.head``'s
``apply_head``; everything runs for real: the CLI in subprocesses, ONNX Runtime on the CPU (the
fused node through onnxruntime-extensions), files on disk.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

#: (head, fused) of the artifacts under test.
HEADS = [("labels", False), ("labels", True), ("probabilities", False)]
#: The gate's default agreement (``precision.gate.Budget``).
MIN_AGREEMENT = 0.99
QDQ = ("QuantizeLinear", "DequantizeLinear")


def head_id(head) -> str:
    return f"{head[0]}{'-fused' if head[1] else ''}"


class HeadArtifacts(dict):
    """(head, fused) -> the FP32 head artifact's folder, made from the fixture's on first use."""

    def __init__(self, source, root):
        super().__init__()
        self.source, self.root = source, root

    def __missing__(self, head):
        from segdeploy.head.artifact import apply_head

        name, fused = head
        self[head] = apply_head(self.source, name, fused=fused, output_dir=self.root / head_id(head)).output_dir
        return self[head]


@pytest.fixture(scope="module")
def head_artifacts(fixture_artifact, tmp_path_factory):
    return HeadArtifacts(fixture_artifact, tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="module")
def reduced(head_artifacts, image_folders, tmp_path_factory):
    """(head, precision) -> (the reduced artifact's folder, the command's JSON result), made on first use."""
    made = {}

    def make(head, precision):
        if (head, precision) not in made:
            out = tmp_path_factory.mktemp("reduced") / f"{head_id(head)}_{precision}"
            args = (["fp16", head_artifacts[head], "--val", image_folders["val"]] if precision == "fp16" else
                    ["quantize", head_artifacts[head], "--calib", image_folders["calib"], "--val", image_folders["val"]])
            proc = run_cli(*args, "-o", out, "--json")
            assert proc.returncode == 0, proc.stderr
            made[head, precision] = out, json.loads(proc.stdout)
        return made[head, precision]

    return make


@pytest.fixture(scope="module")
def val_batch(fixture_artifact, image_folders):
    from segdeploy.manifest import resolve_artifact
    from segdeploy.preprocess import find_images, preprocess_files

    _, manifest = resolve_artifact(fixture_artifact)
    return preprocess_files(find_images(image_folders["val"] / "images"), manifest["input"])


def run_artifact(folder, images: np.ndarray) -> np.ndarray:
    from segdeploy.backend.onnxrt.runner import OnnxrtRunner
    from segdeploy.manifest import resolve_artifact

    onnx_path, manifest = resolve_artifact(folder)
    with OnnxrtRunner.from_artifact(onnx_path, manifest) as runner:
        return runner.infer({manifest["input"]["name"]: images})[manifest["output"]["name"]]


def head_tail(model: onnx.ModelProto, output: str) -> list[onnx.NodeProto]:
    """The nodes from the output back to (and with) the head's first op, in graph order."""
    from segdeploy.precision.graph import split_head

    return split_head(model, output)[1].nodes


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("head", HEADS, ids=head_id)
def test_reduced_artifact_keeps_the_head_and_passes_the_gate(head, precision, head_artifacts, reduced, val_batch):
    out, result = reduced(head, precision)
    name, fused = head
    fp32_folder = head_artifacts[head]
    fp32_model, model = onnx.load(str(fp32_folder / "model.onnx")), onnx.load(str(out / "model.onnx"))
    # The head's nodes are the FP32 artifact's, unchanged (no FP16 typing, no Q/DQ on or after them).
    tail, fp32_tail = head_tail(model, name), head_tail(fp32_model, name)
    assert [(n.op_type, n.domain, list(n.attribute)) for n in tail] == [(n.op_type, n.domain, list(n.attribute)) for n in fp32_tail]
    assert not any(n.op_type in QDQ for n in tail)
    assert fused == any(n.op_type == "UpsampleArgmax" for n in tail)
    produced_after = {out_name for n in tail for out_name in n.output}
    assert not any(n.op_type in QDQ and set(n.input) & produced_after for n in model.graph.node)
    # The head reads float32 scores: a Cast back from FP16, or a DequantizeLinear (the scores graph's output).
    assert [o.name for o in model.graph.output] == [name]
    expected_type = TensorProto.UINT8 if name == "labels" else TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == expected_type
    if precision == "fp16":
        assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    else:
        assert any(n.op_type in QDQ for n in model.graph.node)

    manifest = json.loads((out / "manifest.json").read_text())
    fp32_manifest = json.loads((fp32_folder / "manifest.json").read_text())
    assert manifest["output"] == {**fp32_manifest["output"], "side_outputs": []}
    assert manifest["head"] == fp32_manifest["head"]
    section = result["deployment_head"]
    assert section["name"] == name and section["fused"] == fused and section["nodes"] == [n.op_type for n in tail]

    gate = result["gate"]
    assert gate["passed"] and gate["final"]["agreement"] >= MIN_AGREEMENT
    labels, reference = run_artifact(out, val_batch), run_artifact(fp32_folder, val_batch)
    if name == "labels":
        assert labels.dtype == np.uint8 and labels.shape == (len(val_batch), 64, 64)
        agreement = float(np.mean(labels == reference))
        # Class ids have no error of values: n/a, not a figure computed on ids.
        assert gate["final"]["max_prob_error"] is None and gate["final"]["max_abs_diff"] is None
    else:
        assert labels.dtype == np.float32
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-4)
        agreement = float(np.mean(labels.argmax(1) == reference.argmax(1)))
        # The probability error is taken on the probabilities the graph outputs.
        assert gate["final"]["max_prob_error"] == pytest.approx(float(np.abs(labels - reference).max()), rel=1e-3, abs=1e-6)
    assert agreement >= MIN_AGREEMENT
    assert gate["final"]["agreement"] == pytest.approx(agreement, abs=1e-6)


@pytest.mark.slow
def test_labels_head_reports_label_map_agreement_and_no_probability_error(head_artifacts, image_folders, tmp_path):
    proc = run_cli("fp16", head_artifacts["labels", False], "--val", image_folders["val"], "-o", tmp_path / "fp16")
    assert proc.returncode == 0, proc.stderr
    assert "deployment head 'labels' (ArgMax -> Cast) kept unchanged" in proc.stdout
    assert "label map agreement" in proc.stdout and "max probability error n/a" in proc.stdout
    # A probability limit means nothing for class ids: refused, not silently ignored.
    proc = run_cli("fp16", head_artifacts["labels", False], "--max-prob-error", "0.1", "-o", tmp_path / "refused")
    assert_clean_error(proc, 2, "--max-prob-error", "outputs labels only")
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_cpu_int8_keeps_qdq_off_the_head(head_artifacts, image_folders, tmp_path):
    """ONNX Runtime's CPU scheme quantizes every op it can: still none of the head's."""
    out = tmp_path / "cpu"
    proc = run_cli("quantize", head_artifacts["labels", False], "--calib", image_folders["calib"], "--target", "cpu",
                   "-o", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["gate"]["passed"]
    model = onnx.load(str(out / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    cast = producers["labels"]
    argmax = producers[cast.input[0]]
    assert (cast.op_type, argmax.op_type) == ("Cast", "ArgMax")
    consumers = [n for n in model.graph.node if set(n.input) & {argmax.output[0], cast.output[0]}]
    assert consumers == [cast]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8


def test_split_and_attach_head_round_trip_an_older_opset():
    """A head cut off an opset 12 graph and put back on its opset 13 conversion (INT8 needs 13):
    the binary head's Squeeze takes its axes as an input there."""
    from onnx import helper, numpy_helper

    from segdeploy.head.graph import append_head
    from segdeploy.outputs import Head
    from segdeploy.precision.graph import attach_head, split_head

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(1, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["logits"])], "binary",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, 8, 8])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    with_head, _ = append_head(model, "labels", prediction="logits", head=Head("binary"), classes=2)
    scores, tail = split_head(with_head, "labels")
    assert [o.name for o in scores.graph.output] == ["logits"] and [n.op_type for n in tail.nodes] == ["Squeeze", "Greater", "Cast"]
    assert {t.name for t in scores.graph.initializer} == {"w"}
    upgraded = onnx.version_converter.convert_version(scores, 13)
    back = attach_head(upgraded, tail)
    onnx.checker.check_model(back, full_check=True)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(back), run(with_head))
    assert run(back).dtype == np.uint8 and run(back).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="not made by a deployment head"):
        split_head(model, "logits")


@pytest.mark.slow
def test_binary_labels_head_is_quantized_without_its_threshold(foreign_models, image_folders, binary_folders, tmp_path):
    """A user's one-channel sigmoid model with a labels head (Squeeze, Greater, Cast): INT8 keeps
    the threshold as it was and its 0/1 maps agree with the FP32 head artifact's."""
    from segdeploy.adopt import ModelOptions
    from segdeploy.head.artifact import apply_head

    model = foreign_models["binary"]
    labels = apply_head(model.path, "labels", output_dir=tmp_path / "labels",
                        options=ModelOptions(mean=model.mean, std=model.std, size=(64, 64))).output_dir
    out = tmp_path / "int8"
    proc = run_cli("quantize", labels, "--calib", image_folders["calib"], "--val", binary_folders["val"], "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["deployment_head"]["nodes"] == ["Squeeze", "Greater", "Cast"] and result["gate"]["passed"]
    reduced, fp32 = onnx.load(str(out / "model.onnx")), onnx.load(str(labels / "model.onnx"))
    threshold = [i for i in reduced.graph.initializer if i.name == "labels_threshold"]
    assert threshold and onnx.numpy_helper.to_array(threshold[0]) == pytest.approx(0.5)
    assert [n.op_type for n in head_tail(reduced, "labels")] == [n.op_type for n in head_tail(fp32, "labels")]
    from segdeploy.preprocess import find_images, preprocess_files

    manifest = json.loads((labels / "manifest.json").read_text())
    images = preprocess_files(find_images(binary_folders["val"] / "images"), manifest["input"])
    got, expected = run_artifact(out, images), run_artifact(labels, images)
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
    assert float(np.mean(got == expected)) == pytest.approx(result["gate"]["final"]["agreement"], abs=1e-6)
    assert result["gate"]["final"]["agreement"] >= MIN_AGREEMENT


@pytest.mark.slow
def test_sensitivity_analysis_on_a_labels_head_ranks_by_label_agreement(head_artifacts, image_folders, tmp_path):
    """Each build of the search gets the head back; layers are ranked by label agreement alone (ids have no noise)."""
    out = tmp_path / "strict"
    proc = run_cli("quantize", head_artifacts["labels", False], "--calib", image_folders["calib"], "--val", image_folders["val"],
                   "--method", "minmax", "--min-agreement", "0.9995", "-o", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gate = json.loads(proc.stdout)["gate"]
    assert gate["before_sensitivity"]["agreement"] < 0.9995 <= gate["final"]["agreement"]
    ranking = gate["sensitivity_ranking"]
    assert len(ranking) == 7 and all(r["noise_ratio"] is None for r in ranking)
    assert [r["agreement"] for r in ranking] == sorted(r["agreement"] for r in ranking)
    kept = gate["kept_in_higher_precision"]
    assert 1 <= len(kept) < 7 and kept == [r["node"] for r in ranking[: len(kept)]]
    model = onnx.load(str(out / "model.onnx"))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert {n.name for n in model.graph.node if n.op_type == "Conv" and producers.get(n.input[1]) != "DequantizeLinear"} == set(kept)
    assert [n.op_type for n in head_tail(model, "labels")] == ["ArgMax", "Cast"]
