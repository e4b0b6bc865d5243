"""`segdeploy export` end to end: ONNX + manifest, dynamic shapes, and the parity gate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli import run_cli

from segdeploy.fileio import sha256_file
from segdeploy.parity import DEFAULT_MAX_ABS_DIFF, DEFAULT_RTOL, sample_images


@pytest.fixture(scope="module")
def colour_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("colour") / "artifact"
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "64", "96", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


@pytest.fixture(scope="module")
def deeplab_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("dlv3p") / "artifact"
    proc = run_cli("export", "--model", "deeplabv3plus", "--input-size", "64", "64", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_deeplabv3plus_exports_with_dynamic_axes_and_passes_parity_at_two_shapes(deeplab_export):
    out, manifest = deeplab_export
    model = onnx.load(str(out / "model.onnx"))
    (graph_input,) = model.graph.input
    assert graph_input.name == "images" and model.graph.output[0].name == "logits"
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert manifest["model"]["name"] == "deeplabv3plus" and manifest["model"]["args"]["num_classes"] == 21
    assert len(manifest["classes"]) == 21
    assert manifest["onnx"]["sha256"] == sha256_file(out / "model.onnx")
    assert manifest["onnx"]["opset"] == 18 and manifest["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    shapes = manifest["parity"]["shapes"]
    assert len(shapes) == 2 and manifest["parity"]["passed"]
    # The second shape differs in batch and aspect ratio from the export shape.
    assert shapes[0]["shape"] == [1, 3, 64, 64] and shapes[1]["shape"][0] == 2
    assert shapes[1]["shape"][2] != shapes[1]["shape"][3]
    for result in shapes:
        assert result["max_abs_diff"] <= 1e-3
        assert result["outputs"]["logits"]["passed"] and result["output"] == "logits"
    assert manifest["output"]["kind"] == "multiclass" and manifest["output"]["activation"] == "none"


def test_torch_backend_rebuilds_the_exported_random_network(deeplab_export):
    from segdeploy.backend import make_runner
    from segdeploy.manifest import resolve_artifact

    out, manifest = deeplab_export
    assert manifest["model"]["init"] == "random (seed 0)" and manifest["model"]["checkpoint"] is None
    onnx_path, manifest = resolve_artifact(out)
    feed = {"images": sample_images((1, 3, 64, 96), manifest["input"], seed=5)}
    with make_runner("torch", onnx_path, manifest) as rebuilt, make_runner("ort", onnx_path, manifest) as exported:
        np.testing.assert_allclose(rebuilt.infer(feed)["logits"], exported.infer(feed)["logits"], atol=1e-3)


def test_exported_graph_runs_at_a_third_shape(deeplab_export):
    out, manifest = deeplab_export
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": sample_images((3, 3, 80, 48), manifest["input"])})
    assert logits.shape == (3, 21, 80, 48) and np.isfinite(logits).all()


def test_parity_gate_on_a_model_whose_argmax_varies(colour_export):
    out, proc = colour_export
    manifest = json.loads((out / "manifest.json").read_text())
    for result in manifest["parity"]["shapes"]:
        assert result["reference_classes_seen"] == 3  # the figure means something for this model
        assert result["argmax_agreement"] >= 0.9999 and result["max_abs_diff"] <= 1e-3
    assert "label agreement" in proc.stdout and "ok" in proc.stdout


def test_parity_gate_on_the_trained_fixture(trained_fixture, tmp_path):
    import torch

    from segdeploy.export import export_model

    # Export the trained network through the public API, as a user factory would be.
    path = tmp_path / "trained.pt"
    torch.save(trained_fixture.state_dict, path)
    result = export_model(
        "segdeploy.fixtures.net:TinySegNet", tmp_path / "out", num_classes=len(trained_fixture.classes),
        model_kwargs={"width": trained_fixture.config.width}, checkpoint=path, input_size=(64, 64),
    )
    assert result.passed
    for r in result.parity:
        assert r.reference_classes_seen >= 3 and r.argmax_agreement >= 0.9999 and r.max_abs_diff <= 1e-3


def test_gate_catches_adaptive_pooling_that_exports_wrong_under_dynamic_shapes(tmp_path):
    out = tmp_path / "ap"
    proc = run_cli("export", "--model", "toy_models:adaptive_pool_net", "--num-classes", "3", "--input-size", "64", "64", "-o", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "parity gate failed" in proc.stderr and "Traceback" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["parity"]["shapes"]
    assert first["passed"] and not second["passed"] and not manifest["parity"]["passed"]
    assert "FAIL" in proc.stdout
    # The relative term is no loophole: the mis-export is off by ~0.28 of the logits' scale
    # (measured), thousands of times the default rtol, and its labels disagree too.
    assert second["relative_diff"] > 1000 * DEFAULT_RTOL and second["argmax_agreement"] < 0.9
    assert second["max_abs_diff"] > second["limit"] == pytest.approx(DEFAULT_MAX_ABS_DIFF + DEFAULT_RTOL * second["reference_max_abs"])


def test_large_logits_pass_by_their_scale_and_the_manifest_records_it(tmp_path):
    """Logits ~1e5 (deep random networks reach 1e4): float32 rounding alone exceeds an absolute
    1e-3, so the limit is relative to the reference's scale; --rtol 0 makes it absolute again."""
    args = ("export", "--model", "toy_models:large_logits_net", "--num-classes", "3", "--input-size", "64", "64")
    proc = run_cli(*args, "-o", tmp_path / "large", "--json")
    assert proc.returncode == 0, proc.stderr
    parity = json.loads(proc.stdout)["parity"]
    assert parity["thresholds"]["rtol"] == DEFAULT_RTOL
    shapes = parity["shapes"]
    assert max(r["max_abs_diff"] for r in shapes) > DEFAULT_MAX_ABS_DIFF  # the premise: rounding alone exceeds it
    for r in shapes:
        assert r["reference_max_abs"] > 1e4 and r["relative_diff"] == pytest.approx(r["max_abs_diff"] / r["reference_max_abs"])
        assert r["relative_diff"] < DEFAULT_RTOL and r["max_abs_diff"] <= r["limit"]
        assert r["outputs"]["logits"]["relative_diff"] == r["relative_diff"]

    absolute = run_cli(*args, "--rtol", "0", "-o", tmp_path / "absolute")
    assert absolute.returncode == 1 and "Traceback" not in absolute.stderr
    assert "of max |reference|" in absolute.stderr and "(limit 0.001)" in absolute.stderr


