"""`segdeploy export --head` and `segdeploy head`, run as a user would: real CLI subprocesses, real
files, ONNX Runtime reading what they wrote."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli import assert_clean_error, run_cli

from segdeploy.backend.onnxrt.runner import OnnxrtRunner
from segdeploy.manifest import read_manifest
from segdeploy.parity import sample_feed

pytest.importorskip("onnxruntime_extensions")


def read_outputs(folder, feed) -> dict:
    with OnnxrtRunner.from_artifact(folder / "model.onnx", read_manifest(folder / "manifest.json")) as runner:
        return runner.infer(feed)


def fixture_export_args(fixture_artifact) -> list:
    """The trained fixture as `segdeploy export` takes it: its factory, weights and classes."""
    manifest = read_manifest(fixture_artifact / "manifest.json")
    width = manifest["model"]["args"]["width"]
    return ["--model", "segdeploy.fixtures.net:tiny_segnet", "--checkpoint", fixture_artifact / "fixture_weights.pt",
            "--num-classes", len(manifest["classes"]), "--model-arg", f"width={width}", "--input-size", 64, 64]


@pytest.mark.slow
def test_export_with_the_fused_labels_head(fixture_artifact, tmp_path):
    out = tmp_path / "labels"
    proc = run_cli("export", *fixture_export_args(fixture_artifact), "--head", "labels", "--fused", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "head labels: output 'labels' uint8 NHW, fused upsample + argmax (half_pixel)" in proc.stdout
    assert proc.stdout.count("ok   shape") == 4  # the gate's two shapes, then the head's two
    manifest = read_manifest(out / "manifest.json")
    assert manifest["parity"]["passed"] and manifest["output"]["head"] == "labels" and manifest["output"]["fused"]
    assert manifest["head"]["source_output"] == "logits" and len(manifest["head"]["parity"]) == 2
    assert manifest["lint"]["errors"] == 0
    feed = sample_feed((2, 3, 64, 64), manifest, seed=11)
    labels = read_outputs(out, feed)["labels"]
    logits = read_outputs(fixture_artifact, feed)["logits"]
    assert labels.dtype == np.uint8 and (labels == logits.argmax(1)).mean() >= 0.9999


@pytest.mark.slow
def test_export_with_probabilities_records_the_head(fixture_artifact, tmp_path):
    out = tmp_path / "probabilities"
    proc = run_cli("export", *fixture_export_args(fixture_artifact), "--head", "probabilities", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["output"]["name"] == "probabilities" and manifest["output"]["activation"] == "softmax"
    assert manifest["head"] == {**manifest["head"], "name": "probabilities", "fused": False}
    probabilities = read_outputs(out, sample_feed((1, 3, 64, 64), manifest))["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_head_command_writes_beside_the_artifact(fixture_artifact, tmp_path):
    source = tmp_path / "fixture"
    shutil.copytree(fixture_artifact, source)
    proc = run_cli("head", source, "--head", "labels")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'fixture_labels' / 'model.onnx'}" in proc.stdout and "label agreement 100.0000%" in proc.stdout
    proc = run_cli("head", source, "--head", "labels", "--fused", "--target", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output_dir"] == str(tmp_path / "fixture_labels_fused")
    assert result["manifest"]["onnx"]["target"] == "cpu" and result["manifest"]["head"]["fused"] is True
    feed = sample_feed((1, 3, 64, 64), result["manifest"], seed=2)
    np.testing.assert_array_equal(read_outputs(tmp_path / "fixture_labels_fused", feed)["labels"],
                                  read_outputs(tmp_path / "fixture_labels", feed)["labels"])


def test_head_command_takes_a_users_onnx_file_with_options(foreign_models, tmp_path):
    model = foreign_models["opset12"]
    proc = run_cli("head", model.path, "--head", "probabilities", "-o", tmp_path / "p")
    assert_clean_error(proc, 2, "--mean and --std")
    assert not (tmp_path / "p").exists()
    proc = run_cli("head", model.path, "--head", "probabilities", "-o", tmp_path / "p",
                   "--mean", ",".join(map(str, model.mean)), "--std", ",".join(map(str, model.std)))
    assert proc.returncode == 0, proc.stderr
    assert read_manifest(tmp_path / "p" / "manifest.json")["output"]["name"] == "probabilities"


def test_every_bad_input_is_one_line_and_exit_2(fixture_artifact, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("x")
    cases = [
        (("head", tmp_path / "missing", "--head", "labels"), "no such file or folder"),
        (("head", fixture_artifact, "--head", "logits", "-o", tmp_path / "a"), "nothing to do"),
        (("head", fixture_artifact, "--head", "probabilities", "--fused", "-o", tmp_path / "b"), "needs --head labels"),
        (("head", fixture_artifact, "--head", "labels", "--fused", "--target", "jetpack6.0", "-o", tmp_path / "c"),
         "target jetpack6.0 has TensorRT 8.6"),
        (("head", fixture_artifact, "--head", "labels", "--target", "trt12", "-o", tmp_path / "d"), "unknown target 'trt12'"),
        (("head", fixture_artifact, "--head", "labels", "-o", notes), "not an artifact folder"),
        (("head", fixture_artifact, "--head", "labels", "-o", fixture_artifact), "is the source model's folder"),
        (("export", "--model", "fcn8s_vgg16", "--head", "labels", "--fused", "--target", "jetpack5", "-o", tmp_path / "e"),
         "IPluginV3"),
    ]
    for args, fragment in cases:
        proc = run_cli(*args)
        assert_clean_error(proc, 2, fragment)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # nothing written for any of them
    proc = run_cli("head", fixture_artifact)
    assert proc.returncode == 2 and "Missing option '--head'" in proc.stderr
