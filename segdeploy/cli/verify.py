from __future__ import annotations

import click

from ..backend.trt.engine_json import resolve_engine
from ..backend.trt.profile import format_shape, parse_shape
from ..backend.trt.verify import LabelsResult, default_thresholds, raise_for_verification, verify_engine
from .common import echo_json, json_option, progress_status


@click.command()
@click.argument("engine", type=click.Path())
@click.option("--onnx", "onnx_path", type=click.Path(), help="The FP32 ONNX to compare with. Default: the one engine.json names.")
@click.option("--images", type=click.Path(file_okay=False),
              help="Folder of images to run (resized to the profile's opt size). Default: generated pictures.")
@click.option("--count", type=click.IntRange(1), default=8, show_default=True, help="At most this many images from --images.")
@click.option("--shape", "shapes", multiple=True, metavar="NxCxHxW",
              help="Input shape of the generated pictures, repeatable. Default: the profile's opt, min and max.")
@click.option("--max-abs-diff", type=click.FloatRange(min=0),
              help="Absolute part of the largest allowed |engine - onnx| (see --rtol). Default by precision: fp32 1e-3, "
                   "fp16 0.5, int8 5.")
@click.option("--rtol", type=click.FloatRange(min=0),
              help="Relative part: the engine may differ by up to max-abs-diff + rtol x the largest |onnx value|, as "
                   "rounding error grows with the logits' scale. 0 makes the limit absolute. Default by precision: "
                   "fp32 1e-5, fp16 1e-2, int8 0.2.")
@click.option("--min-agreement", type=click.FloatRange(0, 1),
              help="Smallest allowed label agreement (argmax; threshold for one-channel binary outputs), 0..1. "
                   "Default by precision: fp32 0.9999, fp16 0.99, int8 0.98.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated pictures.")
@json_option
def verify(engine, onnx_path, images, count, shapes, max_abs_diff, rtol, min_agreement, seed, as_json):
    """Check a TensorRT ENGINE against the FP32 ONNX it was built from.

    ENGINE is a model.engine file or the folder holding it and its engine.json. The engine
    (TensorRT) and the FP32 ONNX (ONNX Runtime, CPU) run on the same inputs - images from a
    folder, or generated pictures at the profile's shapes - and their logits are compared:
    max |Δ| against max-abs-diff + rtol x the largest |onnx value|, and label agreement.
    A model whose head is 'labels' outputs label maps: they are compared directly, by
    agreement alone (--min-agreement).
    Exits 1 when a threshold is missed.
    The engine's sha256, TensorRT version and GPU are checked before it is loaded.

    \b
    Examples:
      segdeploy verify artifacts/deeplabv3plus
      segdeploy verify out_fp16/model.engine --images val/ --count 16
      segdeploy verify out_int8 --min-agreement 0.99 --json
    """
    _, manifest = resolve_engine(engine)
    thresholds = default_thresholds(manifest.get("precision", "fp32"), max_abs_diff, min_agreement, rtol)
    parsed = [parse_shape(s, "--shape") for s in shapes] or None
    if parsed and any(len(s) != 4 for s in parsed):
        raise click.BadParameter("give full NxCxHxW shapes", param_hint="--shape")
    with progress_status(not as_json) as progress:
        report = verify_engine(engine, onnx=onnx_path, images=images, count=count, shapes=parsed, thresholds=thresholds,
                               seed=seed, progress=progress)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json(report.to_json())
    else:
        _print(report)
    raise_for_verification(report)


def _print(report) -> None:
    click.echo(f"{report.engine} ({report.precision}) vs {report.reference} (ONNX Runtime, FP32); "
               f"limits: {report.thresholds.describe()}")
    for r in report.results:
        mark = "ok  " if r.passed else "FAIL"
        if isinstance(r, LabelsResult):
            click.echo(f"  {mark} {format_shape(r.shape):>16}  label maps: agreement {r.agreement:.4%} "
                       f"({r.disagreeing_pixels} pixels differ)  classes seen {r.reference_classes_seen}")
            continue
        click.echo(f"  {mark} {format_shape(r.shape):>16}  max |Δ| {r.max_abs_diff:.3g} ({r.relative_diff:.2g} of max |onnx| "
                   f"{r.reference_max_abs:.3g}, limit {r.limit:.3g})  mean |Δ| {r.mean_abs_diff:.3g}  "
                   f"agreement {r.argmax_agreement:.4%}  classes seen {r.reference_classes_seen}")
    click.echo("passed" if report.passed else "failed")