def test_a_mis_exported_side_output_fails_the_gate_by_name(tmp_path):
    import jsonschema
    from cli import REPO_ROOT

    out = tmp_path / "side"
    proc = run_cli("export", "--model", "toy_models:side_output_net", "--num-classes", "3", "--input-size", "64", "64", "-o", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "output 'context'" in proc.stderr and "Traceback" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads((REPO_ROOT / "segdeploy" / "schemas" / "manifest.schema.json").read_text()))
    assert manifest["output"]["name"] == "logits" and manifest["output"]["all"] == ["logits", "context"]
    first, second = manifest["parity"]["shapes"]
    # The prediction output is exact at both shapes; only the side output is wrong, at the second.
    assert first["passed"] and all(o["passed"] for o in first["outputs"].values())
    assert second["outputs"]["logits"]["passed"] and not second["outputs"]["context"]["passed"]
    assert not second["passed"] and not manifest["parity"]["passed"]
    assert second["outputs"]["context"]["argmax_agreement"] is None  # side outputs: tolerance only
    assert "FAIL shape 2x3x48x80 context" in proc.stdout


def test_a_binary_head_is_gated_on_its_thresholded_labels(tmp_path):
    """One channel: argmax is always 0, so a mis-export that flips foreground pixels (here by less
    than any tolerance: the logits are tiny) is seen only by thresholding, as the head reads them."""
    out = tmp_path / "binary"
    proc = run_cli("export", "--model", "toy_models:faint_binary_net", "--num-classes", "1", "--input-size", "64", "64", "-o", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "label agreement" in proc.stderr and "Traceback" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    head = {k: manifest["output"][k] for k in ("kind", "activation", "threshold")}
    assert head == {"kind": "binary", "activation": "none", "threshold": 0.0}
    first, second = manifest["parity"]["shapes"]
    assert first["passed"] and first["reference_classes_seen"] == 2
    assert second["max_abs_diff"] <= DEFAULT_MAX_ABS_DIFF and second["argmax_agreement"] < 0.99 and not second["passed"]


def test_thresholds_are_configurable(tmp_path):
    from cli import assert_clean_error

    # FP32 kernels of two frameworks differ by ~1e-7: a zero tolerance must fail the gate.
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "32", "32",
                   "--max-abs-diff", "0", "--rtol", "0", "-o", tmp_path / "strict")
    if proc.returncode == 0:  # bit-identical outputs are possible on a tiny model; the limit was still applied
        manifest = json.loads((tmp_path / "strict" / "manifest.json").read_text())
        assert all(s["max_abs_diff"] == 0.0 for s in manifest["parity"]["shapes"])
    else:
        assert proc.returncode == 1 and "limit 0" in proc.stderr
    proc = run_cli("export", "--model", "toy_models:colour_net", "--rtol", "-1", "-o", tmp_path / "x")
    assert_clean_error(proc, 2, "--rtol")


