"""The manifest written beside every artifact (``manifest.json``): made, written and read here.

It carries what the device side needs without torch: the input normalisation, the classes,
the tensor names, the shape range, and the provenance of the file (versions, sha256, parity).
``segdeploy/schemas/manifest.schema.json`` describes it.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
from pathlib import Path

from .errors import BadInputError
from .fileio import sha256_file, write_json

SCHEMA = "segdeploy.manifest/1"
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def utc_timestamp() -> str:
    """Now, as the ``created`` field of segdeploy's JSON documents records it."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def onnx_file_section(onnx_path: str | os.PathLike, **fields) -> dict:
    """The manifest's ``onnx`` section for the file at ``onnx_path`` (its hash and size), plus ``fields``."""
    onnx_path = Path(onnx_path)
    return {"file": ONNX_NAME, "sha256": sha256_file(onnx_path), "bytes": onnx_path.stat().st_size, **fields}


def new_manifest(*, model: dict, classes: list[str], input_spec: dict, output: dict, onnx: dict, **sections) -> dict:
    """The manifest of a new FP32 artifact (an export, or a foreign ONNX file taken in)."""
    return {"schema": SCHEMA, "model": model, "classes": classes, "input": input_spec, "output": output,
            "onnx": onnx, **sections, "created": utc_timestamp()}


def derived_manifest(parent: dict, *, onnx: dict, parent_file: dict, versions: dict, **sections) -> dict:
    """The manifest of an artifact made from ``parent``'s (FP16, INT8): the parent's fields, a new
    ``onnx`` section, the ``parent`` it came from, the tools' versions and the step's own sections."""
    manifest = copy.deepcopy(parent)
    manifest["onnx"] = {**manifest.get("onnx", {}), **onnx}
    manifest["parent"] = parent_file
    manifest["versions"] = {**manifest.get("versions", {}), **versions}
    manifest.update(sections)
    manifest["created"] = utc_timestamp()
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` into ``folder`` atomically; returns its path."""
    if manifest.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    path = Path(folder) / MANIFEST_NAME
    write_json(path, manifest)
    return path


def resolve_artifact(path: str | os.PathLike) -> tuple[Path, dict | None]:
    """Accept an artifact folder or an ONNX file; return the ONNX path and its manifest (if any).

    A folder's model is the file its manifest names (``model.onnx`` for exports; an adopted file
    keeps its own name). A manifest beside a file describes that file only when it names it.
    """
    path = Path(path)
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
        onnx_path = path / ((manifest or {}).get("onnx", {}).get("file") or ONNX_NAME)
        if not onnx_path.is_file():
            raise BadInputError(f"{path}: no {onnx_path.name} in this folder (is it a segdeploy artifact folder?)")
        return onnx_path, manifest
    if not path.is_file():
        raise BadInputError(f"{path}: no such file or folder")
    manifest_path = path.parent / MANIFEST_NAME
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    if manifest is not None and manifest.get("onnx", {}).get("file", ONNX_NAME) != path.name:
        manifest = None  # the folder's manifest is another file's
    return path, manifest


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
