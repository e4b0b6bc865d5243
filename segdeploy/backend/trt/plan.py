"""The build plan: everything a TensorRT build needs, resolved and checked without TensorRT.

``plan_build`` turns an artifact and the ``segdeploy build`` options into a :class:`BuildPlan` -
precision, profile, target release, plugins, lint - and refuses what the target cannot build
before any build starts. The build itself (``build.py``) and the equivalent ``trtexec`` command
(``trtexec.py``) both read the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..._native import find_packaged_library
from ...errors import BadInputError
from ...lint import custom_nodes, errors, lint_onnx
from ...onnx_io import graph_inputs, open_artifact, static_dims, tensor_dims
from ...targets import TARGETS, get_target
from .profile import ShapeRange, derived_profile, format_shape, resolve_profile
from .releases import FEATURES, HARDWARE_COMPAT_LEVEL, Release

#: A build's output folder: the plain serialized plan, and its engine.json (``engine_json.py``).
ENGINE_NAME = "model.engine"
ENGINE_MANIFEST = "engine.json"
PRECISIONS = ("fp32", "fp16", "int8")
#: The TensorRT plugin library built from kernels/trt_plugin (IPluginV3 creators exported through getCreators()).
PLUGIN_LIB_NAMES = {"linux": "libsegdeploy_trt_plugin.so", "win32": "segdeploy_trt_plugin.dll"}
PLUGIN_LIB_ENV = "SEGDEPLOY_TRT_PLUGIN_LIB"
#: The GPU architectures TensorRT for RTX 1.x compiles for (ComputeCapability.SM75 .. SM121):
#: Turing, Ampere (8.0, 8.6), Ada, Blackwell (12.0, 12.1).
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


def parse_compute_capabilities(text: str) -> list[str]:
    """``"86,89"`` or ``"8.6, 12.0"`` -> ``["8.6", "8.9"]``, each one TensorRT for RTX compiles for."""
    found = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        value = item if "." in item else f"{item[:-1]}.{item[-1:]}"
        if value not in RTX_COMPUTE_CAPABILITIES:
            raise BadInputError(f"--compute-capability {item!r}: TensorRT for RTX compiles for "
                                f"{', '.join(c.replace('.', '') for c in RTX_COMPUTE_CAPABILITIES)} (Turing 75, "
                                "Ampere 80/86, Ada 89, Blackwell 120/121); datacenter Hopper (90) and Jetson are not RTX GPUs")
        if value not in found:
            found.append(value)
    if not found:
        raise BadInputError("--compute-capability: give one or more, e.g. 86,89")
    return found


def plugin_library_path() -> Path:
    """Where segdeploy's TensorRT plugin library is: $SEGDEPLOY_TRT_PLUGIN_LIB, else ``segdeploy/_lib``."""
    return find_packaged_library(PLUGIN_LIB_ENV, PLUGIN_LIB_NAMES)


