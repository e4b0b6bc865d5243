"""TensorRT engines: the build plan, the ``engine.json`` sidecar, and ``verify``.

Everything here but :func:`build_engine` and :func:`verify_engine` runs without TensorRT: the
plan (precision, profile, target release, plugins, lint), the equivalent ``trtexec`` command
(:mod:`segdeploy.trtexec`), and the sidecar's validation.

Layout of a built engine (``segdeploy build ARTIFACT`` writes it into ARTIFACT by default)::

    model.engine   the plain serialized plan: trtexec --loadEngine and C++ load it untouched
    engine.json    segdeploy.engine/1: versions, GPU, precision, profile, I/O, classes, normalisation, sha256s

TensorRT releases (``Target.tensorrt``):

* 8.5 / 8.6 (JetPack 5 / 6.0): weakly typed networks; the FP16/INT8 artifact's precision is
  enabled with the FP16/INT8 builder flags (explicit Q/DQ for INT8, no calibrator).
* 10.x: strongly typed networks, opted into with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  (``trtexec --stronglyTyped``): the ONNX file's types are the precision; no precision flags.
* 11.x: every network is strongly typed (the flag is deprecated there and not set).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import BadInputError, SegdeployError, VerificationError
from .fileio import sha256_file, write_json
from .manifest import MANIFEST_NAME, resolve_artifact

ENGINE_NAME = "model.engine"
ENGINE_MANIFEST = "engine.json"
ENGINE_SCHEMA = "segdeploy.engine/1"
PRECISIONS = ("fp32", "fp16", "int8")
#: The TensorRT plugin library built from kernels/trt_plugin (IPluginV3 creators exported through getCreators()).
PLUGIN_LIB_NAMES = {"linux": "libsegdeploy_trt_plugin.so", "win32": "segdeploy_trt_plugin.dll"}
PLUGIN_LIB_ENV = "SEGDEPLOY_TRT_PLUGIN_LIB"
#: trtexec's home on JetPack, where it is not on PATH.
JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
#: Hardware compatibility level segdeploy builds with (``--hardware-compat``).
HARDWARE_COMPAT_LEVEL = "ampere+"
#: Default verify thresholds per precision: engine vs the FP32 ONNX in ONNX Runtime.
VERIFY_THRESHOLDS = {"fp32": (1e-3, 0.9999), "fp16": (0.5, 0.99), "int8": (5.0, 0.98)}


# --------------------------------------------------------------------------- versions

def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; ``"11"`` -> ``(11,)``."""
    match = re.match(r"^\s*(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def strong_typing(version: tuple[int, ...]) -> str | None:
    """How the release types networks: ``None`` (weak, 8.x), ``"flag"`` (10.x opt-in), ``"always"`` (11+)."""
    major = version[0]
    if major >= 11:
        return "always"
    if major >= 10:
        return "flag"
    return None


def precision_flags(version: tuple[int, ...], precision: str) -> list[str]:
    """Builder precision flags: only weakly typed releases (8.x) have and need them."""
    if strong_typing(version) or precision == "fp32":
        return []
    return [precision]


def jetpack_release(l4t: str | None) -> str | None:
    """The JetPack release of an L4T release (``R36.4.3`` -> ``6.2``), when known."""
    if not l4t:
        return None
    table = [
        ("R38.2", "7.0"), ("R36.4.4", "6.2.1"), ("R36.4.3", "6.2"), ("R36.4", "6.1"), ("R36.3", "6.0"),
        ("R36.2", "6.0 DP"), ("R35.6", "5.1.4"), ("R35.5", "5.1.3"), ("R35.4", "5.1.2"), ("R35.3", "5.1.1"),
        ("R35.2", "5.1"), ("R35.1", "5.0.2"), ("R32.7", "4.6.x"),
    ]  # fmt: skip
    for prefix, jetpack in table:
        if l4t == prefix or l4t.startswith(prefix + "."):
            return jetpack
    return None


# --------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization profile: min/opt/max NCHW shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max

    def contains(self, shape) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> "ShapeRange":
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def format_shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def parse_shape(text: str, option: str = "shape") -> tuple[int, ...]:
    """``"1x3x512x512"`` (N, C, H, W) or ``"512x512"`` (H, W); commas work as separators too."""
    parts = [p for p in re.split(r"[x,×]", str(text).strip().lower()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) not in (2, 4) or min(dims, default=0) < 1:
        raise BadInputError(f"{option} {text!r}: expected NxCxHxW (e.g. 1x3x512x512) or HxW of positive integers")
    return dims


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"4"`` -> (1, 4, 4): batches 1..4, tuned for 4; ``"1:2:8"`` -> min:opt:max."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = [1, values[0], values[0]]
    if len(values) != 3 or min(values) < 1 or not values[0] <= values[1] <= values[2]:
        raise BadInputError(f"--batch {text!r}: expected N (batches 1..N) or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return tuple(values)


def resolve_profile(dims: list, spec: dict, batch=None, min_shape=None, opt_shape=None, max_shape=None) -> ShapeRange:
    """The optimization profile for an input with ONNX dimensions ``dims`` (None where dynamic).

    Defaults come from the manifest: its ``input.shape_range`` (``{"min", "opt", "max"}`` NCHW)
    when present, else batch 1..1 (``--batch``) at the manifest's size. ``--min/--opt/--max``
    take NCHW or HxW (the batch then comes from ``--batch``). Static ONNX dimensions must be
    met; H and W must be multiples of the manifest's ``size_multiple``.
    """
    if len(dims) != 4:
        raise BadInputError(f"expected an NCHW image input, found {len(dims)} dimensions")
    batches = parse_batch(batch) if batch is not None else None
    channels = dims[1] or 3
    size = spec.get("size") or [None, None]
    height, width = dims[2] or size[0], dims[3] or size[1]
    declared = spec.get("shape_range")
    if declared:
        base = ShapeRange.from_json(declared)
    else:
        if not height or not width:
            raise BadInputError("the input's height and width are dynamic and the manifest gives no size: pass --opt HxW")
        static = (dims[0] or 1, channels, height, width)
        base = ShapeRange(static, static, static)
    if batches:
        base = ShapeRange(*[(b, *s[1:]) for b, s in zip(batches, (base.min, base.opt, base.max))])

    def full(value, batch_from, which):
        """NCHW from --min/--opt/--max; an HxW value takes its batch from ``batch_from``."""
        dims4 = parse_shape(value, f"--{which}")
        return (batch_from[0], channels, *dims4) if len(dims4) == 2 else dims4

    given = {k: v for k, v in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)) if v is not None}
    if set(given) == {"opt"}:
        # Like trtexec's --optShapes alone: one spatial shape; the batch range stays.
        lo, mid, hi = (full(given["opt"], b, "opt") for b in (base.min, base.opt, base.max))
        if len(parse_shape(given["opt"])) == 4:
            lo = hi = mid
    else:
        lo = full(given["min"], base.min, "min") if "min" in given else base.min
        hi = full(given["max"], base.max, "max") if "max" in given else base.max
        if "opt" in given:
            mid = full(given["opt"], base.opt, "opt")
        else:  # the manifest's shape, clamped into the range
            mid = tuple(min(max(o, a), b) for o, a, b in zip(base.opt, lo, hi))
    profile = ShapeRange(lo, mid, hi)
    _check_profile(profile, dims, spec)
    return profile


def _check_profile(profile: ShapeRange, dims: list, spec: dict) -> None:
    shapes = {"min": profile.min, "opt": profile.opt, "max": profile.max}
    for which, shape in shapes.items():
        if len(shape) != 4:
            raise BadInputError(f"--{which} {format_shape(shape)}: expected 4 dimensions (NxCxHxW)")
        for axis, (onnx_dim, value) in enumerate(zip(dims, shape)):
            if onnx_dim and value != onnx_dim:
                name = "NCHW"[axis]
                raise BadInputError(f"--{which} {format_shape(shape)}: the ONNX input's {name} is fixed at {onnx_dim}")
    if not all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max)):
        raise BadInputError(f"the profile must have min <= opt <= max in every dimension; got min {format_shape(profile.min)}, "
                            f"opt {format_shape(profile.opt)}, max {format_shape(profile.max)}")
    multiple = int(spec.get("size_multiple") or 1)
    for which, shape in shapes.items():
        if shape[2] % multiple or shape[3] % multiple:
            raise BadInputError(f"--{which} {format_shape(shape)}: height and width must be multiples of the model's "
                                f"size multiple {multiple}")


