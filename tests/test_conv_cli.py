"""``segdeploy plugins`` as a user runs it: a real subprocess of the CLI."""

from __future__ import annotations

import json

import pytest
from cli import assert_clean_error, run_cli
from conv_graphs import NORMALISATION, save_conv_graph


def test_plugins_all_writes_an_artifact_whose_manifest_records_the_nodes(tmp_path):
    source = save_conv_graph(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("plugins", source, "-o", out, "--plugins", "all", "--atrous", "none", "--input-size", 48, 64,
                   *NORMALISATION)
    assert proc.returncode == 0, proc.stderr
    assert "replaced dw1:separable" in proc.stdout and "unmatched grouped" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["node"] for e in manifest["plugins"]["replaced"]} == {"dw1:separable", "dw2:depthwise"}
    # the new artifact runs through the CLI like any other
    infer = run_cli("inspect", out)
    assert infer.returncode == 0, infer.stderr


def test_help_teaches_and_bad_input_exits_2(tmp_path):
    proc = run_cli("plugins", "--help")
    assert proc.returncode == 0 and "Examples:" in proc.stdout and "--atrous" in proc.stdout
    missing = run_cli("plugins", tmp_path / "missing.onnx", "-o", tmp_path / "out")
    assert_clean_error(missing, 2, "missing.onnx")
    source = save_conv_graph(tmp_path)
    dynamic = run_cli("plugins", source, "-o", tmp_path / "out", "--plugins", "none", "--atrous", "all", *NORMALISATION)
    assert_clean_error(dynamic, 2, "--input-size")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_with_plugins_all_rewrites_and_records(tmp_path):
    out = tmp_path / "exported"
    proc = run_cli("export", "--model", "conv_graphs:depthwise_net", "--num-classes", 3, "--input-size", 32, 32,
                   "--target", "cpu", "--plugins", "all", "-o", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and all(p["passed"] for p in manifest["plugins"]["parity"]["shapes"])
    # both depthwise layers are read by a 1x1 Conv alone (the second by the classifier): two separable blocks
    assert [e["kind"] for e in manifest["plugins"]["replaced"]] == ["separable", "separable"]
    assert "replaced" in proc.stdout and manifest["onnx"]["sha256"]
