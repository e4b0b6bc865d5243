"""Build a planned engine with TensorRT: ``model.engine`` and its ``engine.json``, written atomically."""

from __future__ import annotations

from ...errors import BadInputError
from ...fileio import atomic_path
from . import loader
from .engine_json import engine_manifest, write_engine_manifest
from .plan import BuildPlan, default_timing_cache
from .releases import parse_version


def build_engine(plan: BuildPlan, progress=lambda message: None) -> dict:
    """Build ``plan`` with TensorRT; writes model.engine and engine.json, returns the engine manifest."""
    loader.import_tensorrt()
    running = loader.runtime_info()
    _check_release(plan, running["tensorrt"])
    if plan.timing_cache is None:
        plan.timing_cache = default_timing_cache(plan.target.name, (running.get("gpu") or {}).get("compute_capability"))
    plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    serialized, seconds = loader.build_serialized_engine(plan, progress)
    with atomic_path(plan.engine_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    progress("reading the engine's inputs and outputs")
    io = loader.engine_io(loader.deserialize(plan.engine_path.read_bytes(), plan.plugins))
    manifest = engine_manifest(plan, running, io, seconds)
    write_engine_manifest(plan.engine_manifest_path, manifest)
    return manifest


def _check_release(plan: BuildPlan, running: str) -> None:
    """The plan's rules are its target release's: the installed release must be the same major one."""
    wanted, here = plan.trt_version, parse_version(running)
    if wanted[0] != here[0]:
        raise BadInputError(f"target {plan.target.name} is TensorRT {plan.target.tensorrt}, and this machine has TensorRT "
                            f"{running}: build on the target device, or pick the target of this release with --target")
    if len(wanted) > 1 and wanted[:2] != here[:2]:
        plan.notes.append(f"target {plan.target.name} ships TensorRT {plan.target.tensorrt}; this build uses {running}, "
                          "so the engine runs only where that release is installed")
