"""Build a planned engine with TensorRT: ``model.engine`` and its ``engine.json``, written atomically."""

from __future__ import annotations

from ...errors import BadInputError, SegdeployError
from ...fileio import atomic_path
from . import loader
from .engine_json import engine_manifest, write_engine_manifest
from .plan import BuildPlan, default_timing_cache, parse_compute_capabilities
from .releases import parse_version


def build_engine(plan: BuildPlan, progress=lambda message: None) -> dict:
    """Build ``plan`` with TensorRT; writes model.engine and engine.json, returns the engine manifest."""
    loader.use_edition(plan.target.edition)
    loader.import_tensorrt()
    try:
        running = loader.runtime_info(gpu_required=not plan.compute_capabilities)
    except SegdeployError as exc:
        if not plan.release.rtx:
            raise
        raise BadInputError(f"{exc}. With no usable GPU here, name the RTX GPUs to build for: --compute-capability "
                            "86,89 (Turing 75, Ampere 80/86, Ada 89, Blackwell 120/121)") from None
    _check_release(plan, running["tensorrt"])
    gpu = running.get("gpu") or {}
    if plan.release.rtx and not plan.compute_capabilities:
        plan.compute_capabilities = parse_compute_capabilities(gpu["compute_capability"])  # the GPU present
    if plan.release.has("timing_cache"):
        if plan.timing_cache is None:
            plan.timing_cache = default_timing_cache(plan.target.name, gpu.get("compute_capability"))
        plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    serialized, seconds, io = loader.build_serialized_engine(plan, progress)
    with atomic_path(plan.engine_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    manifest = engine_manifest(plan, running, io, seconds)
    write_engine_manifest(plan.engine_manifest_path, manifest)
    return manifest


def _check_release(plan: BuildPlan, running: str) -> None:
    """The plan's rules are its target release's: the installed release must be the same major one."""
    wanted, here = plan.trt_version, parse_version(running)
    if wanted[0] != here[0]:
        raise BadInputError(f"target {plan.target.name} is {plan.target.runtime_name}, and this machine has {plan.release.product} "
                            f"{running}: build on the target device, or pick the target of this release with --target")
    if len(wanted) > 1 and wanted[:2] != here[:2]:
        plan.notes.append(f"target {plan.target.name} ships {plan.target.runtime_name}; this build uses {running}, "
                          "so the engine runs only where that release is installed")
