"""``engine.json``, the sidecar of every engine: made, written, read and checked here.

A built engine's folder (``segdeploy build ARTIFACT`` writes it into ARTIFACT by default)::

    model.engine   the plain serialized plan: trtexec --loadEngine and C++ load it untouched
    engine.json    segdeploy.engine/1: versions, GPU, precision, profile, I/O, classes, normalisation, sha256s

The sidecar lets a runner refuse an engine this machine cannot deserialize (another TensorRT
release, another GPU, a changed file) before TensorRT sees it, and lets ``verify`` find the FP32
ONNX the engine descends from. ``segdeploy/schemas/engine.schema.json`` describes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ... import __version__
from ...errors import BadInputError
from ...fileio import sha256_file, write_json
from ...lint import lint_report
from ...manifest import read_json_document, utc_timestamp
from .plan import ENGINE_MANIFEST, ENGINE_NAME, BuildPlan
from .releases import HARDWARE_COMPAT_LEVEL, HARDWARE_COMPAT_MIN_CC, parse_version

ENGINE_SCHEMA = "segdeploy.engine/1"


def reference_onnx(plan: BuildPlan) -> dict:
    """The FP32 ONNX file ``verify`` compares against: the artifact itself, or its FP32 parent."""
    if plan.precision == "fp32":
        path, sha = plan.onnx_path, plan.manifest.get("onnx", {}).get("sha256") or sha256_file(plan.onnx_path)
    else:
        parent = plan.manifest.get("parent") or {}
        if not parent.get("onnx"):
            return {"path": None, "sha256": None}
        path, sha = Path(parent["onnx"]), parent.get("sha256")
    return {"path": _relative_to(path, plan.output_dir), "sha256": sha}


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (so a copied tree still resolves), else absolute."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def engine_manifest(plan: BuildPlan, runtime: dict, io: list[dict], build_seconds: float | None,
                    engine_path: Path | None = None) -> dict:
    """engine.json for an engine built from ``plan`` on a machine described by ``runtime``.

    ``runtime`` is :func:`segdeploy.backend.trt.loader.runtime_info`'s dict: ``tensorrt``,
    ``cuda`` (runtime/driver), ``gpu`` (name, compute_capability), ``jetson`` (l4t, jetpack) or None.
    """
    engine_path = Path(engine_path or plan.engine_path)
    manifest = plan.manifest
    plugins = [{"file": p.name, "sha256": sha256_file(p) if p.is_file() else None} for p in plan.plugins]
    return {
        "schema": ENGINE_SCHEMA,
        "engine": {
            "file": engine_path.name,
            "sha256": sha256_file(engine_path),
            "bytes": engine_path.stat().st_size,
            "build_seconds": round(build_seconds, 3) if build_seconds is not None else None,
        },
        "tensorrt": {"version": runtime["tensorrt"], **plan.settings(), "plugins": plugins, "custom_ops": plan.custom_ops},
        "cuda": runtime.get("cuda"),
        "gpu": runtime.get("gpu"),
        "jetson": runtime.get("jetson"),
        "target": plan.target.name,
        "precision": plan.precision,
        "profiles": [{name: shapes.to_json() for name, shapes in plan.profiles.items()}],
        "io": io,
        "model": (manifest.get("model") or {}).get("name"),
        "classes": manifest.get("classes"),
        "input": manifest.get("input"),
        "output": manifest.get("output"),
        "onnx": {
            "path": _relative_to(plan.onnx_path, plan.output_dir),
            "sha256": sha256_file(plan.onnx_path),
            "opset": manifest.get("onnx", {}).get("opset"),
            "precision": plan.precision,
            "target": manifest.get("onnx", {}).get("target"),
            # "graph": a bare ONNX file, its input and output read from the graph (``input.normalisation_known``
            # false: the input normalisation was not given); "manifest.json": an export's or adopted file's.
            "described_from": plan.manifest_source,
        },
        "reference_onnx": reference_onnx(plan),
        "lint": lint_report(plan.lint, plan.target.name),
        "segdeploy": __version__,
        "created": utc_timestamp(),
    }


def _product(edition: str) -> str:
    return "TensorRT for RTX" if edition == "rtx" else "TensorRT"


def write_engine_manifest(path, data: dict) -> None:
    if data.get("schema") != ENGINE_SCHEMA:
        raise ValueError(f"not a {ENGINE_SCHEMA} document")
    write_json(path, data)


def read_engine_manifest(path) -> dict:
    path = Path(path)
    data = read_json_document(path, ENGINE_SCHEMA, "engine manifest")
    for key in ("engine", "tensorrt", "gpu", "profiles", "io"):
        if key not in data:
            raise BadInputError(f"{path}: engine manifest lacks {key!r}")
    return data


def resolve_engine(path) -> tuple[Path, dict]:
    """An engine file or a folder holding ``model.engine``; returns it and its engine.json."""
    path = Path(path)
    if path.is_dir():
        engine_path = path / ENGINE_NAME
    elif path.is_file():
        engine_path = path
    else:
        raise BadInputError(f"{path}: no such engine file or folder")
    if not engine_path.is_file():
        raise BadInputError(f"{path}: no {ENGINE_NAME} in this folder; build one with `segdeploy build ARTIFACT`")
    sidecar = engine_path.parent / ENGINE_MANIFEST
    if not sidecar.is_file():
        raise BadInputError(f"{engine_path}: no {ENGINE_MANIFEST} beside it, so the engine's TensorRT version, GPU and "
                            "input normalisation are unknown; build it with `segdeploy build`")
    return engine_path, read_engine_manifest(sidecar)


def check_engine(manifest: dict, engine_path, running: dict | None, check_hash: bool = True) -> list[str]:
    """Refuse an engine this machine cannot deserialize, before anything is handed to TensorRT.

    ``running`` is the runtime_info() of this machine (None: check the file only). Raises
    BadInputError on a changed engine file, another TensorRT version (a version-compatible
    engine runs on the same or a newer one), or another compute capability (a hardware-
    compatible engine runs on Ampere and newer); returns warnings (another GPU model).
    """
    engine_path = Path(engine_path)
    if check_hash:
        recorded = manifest["engine"].get("sha256")
        if recorded and sha256_file(engine_path) != recorded:
            raise BadInputError(f"{engine_path}: its sha256 differs from the one in {ENGINE_MANIFEST}: the engine "
                                "file was changed or replaced after it was built")
    if running is None:
        return []
    warnings = []
    settings = manifest["tensorrt"]
    built_edition, edition_here = settings.get("edition", "tensorrt"), running.get("edition", "tensorrt")
    if built_edition != edition_here:
        raise BadInputError(f"{engine_path}: was built with {_product(built_edition)} and this process runs "
                            f"{_product(edition_here)}; each runs only its own engines")
    built, here = parse_version(settings["version"]), parse_version(running["tensorrt"])
    if settings.get("version_compatible"):
        if here[:3] < built[:3]:
            raise BadInputError(f"{engine_path}: a version-compatible engine built with TensorRT {settings['version']} "
                                f"needs that release or a newer one; this machine has TensorRT {running['tensorrt']}")
    elif built[:3] != here[:3]:
        raise BadInputError(f"{engine_path}: was built with TensorRT {settings['version']} and this machine has "
                            f"TensorRT {running['tensorrt']}; engines run only on the release that built them: "
                            "rebuild it here with `segdeploy build`")
    gpu, gpu_here = manifest.get("gpu") or {}, running.get("gpu") or {}
    cc, cc_here = gpu.get("compute_capability"), gpu_here.get("compute_capability")
    compiled_for = settings.get("compute_capabilities")
    if compiled_for:  # TensorRT for RTX: the architectures it was compiled for, wherever it was built
        if cc_here and cc_here not in compiled_for:
            raise BadInputError(f"{engine_path}: was compiled for compute capability {', '.join(compiled_for)}; this "
                                f"machine's GPU is {gpu_here.get('name')} ({cc_here}). TensorRT for RTX engines run on "
                                "RTX GPUs (Turing to Blackwell), not on datacenter cards such as Hopper nor on Jetson; "
                                "rebuild with --compute-capability naming this GPU if it is an RTX GPU")
    elif cc and cc_here and cc != cc_here:
        portable = (settings.get("hardware_compatibility_level") == HARDWARE_COMPAT_LEVEL
                    and parse_version(cc_here) >= HARDWARE_COMPAT_MIN_CC)
        if not portable:
            raise BadInputError(f"{engine_path}: was built for {gpu.get('name')} (compute capability {cc}); this "
                                f"machine's GPU is {gpu_here.get('name')} ({cc_here}): rebuild the engine on this GPU "
                                "(or build with --hardware-compat for Ampere and newer desktop GPUs)")
    elif gpu.get("name") and gpu_here.get("name") and gpu["name"] != gpu_here["name"]:
        warnings.append(f"{engine_path}: built on {gpu['name']}, running on {gpu_here['name']} (same compute "
                        f"capability {cc}); TensorRT tunes for the exact GPU, so rebuild for best speed")
    return warnings