# --------------------------------------------------------------------------- plugins

def plugin_library_path() -> Path:
    """Where segdeploy's TensorRT plugin library is: $SEGDEPLOY_TRT_PLUGIN_LIB, else ``segdeploy/_lib``."""
    from .kernels import find_packaged_library

    return find_packaged_library(PLUGIN_LIB_ENV, PLUGIN_LIB_NAMES)


# --------------------------------------------------------------------------- the plan

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
    plugins: list[Path] = field(default_factory=list)
    custom_ops: list[str] = field(default_factory=list)
    lint: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def engine_path(self) -> Path:
        return self.output_dir / ENGINE_NAME

    @property
    def engine_manifest_path(self) -> Path:
        return self.output_dir / ENGINE_MANIFEST

    @property
    def trt_version(self) -> tuple[int, ...]:
        return parse_version(self.target.tensorrt)

    @property
    def strong_typing(self) -> str | None:
        return strong_typing(self.trt_version)

    @property
    def precision_flags(self) -> list[str]:
        return precision_flags(self.trt_version, self.precision)

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
        }


def default_timing_cache(target_name: str, gpu: str | None = None) -> Path:
    """The persisted timing cache: one per target (and GPU when known) under the user's cache folder."""
    root = Path(os.environ.get("SEGDEPLOY_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segdeploy")
    suffix = f"-sm{gpu.replace('.', '')}" if gpu else ""
    return root / "tensorrt" / f"timing-{target_name}{suffix}.cache"


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
    require_plugins: bool = True,
) -> BuildPlan:
    """Resolve and check a build of ``artifact`` (folder or ONNX file with its manifest).

    Raises BadInputError for anything the target cannot build: a precision the artifact is not
    typed for, a profile outside the ONNX input's static dimensions, options the target's
    TensorRT lacks, lint errors, a missing plugin library (when ``require_plugins``).
    """
    from .inspect import load_onnx
    from .lint import custom_nodes, errors, lint_onnx
    from .targets import get_target

    onnx_path, manifest = resolve_artifact(artifact)
    if manifest is None:
        raise BadInputError(f"{onnx_path}: no {MANIFEST_NAME} beside it; build from a segdeploy artifact folder "
                            "(export, fp16 or quantize write one)")
    artifact_precision = manifest.get("onnx", {}).get("precision", "fp32")
    precision = precision or artifact_precision
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision != artifact_precision:
        tool = {"fp16": "segdeploy fp16", "int8": "segdeploy quantize", "fp32": "segdeploy export"}[precision]
        raise BadInputError(
            f"{onnx_path}: is a {artifact_precision} artifact; engines are built from the ONNX file typed for their "
            f"precision, so --precision {precision} needs the {precision} artifact ({tool} writes it)")
    target_name = target or manifest.get("onnx", {}).get("target") or None
    profile_target = get_target(target_name)
    if profile_target.runtime != "tensorrt":
        raise BadInputError(f"target {profile_target.name} runs on ONNX Runtime; give a TensorRT target with --target "
                            "(jetpack5, jetpack6.0, jetpack6.2, trt10, trt11)")
    version = parse_version(profile_target.tensorrt)

    model = load_onnx(onnx_path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    wanted = (manifest.get("input") or {}).get("name")
    image = next((i for i in inputs if i.name == wanted), None) or next(
        (i for i in inputs if len(i.type.tensor_type.shape.dim) == 4 and i.type.tensor_type.elem_type == 1), None)
    if image is None:
        raise BadInputError(f"{onnx_path}: no float32 NCHW image input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    profile = resolve_profile(dims, manifest.get("input", {}), batch, min_shape, opt_shape, max_shape)
    extra_dims, extra_profiles = {}, {}
    for other in inputs:
        if other is not image:
            extra_dims[other.name], extra_profiles[other.name] = _derived_profile(onnx_path, image, other, profile)

    plan = BuildPlan(
        onnx_path=onnx_path, manifest=manifest, target=profile_target, precision=precision, input_name=image.name,
        onnx_dims=dims, profile=profile, output_dir=Path(output) if output else onnx_path.parent,
        extra_profiles=extra_profiles, extra_dims=extra_dims,
        workspace_mib=workspace_mib, dla_core=dla_core, gpu_fallback=gpu_fallback,
        timing_cache=Path(timing_cache) if timing_cache else None, opt_level=opt_level,
        version_compatible=version_compatible, hardware_compat=hardware_compat,
    )
    _check_options(plan, version)

    plan.lint = lint_onnx(onnx_path, profile_target, dla=dla_core is not None,
                          gpu_fallback=gpu_fallback)
    failed = errors(plan.lint)
    if failed:
        listing = "; ".join(str(f) for f in failed[:8])
        more = f" (and {len(failed) - 8} more)" if len(failed) > 8 else ""
        raise BadInputError(f"{onnx_path}: TensorRT {profile_target.tensorrt} (target {profile_target.name}) cannot "
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


def _derived_profile(onnx_path, image, other, profile: ShapeRange) -> tuple[list, ShapeRange]:
    """A further input's range: static dimensions as they are, symbolic ones shared with the image
    input (same name) follow it - the dense CRF's uint8 image (N, H, W, 3) beside images (N, 3, H, W)."""
    axis_of = {d.dim_param: axis for axis, d in enumerate(image.type.tensor_type.shape.dim) if d.dim_param}
    dims, ranges = [], {"min": [], "opt": [], "max": []}
    for d in other.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
            for which in ranges:
                ranges[which].append(d.dim_value)
        elif d.dim_param in axis_of:
            dims.append(None)
            for which, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
                ranges[which].append(shape[axis_of[d.dim_param]])
        else:
            raise BadInputError(f"{onnx_path}: input {other.name!r} has a dynamic dimension {d.dim_param or '?'} that is "
                                f"not one of input {image.name!r}'s, so its profile cannot be derived")
    return dims, ShapeRange(tuple(ranges["min"]), tuple(ranges["opt"]), tuple(ranges["max"]))


def _check_options(plan: BuildPlan, version: tuple[int, ...]) -> None:
    target = plan.target
    release = f"TensorRT {target.tensorrt} (target {target.name})"
    if version < (8, 6):
        for wanted, option in ((plan.opt_level is not None, "--opt-level"), (plan.version_compatible, "--version-compatible"),
                               (plan.hardware_compat, "--hardware-compat")):
            if wanted:
                raise BadInputError(f"{option} needs TensorRT 8.6 or newer; {release} lacks it")
    if plan.opt_level is not None and not 0 <= plan.opt_level <= 5:
        raise BadInputError(f"--opt-level {plan.opt_level}: TensorRT's builder optimization levels are 0..5")
    if plan.workspace_mib is not None and plan.workspace_mib < 1:
        raise BadInputError("--workspace must be at least 1 MiB")
    if plan.hardware_compat and target.name.startswith("jetpack"):
        raise BadInputError("--hardware-compat makes engines portable across desktop GPUs (Ampere and newer); Jetson "
                            "engines are built on the device for its own GPU")
    if plan.gpu_fallback and plan.dla_core is None:
        raise BadInputError("--gpu-fallback applies to DLA builds: give --dla-core N too")
    if plan.dla_core is not None:
        if plan.dla_core < 0:
            raise BadInputError("--dla-core must be 0 or more")
        if not target.name.startswith("jetpack"):
            raise BadInputError(f"--dla-core: target {target.name} is a desktop/server GPU; DLA cores are on Jetson "
                                "Xavier/Orin (targets jetpack5, jetpack6.0, jetpack6.2)")
        if plan.hardware_compat:
            raise BadInputError("--hardware-compat does not apply to DLA engines")
        if plan.precision == "fp32":
            raise BadInputError("DLA computes in FP16 and INT8 only: build the fp16 or int8 artifact for --dla-core")
        if not all(p.fixed for p in plan.profiles.values()):
            raise BadInputError(
                f"DLA runs fixed shapes: the profile ranges from {format_shape(plan.profile.min)} to "
                f"{format_shape(plan.profile.max)}; use --batch N:N:N and --min = --opt = --max")


# --------------------------------------------------------------------------- engine.json

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
    from .lint import lint_report

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
        },
        "reference_onnx": reference_onnx(plan),
        "lint": lint_report(plan.lint, plan.target.name),
        "segdeploy": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_engine_manifest(path, data: dict) -> None:
    write_json(path, data)


def read_engine_manifest(path) -> dict:
    from .manifest import read_json_document

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
    if cc and cc_here and cc != cc_here:
        portable = settings.get("hardware_compatibility_level") == HARDWARE_COMPAT_LEVEL and parse_version(cc_here) >= (8, 0)
        if not portable:
            raise BadInputError(f"{engine_path}: was built for {gpu.get('name')} (compute capability {cc}); this "
                                f"machine's GPU is {gpu_here.get('name')} ({cc_here}): rebuild the engine on this GPU "
                                "(or build with --hardware-compat for Ampere and newer desktop GPUs)")
    elif gpu.get("name") and gpu_here.get("name") and gpu["name"] != gpu_here["name"]:
        warnings.append(f"{engine_path}: built on {gpu['name']}, running on {gpu_here['name']} (same compute "
                        f"capability {cc}); TensorRT tunes for the exact GPU, so rebuild for best speed")
    return warnings


# --------------------------------------------------------------------------- build and verify (need TensorRT)

def build_engine(plan: BuildPlan, progress=lambda message: None) -> dict:
    """Build ``plan`` with TensorRT; writes model.engine and engine.json, returns the engine manifest."""
    from .backend.trt import loader
    from .fileio import atomic_path

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
    wanted, here = plan.trt_version, parse_version(running)
    if wanted[0] != here[0]:
        raise BadInputError(f"target {plan.target.name} is TensorRT {plan.target.tensorrt}, and this machine has TensorRT "
                            f"{running}: build on the target device, or pick the target of this release with --target")
    if len(wanted) > 1 and wanted[:2] != here[:2]:
        plan.notes.append(f"target {plan.target.name} ships TensorRT {plan.target.tensorrt}; this build uses {running}, "
                          "so the engine runs only where that release is installed")


@dataclass
class VerifyReport:
    engine: Path
    reference: Path
    precision: str
    thresholds: object
    results: list
    warnings: list[str]

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_json(self) -> dict:
        return {
            "engine": str(self.engine),
            "reference": str(self.reference),
            "precision": self.precision,
            "thresholds": {"max_abs_diff": self.thresholds.max_abs_diff, "min_agreement": self.thresholds.min_agreement},
            "passed": self.passed,
            "results": [r.to_json() for r in self.results],
            "warnings": self.warnings,
        }


def default_thresholds(precision: str, max_abs_diff=None, min_agreement=None):
    from .parity import Thresholds

    diff, agreement = VERIFY_THRESHOLDS.get(precision, VERIFY_THRESHOLDS["fp32"])
    return Thresholds(diff if max_abs_diff is None else max_abs_diff, agreement if min_agreement is None else min_agreement)


def find_reference(engine_path: Path, manifest: dict, onnx=None) -> Path:
    """The FP32 ONNX to compare with: ``onnx`` or engine.json's ``reference_onnx``, sha256-checked."""
    recorded = manifest.get("reference_onnx") or {}
    if onnx is not None:
        path = Path(onnx)
        if path.is_dir():
            path = path / "model.onnx"
    elif recorded.get("path"):
        path = Path(recorded["path"])
        if not path.is_absolute():
            path = engine_path.parent / path
    else:
        raise BadInputError(f"{engine_path}: engine.json does not name the FP32 ONNX it descends from; give it with --onnx")
    if not path.is_file():
        raise BadInputError(f"{path}: the FP32 ONNX to verify against is not there; give its path with --onnx")
    if recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
        raise BadInputError(f"{path}: is not the FP32 ONNX this engine descends from (sha256 differs from engine.json)")
    return path


def verification_inputs(manifest: dict, images=None, count: int = 4, shapes=None, seed: int = 0):
    """[(input shape, float32 NCHW batch)]: images from a folder at the profile's opt size, or generated pictures
    at the profile's opt, min and max shapes (or ``shapes``)."""
    import numpy as np

    from .parity import sample_images
    from .preprocess import find_images, preprocess_files

    spec = manifest["input"]
    profiles = manifest["profiles"][0]
    if len(profiles) > 1:
        raise BadInputError(f"the engine takes {', '.join(profiles)}: verify feeds single-input engines (images) only")
    profile = ShapeRange.from_json(next(iter(profiles.values())))
    if images is not None:
        files = find_images(images)[:count]
        if not files:
            raise BadInputError(f"{images}: no images (.jpg, .jpeg, .png, .bmp) in this folder")
        batch_size = profile.opt[0]
        batches = []
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            if len(chunk) < profile.min[0]:
                break
            x = preprocess_files(chunk, spec, size=profile.opt[2:])
            batches.append((x.shape, x))
        return batches
    wanted = shapes or list(dict.fromkeys([profile.opt, profile.min, profile.max]))
    for shape in wanted:
        if not profile.contains(shape):
            raise BadInputError(f"input shape {format_shape(shape)} is outside the engine's profile "
                                f"{format_shape(profile.min)} .. {format_shape(profile.max)}")
    return [(tuple(s), np.ascontiguousarray(sample_images(tuple(s), spec, seed=seed + i))) for i, s in enumerate(wanted)]


def verify_engine(engine, onnx=None, images=None, count: int = 4, shapes=None, thresholds=None, seed: int = 0,
                  progress=lambda message: None) -> VerifyReport:
    """Run the engine and the FP32 ONNX (ONNX Runtime, CPU) on the same inputs and compare their first output."""
    from .backend.onnxrt.runner import OnnxrtRunner, SessionFromOnnx
    from .backend.trt.runner import TrtRunner
    from .parity import compare_outputs

    engine_path, manifest = resolve_engine(engine)
    check_engine(manifest, engine_path, running=None)  # the file first: no TensorRT needed to refuse a changed one
    reference = find_reference(engine_path, manifest, onnx)
    thresholds = thresholds or default_thresholds(manifest.get("precision", "fp32"))
    batches = verification_inputs(manifest, images, count, shapes, seed)
    output_name = (manifest.get("output") or {}).get("name") or "logits"
    input_name = next(iter(manifest["profiles"][0]))
    results = []
    with TrtRunner.from_engine(engine_path) as engine_runner, OnnxrtRunner(SessionFromOnnx(reference)) as ort_runner:
        for shape, x in batches:
            progress(f"comparing at {format_shape(shape)}")
            feed = {input_name: x}
            actual = engine_runner.infer(feed)
            expected = ort_runner.infer(feed)
            name = output_name if output_name in actual and output_name in expected else next(iter(expected))
            results.append(compare_outputs(expected[name], actual[name].astype(expected[name].dtype), thresholds, shape))
        warnings = list(engine_runner.warnings)
    return VerifyReport(engine_path, reference, manifest.get("precision", "fp32"), thresholds, results, warnings)


def raise_for_verification(report: VerifyReport) -> None:
    if report.passed:
        return
    worst = max(report.results, key=lambda r: (not r.passed, r.max_abs_diff))
    raise VerificationError(
        f"{report.engine}: differs from {report.reference} at {format_shape(worst.shape)}: max |Δ| "
        f"{worst.max_abs_diff:.3g} (limit {report.thresholds.max_abs_diff:g}), argmax agreement "
        f"{worst.argmax_agreement:.4%} (limit {report.thresholds.min_agreement:.4%})")


__all__ = [
    "BuildPlan", "ShapeRange", "VerifyReport", "build_engine", "check_engine", "engine_manifest", "plan_build",
    "read_engine_manifest", "resolve_engine", "verify_engine", "SegdeployError",
]  # fmt: skip