def test_opset_17_uses_the_torchscript_exporter(tmp_path):
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "32", "32",
                   "--opset", "17", "-o", tmp_path / "o17", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["onnx"]["opset"] == 17 and "torchscript" in manifest["onnx"]["exporter"]
    model = onnx.load(str(tmp_path / "o17" / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert manifest["parity"]["passed"]


def test_target_chooses_opset_and_exporter(tmp_path):
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "32", "32",
                   "--target", "jetpack6.0", "-o", tmp_path / "jp", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["onnx"]["target"] == "jetpack6.0" and manifest["onnx"]["opset"] == 17
    assert "torchscript" in manifest["onnx"]["exporter"]


def test_opset_beyond_the_targets_parser_is_refused(tmp_path):
    from cli import assert_clean_error

    proc = run_cli("export", "--model", "toy_models:colour_net", "--target", "jetpack5", "--opset", "18", "-o", tmp_path / "x")
    assert_clean_error(proc, 2, "target 'jetpack5' accepts ONNX opset <= 17")
    proc = run_cli("export", "--model", "toy_models:colour_net", "--target", "jetpak5", "-o", tmp_path / "x")
    assert_clean_error(proc, 2, "unknown target 'jetpak5'", "Did you mean jetpack5")


def test_export_with_dense_crf_node(tmp_path):
    from segdeploy.backend import make_runner
    from segdeploy.manifest import resolve_artifact
    from segdeploy.parity import sample_feed

    out = tmp_path / "crf"
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "64", "64",
                   "--crf", "--crf-param", "iterations=5", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "dense CRF appended (5 iterations)" in proc.stdout
    onnx_path, manifest = resolve_artifact(out)
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["images", "image"] and [o.name for o in graph.output] == ["probabilities", "labels"]
    assert any(n.op_type == "DenseCRF" for n in graph.node)
    assert manifest["crf"]["params"]["iterations"] == 5 and manifest["crf"]["parity"]["passed"]
    # The deployed graph (ONNX Runtime + our kernel as a custom op) and PyTorch + the kernel agree.
    feed = sample_feed((2, 3, 64, 64), manifest, seed=3)
    with make_runner("ort", onnx_path, manifest) as ort_runner, make_runner("torch", onnx_path, manifest) as torch_runner:
        deployed, reference = ort_runner.infer(feed), torch_runner.infer(feed)
    assert deployed["labels"].shape == (2, 64, 64) and deployed["labels"].dtype == np.int32
    np.testing.assert_allclose(deployed["probabilities"].sum(axis=1), 1.0, atol=1e-4)
    assert (deployed["labels"] == reference["labels"]).mean() >= 0.999
    # ...and the device side runs it without torch
    image = tmp_path / "scene.png"
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, 30:, 2] = 255
    from PIL import Image

    Image.fromarray(rgb).save(image)
    infer = run_cli("infer", out, image, "--out", tmp_path / "pred", block_torch=True)
    assert infer.returncode == 0, infer.stderr


def test_unknown_crf_parameter_is_bad_input(tmp_path):
    from cli import assert_clean_error

    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "3", "--input-size", "32", "32",
                   "--crf", "--crf-param", "theta=3", "-o", tmp_path / "x")
    assert_clean_error(proc, 2, "unknown CRF parameter(s) theta")


def test_the_limit_scales_with_the_whole_reference_and_missing_outputs_fail_by_name():
    from segdeploy.parity import Thresholds, compare_all_outputs

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    logits[0, 0, 0, 0] = 1e4  # one large value sets the scale for every element, zero crossings included
    near_zero = np.abs(logits).argmin()
    nudged = logits.copy()
    nudged.flat[near_zero] += 0.05  # within 1e-3 + 1e-5 * 1e4 = 0.101
    result = compare_all_outputs({"logits": logits, "aux": logits}, {"logits": nudged}, Thresholds(), (1, 3, 8, 8), "logits")
    logits_result, aux_result = result.outputs
    assert logits_result.passed and logits_result.limit == pytest.approx(0.101)
    assert not aux_result.passed and not result.passed and result.failed_output.output == "aux"
    assert "missing" in result.failed_output.describe()
