"""``segdeploy head``: an artifact (or a user's ONNX file) whose graph hands back probabilities or labels."""

from __future__ import annotations

import functools

import click

from ..outputs import HEAD_NAMES
from ..parity import DEFAULT_MAX_ABS_DIFF, DEFAULT_MIN_AGREEMENT, DEFAULT_RTOL, Thresholds
from .common import echo_json, json_option, model_options, model_options_from, progress_status


def head_options(command, required: bool = False):
    """--head (default logits, or ``required``) and --fused, shared by ``export`` and ``head``."""
    command = click.option(
        "--fused", is_flag=True,
        help="With --head labels: one node computes the argmax of the bilinearly upsampled scores straight from the "
             "low-resolution scores (the model's own final Resize convention), never writing the full-resolution "
             "scores. ONNX Runtime runs it through onnxruntime-extensions, TensorRT >= 10 as segdeploy's plugin.",
    )(command)  # fmt: skip
    default = {"required": True} if required else {"default": "logits", "show_default": True}
    return click.option(
        "--head", type=click.Choice(HEAD_NAMES), **default,
        help="What the graph hands back: logits (scores, the host takes the argmax), probabilities (softmax, or "
             "sigmoid for one channel) or labels (the class map, uint8 up to 255 classes, else int32: C x 4 times "
             "fewer bytes to copy off the device than float32 scores).",
    )(command)  # fmt: skip


@click.command()
@click.argument("artifact", type=click.Path())
@functools.partial(head_options, required=True)
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Output artifact folder. Default: beside the source, suffixed _<head> (_labels_fused with --fused).")
@click.option("--target", help="Target to lint the new graph for (jetpack5, jetpack6.0, jetpack6.2, trt10, trt11, rtx, cpu). "
                                "Default: the manifest's.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=DEFAULT_MIN_AGREEMENT, show_default=True,
              help="Smallest allowed agreement of the head's labels with the host's argmax of the scores, 0..1.")
@model_options
@json_option
def head(artifact, head, fused, output, target, min_agreement, as_json, **model_params):
    """Make a copy of ARTIFACT whose graph ends in a deployment head.

    ARTIFACT is a segdeploy artifact folder (FP32, FP16 or INT8) or a user's ONNX file (give
    --mean/--std when no manifest.json describes it). The head is appended after the prediction
    output; the new graph is run with ONNX Runtime against the scores graph at two input shapes:
    labels must agree with the host's argmax (or threshold) of the scores on at least
    --min-agreement of the pixels (disagreements at near-ties of two classes are counted and
    reported), probabilities must be within the parity tolerance of the host's softmax. Nothing is
    written when the check fails (exit 1).

    \b
    Examples:
      segdeploy head artifacts/deeplabv3plus --head labels                  # -> artifacts/deeplabv3plus_labels
      segdeploy head artifacts/deeplabv3plus --head labels --fused --target trt10
      segdeploy head artifacts/deeplabv3plus_int8 --head probabilities -o out/int8_probabilities
      segdeploy head theirs.onnx --head labels --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    """
    from ..head.artifact import apply_head

    thresholds = Thresholds(DEFAULT_MAX_ABS_DIFF, min_agreement, DEFAULT_RTOL)
    with progress_status(not as_json) as progress:
        result = apply_head(artifact, head, output_dir=output, fused=fused, target=target, thresholds=thresholds,
                            options=model_options_from(model_params), progress=progress)
    if as_json:
        echo_json({"output_dir": str(result.output_dir), "manifest": result.manifest})
        return
    click.echo(f"wrote {result.output_dir / result.manifest['onnx']['file']} and {result.output_dir / 'manifest.json'}")
    echo_head(result.manifest)
    for finding in result.lint:
        if finding.severity != "info":
            click.echo(f"  {finding}")


def echo_head(manifest: dict) -> None:
    """The deployment head the manifest records, and its check against the scores graph."""
    head = manifest.get("head")
    if not head:
        return
    output = manifest["output"]
    how = f", fused upsample + argmax ({head['coordinate_transformation_mode']})" if head.get("fused") else ""
    click.echo(f"head {head['name']}: output {output['name']!r} {output['dtype']} {output['layout']}{how}; "
               f"against the scores graph (onnxruntime):")
    for check in head.get("parity") or []:
        from ..head.artifact import HeadParity

        figures = HeadParity.from_json(check)
        click.echo(f"  {'ok  ' if figures.passed else 'FAIL'} {figures.describe()}")
