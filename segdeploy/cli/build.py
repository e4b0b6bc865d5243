from __future__ import annotations

import click

from ..backend.trt.build import build_engine
from ..backend.trt.loader import TensorRTMissingError, import_tensorrt, use_edition
from ..backend.trt.plan import plan_build
from ..backend.trt.profile import format_shape
from ..backend.trt.releases import FEATURES
from ..backend.trt.trtexec import format_command, trtexec_args
from .common import echo_json, json_option, progress_status


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Engine precision; must be the artifact's (build fp16/int8 from the fp16/int8 artifact). Default: the artifact's.")
@click.option("--target", help="jetpack5, jetpack6.0, jetpack6.2, trt10, trt11 or rtx (TensorRT for RTX): sets the "
                                "TensorRT release's rules. Default: the artifact's.")
@click.option("--compute-capability", metavar="CC[,CC]",
              help="TensorRT for RTX: the RTX GPUs to compile for, e.g. 86,89 (Turing 75, Ampere 80/86, Ada 89, "
                   "Blackwell 120/121); builds on any machine, GPU or not. Default: the GPU present.")
@click.option("--batch", metavar="N|MIN:OPT:MAX", help="Batch range of the profile: N means 1..N tuned for N.  [default: 1]")
@click.option("--min", "min_shape", metavar="NxCxHxW|HxW", help="Smallest input shape of the profile.")
@click.option("--opt", "opt_shape", metavar="NxCxHxW|HxW", help="Shape TensorRT tunes for. Default: the manifest's input size.")
@click.option("--max", "max_shape", metavar="NxCxHxW|HxW", help="Largest input shape of the profile.")
@click.option("--workspace", "workspace_mib", type=click.IntRange(1), metavar="MiB",
              help="Workspace memory pool limit. Default: TensorRT's.")
@click.option("--dla-core", type=click.IntRange(0), metavar="N", help="Run on DLA core N (Jetson Xavier/Orin; fp16/int8, fixed shapes).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: layers DLA cannot run go to the GPU.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Timing cache to reuse and update.  [default: ~/.cache/segdeploy/tensorrt/]")
@click.option("--opt-level", type=click.IntRange(0, 5),
              help=f"Builder optimization level 0-5 (TensorRT >= {FEATURES['builder_optimization_level'].first}). "
                   "Default: TensorRT's (3).")
@click.option("--version-compatible", is_flag=True,
              help=f"Engine runs on this and newer TensorRT releases (TensorRT >= {FEATURES['version_compatible'].first}).")
@click.option("--hardware-compat", is_flag=True,
              help=f"Engine runs on any Ampere or newer desktop GPU (TensorRT >= {FEATURES['hardware_compatibility_level'].first}).")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Folder for model.engine and engine.json. Default: ARTIFACT.")
@click.option("--print-trtexec", is_flag=True, help="Print the equivalent trtexec command and exit, without building.")
@json_option
def build(artifact, precision, target, compute_capability, batch, min_shape, opt_shape, max_shape, workspace_mib, dla_core, gpu_fallback,
          timing_cache, opt_level, version_compatible, hardware_compat, output, print_trtexec, as_json):
    """Build a TensorRT engine from ARTIFACT (an export/fp16/quantize folder).

    Writes OUTPUT/model.engine - the plain serialized plan, which trtexec and C++ load
    untouched - and OUTPUT/engine.json: TensorRT/CUDA versions, GPU, Jetson release,
    precision, profile, I/O tensors, classes, normalisation and sha256s. The graph is linted
    for the target first. TensorRT 10 builds strongly typed networks (11 always does), so the
    artifact's ONNX types are the precision; TensorRT 8.x gets the FP16/INT8 builder flags.
    segdeploy custom nodes (the dense CRF) load segdeploy's plugin library first. The timing
    cache is kept and reused between builds.

    --target rtx builds with TensorRT for RTX (pip install 'segdeploy[rtx]') for RTX desktop
    GPUs, Turing to Blackwell: with --compute-capability it compiles ahead of time on any
    machine, without a GPU; its kernels are JIT-compiled on the user's GPU at first run.

    Without TensorRT's Python package this exits 2 and prints the equivalent trtexec command
    (on a Jetson: /usr/src/tensorrt/bin/trtexec); --print-trtexec prints it in any case.

    \b
    Examples:
      segdeploy build artifacts/deeplabv3plus --target trt11 --batch 4
      segdeploy build out_fp16 --target jetpack6.2 --opt 512x1024 --timing-cache orin.cache
      segdeploy build out_int8 --target jetpack6.2 --dla-core 0 --gpu-fallback
      segdeploy build out --min 1x3x256x256 --opt 1x3x512x512 --max 4x3x1024x1024
      segdeploy build out --target jetpack6.0 --print-trtexec
      segdeploy build out --target rtx --compute-capability 86,89   # no GPU needed
    """
    plan = plan_build(
        artifact, precision=precision, target=target, batch=batch, min_shape=min_shape, opt_shape=opt_shape,
        max_shape=max_shape, output=output, workspace_mib=workspace_mib, dla_core=dla_core, gpu_fallback=gpu_fallback,
        timing_cache=timing_cache, opt_level=opt_level, version_compatible=version_compatible,
        hardware_compat=hardware_compat, compute_capability=compute_capability, require_plugins=not print_trtexec,
    )
    for finding in plan.lint:
        if finding.severity == "warning":
            click.echo(f"lint {finding}", err=True)
    if print_trtexec:
        _print_trtexec(plan, as_json)
        return
    use_edition(plan.target.edition)
    try:
        import_tensorrt()
    except TensorRTMissingError:
        _print_trtexec(plan, as_json)
        click.echo(f"{plan.release.product}'s Python package is not installed here: the command above builds the same "
                   "engine (on a Jetson: /usr/src/tensorrt/bin/trtexec).", err=True)
        raise
    with progress_status(not as_json) as progress:
        manifest = build_engine(plan, progress)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(manifest)
        return
    profile = plan.profile
    click.echo(f"built {plan.engine_path} ({manifest['engine']['bytes'] / 1e6:.1f} MB) in "
               f"{manifest['engine']['build_seconds']:.1f} s: {plan.precision}, {plan.release.product} {manifest['tensorrt']['version']}, "
               f"{_built_for(plan, manifest)}, profile {format_shape(profile.min)} .. {format_shape(profile.max)} "
               f"(opt {format_shape(profile.opt)})")
    click.echo(f"wrote {plan.engine_manifest_path}" + (f"; timing cache {plan.timing_cache}" if plan.timing_cache else ""))
    click.echo(f"check it: segdeploy verify {plan.output_dir}")


def _built_for(plan, manifest: dict) -> str:
    if plan.compute_capabilities:
        return "for compute capability " + ", ".join(plan.compute_capabilities)
    return str((manifest.get("gpu") or {}).get("name"))


def _print_trtexec(plan, as_json: bool) -> None:
    args = trtexec_args(plan)
    if as_json:
        echo_json({"trtexec": args, "command": format_command(args, multiline=False), "engine": str(plan.engine_path)})
    else:
        click.echo(format_command(args))
    if plan.plugins and not plan.plugins[0].is_file():
        click.echo(f"warning: the plugin library {plan.plugins[0]} does not exist yet; build it from kernels/ first", err=True)