def default_timing_cache(target_name: str, gpu: str | None = None) -> Path:
    """The persisted timing cache: one per target (and GPU when known) under the user's cache folder."""
    root = Path(os.environ.get("SEGDEPLOY_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segdeploy")
    suffix = f"-sm{gpu.replace('.', '')}" if gpu else ""
    return root / "tensorrt" / f"timing-{target_name}{suffix}.cache"


@dataclass
class BuildPlan:
    """Everything a build needs, resolved and checked without TensorRT."""

    onnx_path: Path
    manifest: dict
    target: object  # segdeploy.targets.Target
    precision: str
    input_name: str
    onnx_dims: list
    profile: ShapeRange
    output_dir: Path
    #: Further inputs (the dense CRF's uint8 image): name -> profile derived from the image input's.
    extra_profiles: dict[str, ShapeRange] = field(default_factory=dict)
    extra_dims: dict[str, list] = field(default_factory=dict)
    workspace_mib: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    timing_cache: Path | None = None
    opt_level: int | None = None
    version_compatible: bool = False
    hardware_compat: bool = False
    #: TensorRT for RTX: the compute capabilities to compile for ("8.6"); empty: the GPU present.
    compute_capabilities: list[str] = field(default_factory=list)
    plugins: list[Path] = field(default_factory=list)
    custom_ops: list[str] = field(default_factory=list)
    lint: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Where ``manifest`` came from: "manifest.json", or "graph" for a bare ONNX file described from its graph.
    manifest_source: str = "manifest.json"

    @property
    def engine_path(self) -> Path:
        return self.output_dir / ENGINE_NAME

    @property
    def engine_manifest_path(self) -> Path:
        return self.output_dir / ENGINE_MANIFEST

    @property
    def release(self) -> Release:
        return Release.of_target(self.target)

    @property
    def trt_version(self) -> tuple[int, ...]:
        return self.release.version

    @property
    def strong_typing(self) -> str | None:
        return self.release.strong_typing

    @property
    def precision_flags(self) -> list[str]:
        return self.release.precision_flags(self.precision)

    @property
    def dynamic_input(self) -> bool:
        return any(d is None for d in self.onnx_dims) or any(None in d for d in self.extra_dims.values())

    @property
    def profiles(self) -> dict[str, ShapeRange]:
        """Every input's range: the image input's first."""
        return {self.input_name: self.profile, **self.extra_profiles}

    def settings(self) -> dict:
        """The build settings as engine.json records them."""
        return {
            "strongly_typed": self.strong_typing is not None,
            "precision_flags": self.precision_flags,
            "tf32": False,
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.opt_level,
            "version_compatible": self.version_compatible,
            "hardware_compatibility_level": HARDWARE_COMPAT_LEVEL if self.hardware_compat else None,
            "dla": {"core": self.dla_core, "gpu_fallback": self.gpu_fallback} if self.dla_core is not None else None,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "edition": self.target.edition,
            "compute_capabilities": list(self.compute_capabilities) or None,
        }


def plan_build(
    artifact,
    *,
    precision: str | None = None,
    target: str | None = None,
    batch: str | None = None,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    output: str | os.PathLike | None = None,
    workspace_mib: int | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    timing_cache: str | os.PathLike | None = None,
    opt_level: int | None = None,
    version_compatible: bool = False,
    hardware_compat: bool = False,
    compute_capability: str | None = None,
    require_plugins: bool = True,
) -> BuildPlan:
    """Resolve and check a build of ``artifact`` (folder or ONNX file with its manifest).

    A bare ONNX file (no manifest beside it) is described from its graph (``adopt.describe_onnx``);
    FP16 weights behind Casts and opsets 11/12 go to the parser as they are.

    Raises BadInputError for anything the target cannot build: a precision the artifact is not
    typed for, a profile outside the ONNX input's static dimensions, options the target's
    TensorRT lacks (``compute_capability``, e.g. ``"86,89"``, is TensorRT for RTX's), lint errors,
    a missing plugin library (when ``require_plugins``).
    """
    opened = open_artifact(artifact)
    onnx_path, manifest, model = opened.onnx_path, opened.manifest, opened.model
    if manifest is None:
        # A bare ONNX file of a user's: the input name, dims, channels and output reading come from its graph
        # (adopt.describe_onnx); engines take raw tensors, so the normalisation need not be known to build.
        from ...adopt import describe_onnx

        manifest = describe_onnx(onnx_path, need_normalisation=False, model=model)
        opened.manifest = manifest
        described = True
    else:
        described = False
    precision = _check_precision(onnx_path, manifest, precision)
    build_target = get_target(target or manifest.get("onnx", {}).get("target") or None)
    if build_target.runtime != "tensorrt":
        choices = ", ".join(name for name, t in TARGETS.items() if t.runtime == "tensorrt")
        raise BadInputError(f"target {build_target.name} runs on ONNX Runtime; give a TensorRT target with --target "
                            f"({choices})")

    image = opened.image_input()
    dims = static_dims(image)
    try:
        profile = resolve_profile(dims, manifest.get("input", {}), batch, min_shape, opt_shape, max_shape)
    except BadInputError as exc:
        raise BadInputError(f"{onnx_path}: {exc}") from None
    extra_dims, extra_profiles = {}, {}
    for other in graph_inputs(model):
        if other is not image:
            extra_dims[other.name], extra_profiles[other.name] = derived_profile(
                other.name, tensor_dims(other), image.name, tensor_dims(image), profile, where=f"{onnx_path}: ")

    plan = BuildPlan(
        onnx_path=onnx_path, manifest=manifest, target=build_target, precision=precision, input_name=image.name,
        onnx_dims=dims, profile=profile, output_dir=Path(output) if output else onnx_path.parent,
        extra_profiles=extra_profiles, extra_dims=extra_dims,
        workspace_mib=workspace_mib, dla_core=dla_core, gpu_fallback=gpu_fallback,
        timing_cache=Path(timing_cache) if timing_cache else None, opt_level=opt_level,
        version_compatible=version_compatible, hardware_compat=hardware_compat,
        manifest_source="graph" if described else "manifest.json",
    )
    if compute_capability is not None:
        if not plan.release.has("compute_capabilities"):
            raise BadInputError(f"--compute-capability: {build_target.runtime_name} (target {build_target.name}) builds "
                                "for the GPU it runs on; naming GPU architectures is TensorRT for RTX's (--target rtx)")
        plan.compute_capabilities = parse_compute_capabilities(compute_capability)
    _check_options(plan)

    plan.lint = lint_onnx(onnx_path, build_target, dla=dla_core is not None, gpu_fallback=gpu_fallback)
    failed = errors(plan.lint)
    if failed:
        listing = "; ".join(str(f) for f in failed[:8])
        more = f" (and {len(failed) - 8} more)" if len(failed) > 8 else ""
        raise BadInputError(f"{onnx_path}: {build_target.runtime_name} (target {build_target.name}) cannot "
                            f"build this graph: {listing}{more}. `segdeploy lint` lists every finding")

    customs = custom_nodes(model)
    if customs:
        plan.custom_ops = sorted({f"{n.domain}::{n.op_type}" for n in customs})
        library = plugin_library_path()
        plan.plugins = [library]
        if require_plugins and not library.is_file():
            raise BadInputError(
                f"{onnx_path}: has segdeploy custom nodes ({', '.join(plan.custom_ops)}) that TensorRT runs through "
                f"segdeploy's plugin library, and {library} does not exist; build it from kernels/ on a machine with "
                f"TensorRT's headers (pip install . there) or point {PLUGIN_LIB_ENV} at it")
    return plan


def _check_precision(onnx_path: Path, manifest: dict, precision: str | None) -> str:
    """The engine's precision: the artifact's, which an explicit ``precision`` must match."""
    artifact_precision = manifest.get("onnx", {}).get("precision", "fp32")
    precision = precision or artifact_precision
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision != artifact_precision:
        tool = {"fp16": "segdeploy fp16", "int8": "segdeploy quantize", "fp32": "segdeploy export"}[precision]
        raise BadInputError(
            f"{onnx_path}: is a {artifact_precision} artifact; engines are built from the ONNX file typed for their "
            f"precision, so --precision {precision} needs the {precision} artifact ({tool} writes it)")
    return precision


def _check_options(plan: BuildPlan) -> None:
    target, release = plan.target, plan.release
    where = f"{target.runtime_name} (target {target.name})"
    for wanted, option, feature in ((plan.opt_level is not None, "--opt-level", "builder_optimization_level"),
                                    (plan.version_compatible, "--version-compatible", "version_compatible"),
                                    (plan.hardware_compat, "--hardware-compat", "hardware_compatibility_level")):
        if wanted and not release.reaches(feature):
            raise BadInputError(f"{option} needs TensorRT {FEATURES[feature].first} or newer; {where} lacks it")
    if plan.opt_level is not None and not 0 <= plan.opt_level <= 5:
        raise BadInputError(f"--opt-level {plan.opt_level}: TensorRT's builder optimization levels are 0..5")
    if plan.workspace_mib is not None and plan.workspace_mib < 1:
        raise BadInputError("--workspace must be at least 1 MiB")
    if plan.hardware_compat and not release.has("hardware_compatibility_level"):
        raise BadInputError("--hardware-compat makes engines portable across desktop GPUs (Ampere and newer); Jetson "
                            "engines are built on the device for its own GPU")
    if plan.gpu_fallback and plan.dla_core is None:
        raise BadInputError("--gpu-fallback applies to DLA builds: give --dla-core N too")
    if plan.dla_core is not None:
        _check_dla(plan, release)


def _check_dla(plan: BuildPlan, release: Release) -> None:
    if plan.dla_core < 0:
        raise BadInputError("--dla-core must be 0 or more")
    if not release.has("dla"):
        jetsons = ", ".join(name for name, t in TARGETS.items() if t.tensorrt and Release.of_target(t).has("dla"))
        raise BadInputError(f"--dla-core: target {plan.target.name} is a desktop/server GPU; DLA cores are on Jetson "
                            f"Xavier/Orin (targets {jetsons})")
    if plan.hardware_compat:
        raise BadInputError("--hardware-compat does not apply to DLA engines")
    if plan.precision == "fp32":
        raise BadInputError("DLA computes in FP16 and INT8 only: build the fp16 or int8 artifact for --dla-core")
    if not all(p.fixed for p in plan.profiles.values()):
        raise BadInputError(
            f"DLA runs fixed shapes: the profile ranges from {format_shape(plan.profile.min)} to "
            f"{format_shape(plan.profile.max)}; use --batch N:N:N and --min = --opt = --max")
