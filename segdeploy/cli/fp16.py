"""``segdeploy fp16``, and the options and report it shares with ``segdeploy quantize``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ..errors import VerificationError
from ..precision.gate import Budget
from ..precision.pipeline import GateSettings, Normalisation, make_fp16
from .common import echo_json, json_option


def _floats(count: int):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            numbers = tuple(float(v) for v in value.split(","))
        except ValueError:
            numbers = ()
        if len(numbers) != count:
            raise click.BadParameter(f"expected {count} comma-separated numbers, got {value!r}")
        return numbers

    return parse


def source_options(command):
    """Input normalisation: required for an ONNX file without a manifest, else an override."""
    for option in reversed([
        click.option("--mean", callback=_floats(3), metavar="R,G,B", help="Per-channel mean on scaled pixels (no manifest: required)."),
        click.option("--std", callback=_floats(3), metavar="R,G,B", help="Per-channel std on scaled pixels (no manifest: required)."),
        click.option("--scale", type=float, help="Pixel scale before mean/std.  [default: 1/255]"),
        click.option("--size", nargs=2, type=click.IntRange(1), metavar="H W",
                     help="Size images are resized to. Default: the manifest's or the graph's."),
    ]):  # fmt: skip
        command = option(command)
    return command


def gate_options(command):
    for option in reversed([
        click.option("--val", "val_dir", type=click.Path(file_okay=False),
                     help="Held-out images to compare with FP32 (recursive; DIR/images + DIR/masks for mIoU)."),
        click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
                     help="Gate: smallest argmax agreement with FP32 (0..1)."),
        click.option("--max-miou-drop", type=click.FloatRange(0), default=0.5, show_default=True,
                     help="Gate: largest mIoU drop in points (with masks)."),
        click.option("--sensitivity/--no-sensitivity", default=True, show_default=True,
                     help="When the gate fails, keep the most sensitive layers in higher precision until it holds."),
        click.option("--sensitivity-images", type=click.IntRange(1), default=8, show_default=True,
                     help="Validation images each layer's sensitivity is scored on."),
        click.option("--target",
                     help="Deployment target (jetpack5, jetpack6.0, jetpack6.2, trt10, trt11, rtx, cpu). Default: the manifest's."),
        click.option("--output", "-o", type=click.Path(file_okay=False),
                     help="Output artifact folder. Default: beside the source, suffixed _fp16/_int8."),
    ]):  # fmt: skip
        command = option(command)
    return json_option(command)


def normalisation(mean, std, scale, size):
    return Normalisation(mean, std, scale, tuple(size) if size else None)


def gate_settings(min_agreement, max_miou_drop, sensitivity, sensitivity_images):
    return GateSettings(Budget(min_agreement, max_miou_drop), sensitivity, sensitivity_images)


@contextlib.contextmanager
def progress_display(enabled: bool):
    """Yield (step message callback, calibration (done, total) callback): rich on a terminal's stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield (lambda message: None), None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as display:
        step = display.add_task("starting", total=None)
        calibration = None

        def calibrated(done: int, total: int) -> None:
            nonlocal calibration
            if calibration is None:
                calibration = display.add_task("calibration images", total=total)
            display.update(calibration, completed=done)

        yield (lambda message: display.update(step, description=message)), calibrated


def report(result, as_json: bool) -> None:
    """Print the result (text or JSON); exit 1 through VerificationError when the gate failed."""
    data = result.report
    gate = data["gate"]
    if as_json:
        echo_json(result.to_json())
    else:
        _print_text(result, data, gate)
    for skipped in [*data.get("calibration", {}).get("skipped", []), *gate["validation"]["skipped"]]:
        click.echo(f"warning: skipped {skipped}", err=True)
    if not gate["passed"]:
        raise VerificationError(
            f"accuracy gate failed: {'; '.join(gate['missed'])}; {result.output_dir} is written and its manifest records the failure"
        )


def _print_text(result, data: dict, gate: dict) -> None:
    onnx = result.manifest["onnx"]
    reused = " (reused: same inputs as the existing result)" if result.reused else ""
    click.echo(f"wrote {Path(result.output_dir) / onnx['file']} ({onnx['precision']}, target {onnx.get('target')}){reused}")
    if "calibration" in data:
        cal = data["calibration"]
        click.echo(f"calibration: {cal['method']} on {cal['count']} images ({len(cal['skipped'])} skipped)"
                   f"{', ranges reused' if cal['reused_ranges'] else ''}; scheme {data['scheme']['route']}: "
                   f"{data['scheme']['activations']} activations, {data['scheme']['weights']} weights")  # fmt: skip
    val, final = gate["validation"], gate["final"]
    line = f"vs FP32 on {val['count']} images of {val['folder']}: argmax agreement {final['agreement']:.3%}"
    if final["miou"] is not None:
        line += f", mIoU {final['miou']:.2f} (FP32 {gate['fp32_miou']:.2f}, drop {final['miou_drop']:.2f} pt)"
    click.echo(line + f", max |Δ| {final['max_abs_diff']:.3g}")
    kept = gate["kept_in_higher_precision"]
    if kept:
        first = gate["before_sensitivity"]
        click.echo(f"before sensitivity analysis: agreement {first['agreement']:.3%}"
                   + (f", mIoU drop {first['miou_drop']:.2f} pt" if first["miou_drop"] is not None else ""))  # fmt: skip
        cost = gate["cost"]
        share = f", {cost['kept_mac_share']:.1%} of the MACs" if cost["kept_mac_share"] is not None else ""
        click.echo(f"kept in higher precision: {len(kept)} layer(s){share}: {', '.join(kept)}")
        latency = cost["latency_ms"]
        click.echo(f"latency cost ({latency['runtime']}): {latency['fully_reduced']:.2f} ms -> {latency['final']:.2f} ms "
                   f"(x{latency['ratio']:.2f})")
    budget = gate["budget"]
    verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["missed"])
    click.echo(f"gate (agreement >= {budget['min_agreement']:.2%}, mIoU drop <= {budget['max_miou_drop']:g} pt): {verdict}")


@click.command()
@click.argument("source", type=click.Path())
@click.option("--keep-fp32", multiple=True, metavar="NODE", help="Keep this node in FP32 (repeatable).")
@gate_options
@source_options
def fp16(source, keep_fp32, val_dir, min_agreement, max_miou_drop, sensitivity, sensitivity_images, target, output,
         as_json, mean, std, scale, size):  # fmt: skip
    """Make an FP16-typed ONNX artifact (float32 inputs/outputs) from an FP32 one, checked against it.

    SOURCE is an artifact folder from `segdeploy export` or any ONNX file (then give --mean and
    --std). Numerically sensitive ops (softmax, normalisation statistics, exp/log/pow) and layers
    whose activations approach the FP16 range stay FP32. Reports max |Δ| and argmax agreement
    against FP32 on --val (default: generated scenes) and exits 1 when the gate fails.

    \b
    Examples:
      segdeploy fp16 out/dlv3p --val data/val
      segdeploy fp16 model.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 -o model_fp16
    """
    with progress_display(not as_json) as (progress, _):
        result = make_fp16(
            source, output, val_dir=val_dir, keep_fp32=keep_fp32, target=target,
            gate=gate_settings(min_agreement, max_miou_drop, sensitivity, sensitivity_images),
            normalisation=normalisation(mean, std, scale, size), progress=progress,
        )  # fmt: skip
    report(result, as_json)
