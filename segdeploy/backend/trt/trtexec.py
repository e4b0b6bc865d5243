"""The ``trtexec`` command line equivalent to a ``segdeploy build``.

Where TensorRT's Python package is missing - a Jetson outside JetPack's system Python, a CI
machine - ``segdeploy build`` prints this command instead of building; on a Jetson trtexec is
always installed (``/usr/src/tensorrt/bin/trtexec``). The flags that depend on the target's
release come from ``releases.FEATURES``. TF32 is off (``--noTF32``) as in segdeploy's own
builds, so FP32 engines match the ONNX file. For TensorRT for RTX the tool is its SDK's
``tensorrt_rtx``, which names the GPU architectures (``--computeCapabilities``) instead.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from .plan import BuildPlan, default_timing_cache
from .profile import format_shape
from .releases import HARDWARE_COMPAT_LEVEL, trtexec_flag

#: trtexec's home on JetPack, where it is not on PATH.
JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
#: TensorRT for RTX's trtexec (its SDK's bin/; the pip wheel has none).
RTX_TOOL = "tensorrt_rtx"


def find_trtexec(rtx: bool = False) -> str | None:
    """trtexec (or TensorRT for RTX's ``tensorrt_rtx``) on PATH, or JetPack's trtexec; None when there is none."""
    found = shutil.which(RTX_TOOL if rtx else "trtexec")
    if found or rtx:
        return found
    return JETSON_TRTEXEC if Path(JETSON_TRTEXEC).is_file() else None


def _tensor(name: str) -> str:
    # trtexec splits shape specs on ',' and the last ':'; quoted names may hold either.
    return f"'{name}'" if ("," in name or ":" in name) else name


def trtexec_args(plan: BuildPlan, trtexec: str | None = None) -> list[str]:
    """The argument vector of the trtexec command that builds ``plan``'s engine."""
    release = plan.release
    tool = trtexec or find_trtexec(release.rtx) or (RTX_TOOL if release.rtx else "trtexec")
    args = [tool, f"--onnx={plan.onnx_path}", f"--saveEngine={plan.engine_path}"]
    if plan.dynamic_input:
        for which in ("min", "opt", "max"):
            shapes = ",".join(f"{_tensor(name)}:{format_shape(getattr(r, which))}" for name, r in plan.profiles.items())
            args.append(f"--{which}Shapes={shapes}")
    if plan.strong_typing == "flag":
        args.append(trtexec_flag("strongly_typed_flag"))
    args += [trtexec_flag("precision_flags", precision=flag) for flag in plan.precision_flags]
    if release.has("compute_capabilities"):
        # Without named architectures segdeploy builds for the GPU present: tensorrt_rtx's --useGpu.
        capabilities = ",".join(c.replace(".", "") for c in plan.compute_capabilities)
        args.append(trtexec_flag("compute_capabilities", capabilities=capabilities) if capabilities else "--useGpu")
    else:
        args.append("--noTF32")
    if plan.workspace_mib:
        args.append(f"--memPoolSize=workspace:{int(plan.workspace_mib)}")
    if plan.dla_core is not None:
        args.append(trtexec_flag("dla", core=plan.dla_core))
        if plan.gpu_fallback:
            args.append("--allowGPUFallback")
    for library in plan.plugins:
        # segdeploy's plugin library exports getCreators(): IPluginRegistry::loadLibrary loads it.
        args.append(trtexec_flag("ipluginv3", library=library))
    if release.has("timing_cache"):
        args.append(trtexec_flag("timing_cache", path=plan.timing_cache or default_timing_cache(plan.target.name)))
    if plan.opt_level is not None:
        args.append(trtexec_flag("builder_optimization_level", level=plan.opt_level))
    if plan.version_compatible:
        args.append(trtexec_flag("version_compatible"))
    if plan.hardware_compat:
        args.append(trtexec_flag("hardware_compatibility_level", level=HARDWARE_COMPAT_LEVEL))
    args.append("--skipInference")
    return args


def format_command(args: list[str], multiline: bool = True) -> str:
    """Shell-quoted; one flag per line (with ``\\`` continuations) when ``multiline``."""
    quoted = [shlex.quote(a) for a in args]
    if not multiline:
        return " ".join(quoted)
    return " \\\n    ".join(quoted)
