"""``segdeploy adopt``: record what a user's ONNX file cannot say, once, beside it."""

from __future__ import annotations

import click

from ..adopt import adopt as adopt_file
from .common import echo_json, json_option, model_options, model_options_from


@click.command()
@click.argument("onnx_file", type=click.Path())
@model_options
@click.option("--drop-side-outputs", is_flag=True,
              help="Several outputs: later steps (fp16, quantize, build) write the prediction output only.")
@json_option
def adopt(onnx_file, drop_side_outputs, as_json, **params):
    """Write manifest.json beside a user's ONNX file so every command can take it without options.

    The graph gives the input's name, channels and size (fixed or dynamic), the opset, the outputs
    and how to read the prediction (argmax over several channels; one channel after a Sigmoid is
    thresholded at 0.5, a raw one-channel logit at 0). You give what it cannot: the input
    normalisation, class names, and which output is the prediction when there are several.

    \b
    Examples:
      segdeploy adopt model.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
      segdeploy adopt u2net.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --output-name d0
      segdeploy adopt depth_seg.onnx --color tensor --classes classes.txt
      segdeploy adopt xray.onnx --mean 0.5 --std 0.25 --kind binary --threshold 0.3
    """
    path, manifest = adopt_file(onnx_file, model_options_from(params, drop_side_outputs))
    if as_json:
        echo_json(manifest)
        return
    from ..outputs import Head

    spec, output = manifest["input"], manifest["output"]
    size = "x".join(str(s) for s in spec["size"]) if spec["size"][0] else "dynamic (each image's own size)"
    click.echo(f"wrote {path}")
    click.echo(f"input:    {spec['name']}, {spec['channels'] or '?'} channel(s) {spec['color']}, size {size}")
    click.echo(f"output:   {output['name']} ({Head.from_manifest(manifest).describe()}), {len(manifest['classes'])} classes")
    if output["side_outputs"]:
        fate = "dropped by later steps" if output["drop_side_outputs"] else "carried along and checked for parity"
        click.echo(f"others:   {', '.join(output['side_outputs'])} ({fate})")
    click.echo(f"opset:    {manifest['onnx']['opset']}, precision {manifest['onnx']['precision']}"
               + (f" ({manifest['onnx']['fp16_weight_casts']} FP16 weight tensors behind Casts)"
                  if manifest["onnx"].get("fp16_weight_casts") else ""))
