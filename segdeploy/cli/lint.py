from __future__ import annotations

import click

from ..errors import VerificationError
from ..lint import lint_onnx, lint_report
from ..manifest import resolve_artifact
from .common import echo_json, json_option


@click.command("lint")
@click.argument("model", type=click.Path())
@click.option("--target", help="jetpack5, jetpack6.0, jetpack6.2, trt10, trt11, rtx or cpu. Default: the manifest's, else trt11.")
@click.option("--dla", is_flag=True, help="Also report what DLA (Jetson Xavier/Orin) cannot run.")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla: layers DLA cannot run are errors, not warnings.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@json_option
def lint_cmd(model, target, dla, no_gpu_fallback, strict, as_json):
    """Report what TARGET's ONNX parser will reject or mis-handle in MODEL, by node name.

    MODEL is an ONNX file or an artifact folder. Runs on the CPU, no TensorRT needed.
    Checks: opset above the target's maximum; ops the parser cannot import (MaxUnpool,
    QLinear*/…Integer, sequences, foreign domains); segdeploy custom nodes (plugins need
    TensorRT >= 10); Resize coordinate/nearest modes and antialias; INT64 outputs (ArgMax:
    cast to int32); Q/DQ with non-zero zero points or INT32 DequantizeLinear; with --dla,
    the ops DLA cannot run. `export` and `build` run the same checks.
    Exits 1 when there are errors (with --strict: warnings too).

    \b
    Examples:
      segdeploy lint artifacts/deeplabv3plus --target jetpack6.0
      segdeploy lint model_int8.onnx --target jetpack6.2 --dla
      segdeploy lint model.onnx --target trt10 --json
    """
    if target is None:
        _, manifest = resolve_artifact(model)
        target = ((manifest or {}).get("onnx") or {}).get("target") or "trt11"
    findings = lint_onnx(model, target, dla=dla, gpu_fallback=not no_gpu_fallback)
    report = lint_report(findings, target)
    if as_json:
        echo_json(report)
    else:
        for finding in findings:
            click.echo(str(finding))
        click.echo(f"{model}: {report['errors']} error(s), {report['warnings']} warning(s) for target {target}")
    if report["errors"] or (strict and report["warnings"]):
        raise VerificationError(f"{model}: {report['errors']} error(s) and {report['warnings']} warning(s) for target {target}")
