"""manifest.json, as every command that makes an artifact writes it, against its JSON schema
(segdeploy/schemas/manifest.schema.json): what the device side and other tools may rely on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from cli import export_colour_net, run_cli

from segdeploy.fileio import sha256_file
from segdeploy.fixtures.scenes import generate_scenes, write_scene_folder
from segdeploy.manifest import MANIFEST_NAME, new_manifest, resolve_artifact, write_manifest

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "segdeploy" / "schemas" / "manifest.schema.json").read_text())
NORMALISATION = ("--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--size", "64", "64")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """The artifacts of an export, fp16, INT8 and a foreign ONNX file's INT8, made through the CLI."""
    root = tmp_path_factory.mktemp("manifests")
    calib = write_scene_folder(root / "calib", generate_scenes(8, 64, 64, seed=1), masks=False)
    fp32 = export_colour_net(root / "fp32")
    (root / "foreign").mkdir()
    shutil.copy(fp32 / "model.onnx", root / "foreign" / "theirs.onnx")
    for args in (("fp16", fp32, "-o", root / "fp16"),
                 ("quantize", fp32, "--calib", calib, "--target", "cpu", "-o", root / "int8"),
                 ("quantize", root / "foreign" / "theirs.onnx", "--calib", calib, "--target", "cpu", *NORMALISATION)):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
    return {"fp32": fp32, "fp16": root / "fp16", "int8": root / "int8", "foreign": root / "foreign" / "theirs_int8"}


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8", "foreign"])
def test_every_artifact_manifest_follows_the_schema_and_names_its_file(artifacts, kind):
    onnx_path, manifest = resolve_artifact(artifacts[kind])
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["onnx"]["sha256"] == sha256_file(onnx_path)
    assert manifest["onnx"]["precision"] == {"foreign": "int8"}.get(kind, kind)
    if kind != "fp32":
        assert manifest["parent"]["precision"] == "fp32"


def test_a_manifest_without_the_onnx_files_hash_fails_the_schema(artifacts):
    _, manifest = resolve_artifact(artifacts["fp32"])
    del manifest["onnx"]["sha256"]
    with pytest.raises(jsonschema.ValidationError, match="sha256"):
        jsonschema.validate(manifest, SCHEMA)


def test_write_manifest_writes_only_manifests(tmp_path):
    manifest = new_manifest(model={"name": "m", "args": {}}, classes=["a"], input_spec={}, output={}, onnx={})
    assert write_manifest(tmp_path, manifest) == tmp_path / MANIFEST_NAME
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["schema"] == "segdeploy.manifest/1"
    with pytest.raises(ValueError):
        write_manifest(tmp_path / "other", {"schema": "segdeploy.engine/1"})
    assert not (tmp_path / "other").exists()
