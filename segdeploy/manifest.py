"""The manifest written beside every artifact (``manifest.json``).

It carries what the device side needs without torch: the input normalisation, the classes,
the tensor names, the shape range, and the provenance of the file (versions, sha256, parity).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BadInputError

SCHEMA = "segdeploy.manifest/1"
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def resolve_artifact(path: str | os.PathLike) -> tuple[Path, dict | None]:
    """Accept an artifact folder or an ONNX file; return the ONNX path and its manifest (if any)."""
    path = Path(path)
    if path.is_dir():
        onnx_path = path / ONNX_NAME
        if not onnx_path.is_file():
            raise BadInputError(f"{path}: no {ONNX_NAME} in this folder (is it a segdeploy export folder?)")
    elif path.is_file():
        onnx_path = path
    else:
        raise BadInputError(f"{path}: no such file or folder")
    manifest_path = onnx_path.parent / MANIFEST_NAME
    return onnx_path, (read_manifest(manifest_path) if manifest_path.is_file() else None)


def read_manifest(path: str | os.PathLike) -> dict:
    return read_json_document(path, SCHEMA, "manifest")


def read_json_document(path: str | os.PathLike, schema: str, what: str) -> dict:
    """A JSON object whose ``schema`` field is ``schema``; anything else is a BadInputError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: not a readable {what} ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise BadInputError(f"{path}: not a segdeploy {what} (expected schema {schema!r})")
    return data
