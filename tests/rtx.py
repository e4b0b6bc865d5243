"""Real engines from TensorRT for RTX, built ahead of time for SM86 on this GPU-less machine.

``build_rtx(artifact, out)`` runs ``segdeploy build --target rtx --compute-capability 86`` as a
user would and checks what it wrote; every engine built is recorded in ``BUILT`` (and every
failure in ``FAILED``), which the session summary prints (conftest.py), so CI shows the count.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
from cli import REPO_ROOT, run_cli

NO_RTX = "TensorRT for RTX is not installed (pip install 'segdeploy[rtx]'; make test installs it)"
BUILT: list[str] = []
FAILED: list[str] = []


def rtx_installed() -> bool:
    return importlib.util.find_spec("tensorrt_rtx") is not None


def build_rtx(artifact: Path, out: Path, label: str, *options) -> dict:
    """Build ``artifact`` into ``out`` for SM86; returns its engine.json, checked against the schema."""
    if not rtx_installed():
        pytest.skip(NO_RTX)
    proc = run_cli("build", artifact, "--target", "rtx", "--compute-capability", "86", "-o", out, "--json", *options)
    if proc.returncode != 0:
        FAILED.append(label)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    schema = json.loads((REPO_ROOT / "segdeploy" / "schemas" / "engine.schema.json").read_text())
    jsonschema.validate(manifest, schema)
    assert json.loads((out / "engine.json").read_text()) == manifest
    assert manifest["target"] == "rtx" and manifest["tensorrt"]["edition"] == "rtx"
    assert manifest["tensorrt"]["compute_capabilities"] == ["8.6"] and manifest["tensorrt"]["strongly_typed"]
    assert (out / "model.engine").stat().st_size == manifest["engine"]["bytes"] > 0
    BUILT.append(f"{label} ({manifest['engine']['bytes'] / 1e6:.1f} MB, {manifest['engine']['build_seconds']:.1f} s)")
    return manifest
