"""``segdeploy fp16``, and the options and report it shares with ``segdeploy quantize``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ..errors import VerificationError
from ..precision.gate import Budget, agreement_name
from ..precision.pipeline import GateSettings, make_fp16
from .common import echo_json, json_option, model_options, model_options_from


def source_options(command):
    """What a bare ONNX file cannot say (``common.MODEL_OPTIONS``), and --drop-side-outputs."""
    command = click.option(
        "--drop-side-outputs", is_flag=True,
        help="Write the prediction output only (prune the other outputs and the layers feeding only them).",
    )(command)  # fmt: skip
    return model_options(command)


def gate_options(command):
    for option in reversed([
        click.option("--val", "val_dir", type=click.Path(file_okay=False),
                     help="Held-out images to compare with FP32 (recursive; DIR/images + DIR/masks for mIoU)."),
        click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
                     help="Gate: smallest mask agreement with FP32 (0..1): argmax, or the threshold of a binary output."),
        click.option("--max-miou-drop", type=click.FloatRange(0), default=0.5, show_default=True,
                     help="Gate: largest mIoU drop in points (with masks)."),
        click.option("--max-prob-error", type=click.FloatRange(0, 1),
                     help="Gate: largest change of any pixel's probability (softmax, or sigmoid of a binary output). "
                          "Default: reported, not gated. Not for a labels head (no probabilities: n/a)."),
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


def options_from(params: dict):
    """The ``adopt.ModelOptions`` of a command's parsed parameters."""
    return model_options_from(params, params.get("drop_side_outputs", False))


def gate_settings(params: dict):
    return GateSettings(Budget(params["min_agreement"], params["max_miou_drop"], params.get("max_prob_error")),
                        params["sensitivity"], params["sensitivity_images"])  # fmt: skip


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


def _target_text(onnx: dict) -> str:
    target = onnx.get("target")
    return f"target {target}" if target else "no target: runs in ONNX Runtime and any TensorRT"


def _number(value, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_text(result, data: dict, gate: dict) -> None:
    from ..outputs import Head

    onnx = result.manifest["onnx"]
    head = Head.from_manifest(result.manifest)
    reused = " (reused: same inputs as the existing result)" if result.reused else ""
    click.echo(f"wrote {Path(result.output_dir) / onnx['file']} ({onnx['precision']}, {_target_text(onnx)}){reused}")
    preparation = data.get("graph_preparation") or {}
    if preparation.get("fp16_weight_casts_folded"):
        click.echo(f"folded {preparation['fp16_weight_casts_folded']} FP16 weight Cast(s) into float32 weights first")
    deployment_head = data.get("deployment_head")
    if deployment_head:
        click.echo(f"deployment head {deployment_head['name']!r} ({' -> '.join(deployment_head['nodes'])}) kept unchanged: "
                   f"the scores graph under it (tensor {deployment_head['scores_tensor']!r}) was reduced")
    if preparation.get("opset"):
        click.echo(f"converted opset {preparation['opset']['from']} -> {preparation['opset']['to']} first (outputs checked unchanged)")
    if data.get("dropped_side_outputs"):
        click.echo(f"dropped side outputs: {', '.join(data['dropped_side_outputs'])} "
                   f"(the artifact has {result.manifest['output']['name']!r} only)")
    if "calibration" in data:
        cal = data["calibration"]
        click.echo(f"calibration: {cal['method']} on {cal['count']} samples ({len(cal['skipped'])} skipped)"
                   f"{', ranges reused' if cal['reused_ranges'] else ''}; scheme {data['scheme']['route']}: "
                   f"{data['scheme']['activations']} activations, {data['scheme']['weights']} weights")  # fmt: skip
    val, final = gate["validation"], gate["final"]
    line = (f"vs FP32 on {val['count']} samples of {val['folder']}, output {result.manifest['output']['name']!r}: "
            f"{agreement_name(head)} {final['agreement']:.3%}")  # fmt: skip
    if final.get("miou") is not None:
        line += f", mIoU {final['miou']:.2f} (FP32 {gate['fp32_miou']:.2f}, drop {final['miou_drop']:.2f} pt)"
    click.echo(line + f", max probability error {_number(final.get('max_prob_error'))}, max |Δ| {_number(final.get('max_abs_diff'))}")
    for name, figures in (final.get("side_outputs") or {}).items():
        click.echo(f"  side output {name!r} (not gated): max |Δ| {_number(figures['max_abs_diff'])}, "
                   f"max probability error {_number(figures['max_prob_error'])}")
    kept = gate["kept_in_higher_precision"]
    if kept:
        first = gate["before_sensitivity"]
        click.echo(f"before sensitivity analysis: agreement {first['agreement']:.3%}"
                   + (f", mIoU drop {first['miou_drop']:.2f} pt" if first.get("miou_drop") is not None else ""))  # fmt: skip
        cost = gate["cost"]
        share = f", {cost['kept_mac_share']:.1%} of the MACs" if cost.get("kept_mac_share") is not None else ""
        click.echo(f"kept in higher precision: {len(kept)} layer(s){share}: {', '.join(kept)}")
        latency = cost.get("latency_ms")
        if latency:
            click.echo(f"latency cost ({latency['runtime']}): {latency['fully_reduced']:.2f} ms -> {latency['final']:.2f} ms "
                       f"(x{latency['ratio']:.2f})")
    budget = gate["budget"]
    verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["missed"])
    limits = f"agreement >= {budget['min_agreement']:.2%}, mIoU drop <= {budget['max_miou_drop']:g} pt"
    if budget.get("max_prob_error") is not None:
        limits += f", max probability error <= {budget['max_prob_error']:g}"
    click.echo(f"gate ({limits}): {verdict}")


@click.command()
@click.argument("source", type=click.Path())
@click.option("--keep-fp32", multiple=True, metavar="NODE", help="Keep this node in FP32 (repeatable).")
@gate_options
@source_options
def fp16(source, keep_fp32, val_dir, target, output, as_json, **params):
    """Make an FP16-typed ONNX artifact (float32 inputs/outputs) from an FP32 one, checked against it.

    SOURCE is an artifact folder from `segdeploy export`, an adopted ONNX file, or any ONNX file
    (then give --mean and --std, unless its input takes tensors). Numerically sensitive ops
    (softmax, normalisation statistics, exp/log/pow) and layers whose activations approach the
    FP16 range stay FP32. Reports mask agreement (argmax, or the threshold of a one-channel
    output), the max probability error and max |Δ| against FP32 on --val (default: generated
    scenes, or seeded random tensors for a tensor input) and exits 1 when the gate fails. A
    deployment head (`segdeploy head`, `export --head`: probabilities, labels, fused) is kept as it
    is: the scores graph under it is converted, and a labels head's maps are compared directly.

    \b
    Examples:
      segdeploy fp16 out/dlv3p --val data/val
      segdeploy fp16 model.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 -o model_fp16
      segdeploy fp16 u2net.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --output-name d0 --drop-side-outputs
    """
    with progress_display(not as_json) as (progress, _):
        result = make_fp16(
            source, output, val_dir=val_dir, keep_fp32=keep_fp32, target=target, gate=gate_settings(params),
            options=options_from(params), progress=progress,
        )  # fmt: skip
    report(result, as_json)
