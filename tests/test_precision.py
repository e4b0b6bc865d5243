"""FP16 and INT8 artifacts of the trained fixture: graphs, accuracy gate, provenance, bad input.

Everything runs for real: the `segdeploy` CLI in subprocesses, ONNX Runtime on the CPU, image
files on disk. The fixture network is trained once per session (see conftest.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto, numpy_helper

from segdeploy.fileio import sha256_file
from segdeploy.precision.int8 import tensorrt_qdq_violations

ort = pytest.importorskip("onnxruntime")


def run_json(*args):
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def run_model(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.fixture(scope="module")
def val_batch(fixture_artifact, image_folders):
    from segdeploy.manifest import resolve_artifact
    from segdeploy.preprocess import find_images, preprocess_files

    _, manifest = resolve_artifact(fixture_artifact)
    return preprocess_files(find_images(image_folders["val"] / "images"), manifest["input"])


@pytest.fixture(scope="module")
def tensorrt_int8(fixture_artifact, image_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "int8"
    result, _ = run_json("quantize", fixture_artifact, "--calib", image_folders["calib"], "--val", image_folders["val"],
                         "--target", "jetpack6.2", "-o", out)  # fmt: skip
    return out, result


# --- FP16 -------------------------------------------------------------------------------------


def test_fp16_graph_is_fp16_inside_with_float32_io(fixture_artifact, image_folders, tmp_path, val_batch):
    out = tmp_path / "fp16"
    result, _ = run_json("fp16", fixture_artifact, "--val", image_folders["val"], "-o", out)
    model = onnx.load(str(out / "model.onnx"))
    assert [i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]] == [TensorProto.FLOAT] * 2
    conv_weights = [init for init in model.graph.initializer if len(init.dims) == 4]
    assert conv_weights and all(w.data_type == TensorProto.FLOAT16 for w in conv_weights)
    # The head ends in a Resize: the value ONNX Runtime returns must really be float32.
    logits = run_model(out / "model.onnx", val_batch)
    assert logits.dtype == np.float32
    reference = run_model(fixture_artifact / "model.onnx", val_batch)
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    # Acceptance: FP16 argmax agreement >= 99.9% on the trained fixture.
    assert agreement >= 0.999
    assert result["gate"]["passed"] and result["gate"]["final"]["agreement"] == pytest.approx(agreement, abs=1e-6)
    assert 0 < result["gate"]["final"]["max_abs_diff"] == pytest.approx(float(np.abs(logits - reference).max()), rel=1e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["precision"] == "fp16" and manifest["onnx"]["sha256"] == sha256_file(out / "model.onnx")
    assert manifest["parent"]["sha256"] == sha256_file(fixture_artifact / "model.onnx")


def test_fp16_keeps_layers_with_activations_beyond_its_range_in_fp32(tmp_path, image_folders):
    # A conv whose outputs reach ~1e6, scaled back down: in FP16 that tensor would be inf.
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 2e4).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(1e-4, np.float32), "s")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["images", "w"], ["big"], name="huge_conv", pads=[1, 1, 1, 1]),
         onnx.helper.make_node("Mul", ["big", "s"], ["logits"], name="rescale")],
        "overflow", [onnx.helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, 32, 32])], [weight, scale],
    )  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "overflow.onnx")
    result, _ = run_json("fp16", tmp_path / "overflow.onnx", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                         "--val", image_folders["val_photos"])
    assert result["kept_fp32_for_range"] == ["huge_conv", "rescale"]
    assert result["gate"]["final"]["agreement"] == 1.0
    assert np.isfinite(result["gate"]["final"]["max_abs_diff"])


def test_fp16_sensitivity_analysis_keeps_layers_in_fp32_until_the_budget_holds(fixture_artifact, image_folders, tmp_path):
    # Photos, not the fixture's own scenes: on those it is so sure that FP16 may agree on every pixel.
    # The budget lies between what FP16 gives and what it gives with every weighted layer kept in FP32
    # (the other ops stay FP16, so that may miss 100% by a near-tie pixel, depending on the trained
    # fixture): the search must keep some layers, and can meet the budget.
    val = ["--val", image_folders["val_photos"]]
    reduced, _ = run_json("fp16", fixture_artifact, *val, "--no-sensitivity", "--min-agreement", "0", "-o", tmp_path / "all")
    convs = [n.name for n in onnx.load(str(tmp_path / "all" / "model.onnx")).graph.node if n.op_type == "Conv"]
    keep_all = [arg for name in convs for arg in ("--keep-fp32", name)]
    kept_all, _ = run_json("fp16", fixture_artifact, *val, *keep_all, "--no-sensitivity", "--min-agreement", "0",
                           "-o", tmp_path / "kept")
    floor, ceiling = reduced["gate"]["final"]["agreement"], kept_all["gate"]["final"]["agreement"]
    assert ceiling > floor, (floor, ceiling)  # photos put some pixels near a tie: FP16 flips a few of them
    budget = (floor + ceiling) / 2

    out = tmp_path / "fp16_budget"
    result, _ = run_json("fp16", fixture_artifact, *val, "--min-agreement", f"{budget:.9f}", "-o", out)
    gate = result["gate"]
    assert gate["before_sensitivity"]["agreement"] < budget <= gate["final"]["agreement"]
    kept = set(gate["kept_in_higher_precision"])
    assert kept and len(gate["sensitivity_ranking"]) == 7
    model = onnx.load(str(out / "model.onnx"))
    weight_types = {i.name: i.data_type for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            expected = TensorProto.FLOAT if node.name in kept else TensorProto.FLOAT16
            assert weight_types[node.input[1]] == expected, node.name


# --- INT8, TensorRT rules -----------------------------------------------------------------------


def test_tensorrt_qdq_graph_follows_tensorrts_rules(tensorrt_int8):
    out, result = tensorrt_int8
    model = onnx.load(str(out / "model.onnx"))
    values = constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in values:
            assert values[node.input[0]].dtype == np.int8, f"{node.name}: INT32 DequantizeLinear (quantized bias)"
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 7
    for conv in convs:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        assert axis == 0 and values[weight_dq.input[1]].shape == (values[weight_dq.input[0]].shape[0],)
        assert len(conv.input) < 3 or values[conv.input[2]].dtype == np.float32  # bias stays float
    assert tensorrt_qdq_violations(out / "model.onnx") == []
    assert result["scheme"]["route"] == "tensorrt" and result["target"] == "jetpack6.2"
    assert model.opset_import[0].version <= 20  # TensorRT 10.3's parser


def test_tensorrt_int8_meets_the_accuracy_budget_on_the_trained_fixture(tensorrt_int8, fixture_artifact, val_batch):
    out, result = tensorrt_int8
    gate = result["gate"]
    assert gate["passed"] and gate["validation"]["masks"] and gate["validation"]["count"] == 16
    # Acceptance: INT8 mIoU drop <= 0.5 pt (here without needing the sensitivity analysis).
    assert gate["final"]["miou_drop"] <= 0.5 and gate["final"]["agreement"] >= 0.99
    logits = run_model(out / "model.onnx", val_batch)
    reference = run_model(fixture_artifact / "model.onnx", val_batch)
    assert gate["final"]["agreement"] == pytest.approx(float(np.mean(logits.argmax(1) == reference.argmax(1))), abs=1e-6)


def test_manifest_records_calibration_provenance(tensorrt_int8, fixture_artifact, image_folders):
    out, _ = tensorrt_int8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["precision"] == "int8" and manifest["onnx"]["target"] == "jetpack6.2"
    assert manifest["parent"]["sha256"] == sha256_file(fixture_artifact / "model.onnx")
    calibration = manifest["quantization"]["calibration"]
    # 24 scenes + 10 photos (JPEG, BMP, grey, RGBA, 16-bit, other sizes: all converted and resized).
    assert calibration["count"] == 34 and calibration["skipped"] == []
    assert calibration["method"] == "entropy" and len(calibration["files_sha256"]) == 64
    assert calibration["preprocessing"] == manifest["input"]
    assert (out / calibration["ranges_file"]).is_file()
    assert {"onnxruntime", "onnx", "numpy", "segdeploy"} <= set(manifest["versions"])


def test_same_inputs_reuse_the_result_and_gate_changes_reuse_the_ranges(tensorrt_int8, fixture_artifact, image_folders, tmp_path):
    out, first = tensorrt_int8
    copy = tmp_path / "int8"
    shutil.copytree(out, copy)
    args = ["quantize", fixture_artifact, "--calib", image_folders["calib"], "--val", image_folders["val"],
            "--target", "jetpack6.2", "-o", copy]
    again, _ = run_json(*args)
    assert again["reused"] and again["key"] == first["key"]
    stricter, _ = run_json(*args, "--min-agreement", "0.995")
    assert not stricter["reused"] and stricter["calibration"]["reused_ranges"]
    more = shutil.copytree(image_folders["calib"], tmp_path / "calib_more")
    shutil.copy(more / "images" / "scene_0000.png", more / "images" / "extra.png")
    recalibrated, _ = run_json(*args[:2], "--calib", more, *args[4:])
    assert not recalibrated["reused"] and not recalibrated["calibration"]["reused_ranges"]
    assert recalibrated["calibration"]["files_sha256"] != first["calibration"]["files_sha256"]


def test_sensitivity_analysis_keeps_the_most_sensitive_layers_in_float(fixture_artifact, image_folders, tmp_path):
    out = tmp_path / "strict"
    proc = run_cli("quantize", fixture_artifact, "--calib", image_folders["calib"], "--val", image_folders["val"],
                   "--method", "minmax", "--min-agreement", "0.9995", "-o", out, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gate = json.loads(proc.stdout)["gate"]
    assert gate["before_sensitivity"]["agreement"] < 0.9995 <= gate["final"]["agreement"]
    kept = gate["kept_in_higher_precision"]
    ranking = [r["node"] for r in gate["sensitivity_ranking"]]
    assert len(ranking) == 7 and 1 <= len(kept) < 7 and kept == ranking[: len(kept)]
    assert 0 < gate["cost"]["kept_mac_share"] < 1 and gate["cost"]["latency_ms"]["final"] > 0
    # The layers reported as kept really have float weights; the others are quantized.
    model = onnx.load(str(out / "model.onnx"))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    float_convs = {n.name for n in model.graph.node if n.op_type == "Conv" and producers.get(n.input[1]) != "DequantizeLinear"}
    assert float_convs == set(kept)


def test_gate_failure_exits_1_and_records_it(fixture_artifact, image_folders, tmp_path):
    out = tmp_path / "fails"
    proc = run_cli("quantize", fixture_artifact, "--calib", image_folders["calib"], "--min-agreement", "1.0",
                   "--no-sensitivity", "-o", out)  # fmt: skip
    assert_clean_error(proc, 1, "accuracy gate failed", "argmax agreement")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["gate"]["passed"] is False
    assert "calibration images" in manifest["quantization"]["gate"]["validation"]["folder"]


# --- INT8, ONNX Runtime CPU ---------------------------------------------------------------------


def test_cpu_target_quantizes_the_way_onnxruntime_is_fast(fixture_artifact, image_folders, tmp_path):
    out = tmp_path / "cpu"
    result, _ = run_json("quantize", fixture_artifact, "--calib", image_folders["calib"], "--val", image_folders["val"],
                         "--target", "cpu", "--method", "minmax", "-o", out)  # fmt: skip
    assert result["scheme"]["route"] == "ort-cpu" and result["gate"]["passed"]
    model = onnx.load(str(out / "model.onnx"))
    values = constants(model)
    activation_zero_points = [values[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
    assert any(z.any() for z in activation_zero_points)  # asymmetric
    weights = [values[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in values]
    assert any(w.dtype == np.int8 and w.ndim == 4 for w in weights)
    # The TensorRT check is not vacuous: it rejects this graph.
    problems = tensorrt_qdq_violations(out / "model.onnx")
    assert any("zero point" in p for p in problems) and any("INT32 DequantizeLinear" in p for p in problems)


# --- Targets and foreign ONNX files -------------------------------------------------------------


def test_opset17_target_gets_a_torchscript_export_it_can_quantize(trained_fixture, image_folders, tmp_path):
    from segdeploy.fixtures.artifact import export_fixture_artifact

    fp32 = export_fixture_artifact(trained_fixture, tmp_path / "jp5", target="jetpack5")
    manifest = json.loads((fp32 / "manifest.json").read_text())
    assert (manifest["onnx"]["opset"], manifest["onnx"]["exporter"]) == (17, "torchscript")
    result, _ = run_json("quantize", fp32, "--calib", image_folders["calib"], "--max-images", "16", "-o", tmp_path / "jp5_int8")
    assert result["target"] == "jetpack5" and result["gate"]["passed"]
    assert onnx.load(str(tmp_path / "jp5_int8" / "model.onnx")).opset_import[0].version <= 17


def test_target_that_cannot_read_the_opset_is_refused(fixture_artifact, image_folders):
    proc = run_cli("quantize", fixture_artifact, "--calib", image_folders["calib"], "--target", "jetpack5")
    assert_clean_error(proc, 2, "opset 18", "jetpack5")
    proc = run_cli("quantize", fixture_artifact, "--calib", image_folders["calib"], "--target", "jetpack7")
    assert_clean_error(proc, 2, "unknown target 'jetpack7'")


def test_foreign_onnx_needs_and_records_the_command_line_normalisation(fixture_artifact, image_folders, tmp_path):
    foreign = tmp_path / "theirs.onnx"
    shutil.copy(fixture_artifact / "model.onnx", foreign)
    assert_clean_error(run_cli("quantize", foreign, "--calib", image_folders["calib"]), 2, "--mean", "--std")
    norm = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]
    # The graph's height and width are dynamic: the calibration size must be given.
    assert_clean_error(run_cli("quantize", foreign, "--calib", image_folders["calib"], *norm), 2, "--size H W")
    norm += ["--size", "64", "64"]
    result, _ = run_json("quantize", foreign, "--calib", image_folders["calib"], *norm, "--max-images", "16")
    assert result["output"] == str(tmp_path / "theirs_int8") and result["target"] == "trt11" and result["gate"]["passed"]
    manifest = json.loads((tmp_path / "theirs_int8" / "manifest.json").read_text())
    assert manifest["input"]["mean"] == [0.485, 0.456, 0.406] and manifest["input"]["size"] == [64, 64]
    assert manifest["classes"] == [f"class_{i}" for i in range(6)]
    result, _ = run_json("fp16", foreign, *norm)
    assert result["output"] == str(tmp_path / "theirs_fp16") and result["gate"]["passed"]


# --- Bad input ----------------------------------------------------------------------------------


def test_bad_calibration_folders_exit_2_with_a_clear_message(fixture_artifact, image_folders, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("quantize", fixture_artifact, "--calib", tmp_path / "empty"), 2, "no calibration images")
    assert_clean_error(run_cli("quantize", fixture_artifact, "--calib", tmp_path / "missing"), 2, "missing")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("scene_0000.png", "scene_0001.png", "scene_0002.png"):
        shutil.copy(image_folders["calib"] / "images" / name, mixed / name)
    (mixed / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (mixed / "empty.png").write_bytes(b"")
    proc = run_cli("quantize", fixture_artifact, "--calib", mixed, "--min-images", "4")
    assert_clean_error(proc, 2, "3 readable calibration image(s), at least 4 needed (2 skipped as unreadable)")
    proc = run_cli("quantize", fixture_artifact, "--calib", mixed, "--min-images", "3", "--batch", "8")
    assert_clean_error(proc, 2, "3 image(s), fewer than the batch size 8")

    proc = run_cli("quantize", fixture_artifact, "--calib", mixed, "--min-images", "3", "--batch", "2",
                   "--val", image_folders["val"], "-o", tmp_path / "ok", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning: skipped") == 2 and "corrupt.jpg" in proc.stderr
    calibration = json.loads(proc.stdout)["calibration"]
    assert calibration["count"] == 3 and len(calibration["skipped"]) == 2


def test_unknown_layer_names_are_bad_input(fixture_artifact, image_folders):
    proc = run_cli("quantize", fixture_artifact, "--calib", image_folders["calib"], "--keep-float", "no_such_conv")
    assert_clean_error(proc, 2, "no_such_conv")
    proc = run_cli("fp16", fixture_artifact, "--keep-fp32", "no_such_conv")
    assert_clean_error(proc, 2, "no_such_conv")


@pytest.mark.parametrize("command", ["quantize", "fp16"])
def test_help_shows_an_example(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Examples:" in proc.stdout and f"segdeploy {command} " in proc.stdout and "--json" in proc.stdout
