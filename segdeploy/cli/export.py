from __future__ import annotations

import functools
from pathlib import Path

import click

from ..errors import BadInputError, VerificationError
from ..export import export_model
from ..manifest import read_manifest
from ..parity import DEFAULT_MAX_ABS_DIFF, DEFAULT_MIN_AGREEMENT, DEFAULT_RTOL, Thresholds
from .common import echo_json, json_option, parse_key_values, progress_status
from .head import echo_head, head_options
from .plugins import echo_plugins, plugins_option


@click.command()
@click.option("--model", "-m", "model_name", required=True, metavar="NAME",
              help="A registered model (see `segdeploy models`) or your own factory as package.module:function.")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="State dict to load (read with weights_only=True). Default: seeded random weights.")
@click.option("--num-classes", type=int, default=21, show_default=True, help="Number of output classes.")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False), help="Text file with one class name per line.")
@click.option("--input-size", nargs=2, type=int, default=(512, 512), show_default=True, metavar="H W",
              help="Export shape; must be a multiple of the model's output stride. Batch, H and W stay dynamic.")
@click.option("--target", default="trt11", show_default=True,
              help="Where the ONNX will run: jetpack5, jetpack6.0, jetpack6.2, trt10, trt11, rtx (TensorRT for RTX) or cpu. "
                   "Sets the opset and exporter.")
@click.option("--opset", type=click.IntRange(13, 25),
              help="ONNX opset instead of the target's; below 18 the TorchScript exporter is used (dynamo cannot emit them).")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Extra constructor argument, repeatable (e.g. --model-arg output_stride=8).")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Output folder. Default: artifacts/NAME.")
@click.option("--max-abs-diff", type=click.FloatRange(min=0), default=DEFAULT_MAX_ABS_DIFF, show_default=True,
              help="Parity gate: absolute part of the largest allowed |torch - onnx| (see --rtol).")
@click.option("--rtol", type=click.FloatRange(min=0), default=DEFAULT_RTOL, show_default=True,
              help="Parity gate: relative part. Each output may differ by up to max-abs-diff + rtol x its largest "
                   "|torch value|: float32 rounding grows with the logits' scale (deep random networks reach 1e4), "
                   "while a mis-export differs by a large fraction of it. 0 makes the limit absolute.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=DEFAULT_MIN_AGREEMENT, show_default=True,
              help="Parity gate: smallest allowed agreement of the predicted labels (argmax; threshold for one-channel "
                   "binary outputs), 0..1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialisation (without --checkpoint).")
@click.option("--crf", is_flag=True, help="Append a dense-CRF node: the graph also takes the uint8 RGB picture ('image', NxHxWx3) "
              "and returns 'probabilities' and int32 'labels'. ONNX Runtime runs it with segdeploy's kernel.")
@click.option("--crf-param", "crf_params", multiple=True, metavar="KEY=VALUE",
              help="CRF parameter with --crf, repeatable (e.g. --crf-param bilateral_theta_xy=50). Default: DeepLab v2's.")
@head_options
@functools.partial(plugins_option, default="none")
@json_option
def export(model_name, checkpoint, num_classes, classes_file, input_size, target, opset, model_args, output, max_abs_diff,
           rtol, min_agreement, seed, crf, crf_params, head, fused, plugins, as_json):
    """Export a model to ONNX (dynamic batch/H/W) and check it against PyTorch.

    Writes OUTPUT/model.onnx and OUTPUT/manifest.json (model, classes, input normalisation,
    versions, sha256, parity results). The parity gate runs PyTorch and ONNX Runtime on the
    same inputs at the export shape and at a second shape with another aspect ratio and
    batch size, and compares every output: each within max-abs-diff + rtol x its largest
    |value|, the prediction's labels also by agreement. It exits 1 when they disagree beyond
    the thresholds.

    \b
    Examples:
      segdeploy export --model deeplabv3plus -o out/dlv3p
      segdeploy export --model deeplabv3plus --checkpoint best.pt --num-classes 19 --input-size 512 1024
      segdeploy export --model mypkg.nets:build_net --input-size 256 256
      segdeploy export --model deeplabv3plus --target jetpack6.0   # opset 17 for TensorRT 8.6
      segdeploy export --model deeplabv3plus --crf                 # + dense CRF node
      segdeploy export --model deeplabv3plus --head labels --fused  # uint8 label map, fused upsample + argmax
      segdeploy export --model deeplabv3plus_mobilenetv2 --plugins auto  # depthwise convs as segdeploy nodes where faster
    """
    class_names = None
    if classes_file:
        try:
            class_names = [line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{classes_file}: cannot read class names ({exc})") from None
    output = Path(output or Path("artifacts") / model_name.replace(":", "_"))
    with progress_status(not as_json) as progress:
        try:
            export_model(
                model_name, output, num_classes=num_classes, model_kwargs=parse_key_values(model_args, "--model-arg"),
                checkpoint=checkpoint, input_size=tuple(input_size), opset=opset, target=target,
                thresholds=Thresholds(max_abs_diff, min_agreement, rtol), class_names=class_names, seed=seed,
                crf=parse_key_values(crf_params, "--crf-param") if crf else None, head=head, fused=fused, plugins=plugins,
                progress=progress,
            )
        except VerificationError:
            _report(output, as_json)  # the figures that failed, then exit 1
            raise
    _report(output, as_json)


def _report(output: Path, as_json: bool) -> None:
    manifest = read_manifest(output / "manifest.json")
    if as_json:
        echo_json(manifest)
        return
    onnx = manifest["onnx"]
    click.echo(f"wrote {output / onnx['file']} ({onnx['bytes'] / 1e6:.1f} MB, opset {onnx['opset']}, target {onnx['target']}, "
               f"exported in {onnx['export_seconds']:.1f} s) and {output / 'manifest.json'}")
    parity = manifest["parity"]
    thresholds = Thresholds(**{"rtol": 0.0, **parity["thresholds"]})  # no rtol: written when limits were absolute
    click.echo(f"parity (torch vs onnxruntime; limits: {thresholds.describe()}):")
    for r in parity["shapes"]:
        shape = "x".join(map(str, r["shape"]))
        # Exports before per-output results recorded the prediction output only.
        for name, o in (r.get("outputs") or {r.get("output", "logits"): r}).items():
            mark = "ok  " if o["passed"] else "FAIL"
            agreement = "" if o.get("argmax_agreement") is None else (
                f", label agreement {o['argmax_agreement']:.4%} ({o['reference_classes_seen']} classes predicted)")
            click.echo(f"  {mark} shape {shape} {name}: {_figures(o)}{agreement}")
    crf = manifest.get("crf")
    if crf:
        r = crf["parity"]
        click.echo(f"dense CRF appended ({crf['params']['iterations']} iterations): ONNX Runtime vs torch+kernel "
                   f"{_figures(r)}, label agreement {r['argmax_agreement']:.4%}")
    echo_head(manifest)
    echo_plugins(manifest)
    lint = manifest.get("lint") or {}
    if lint:
        click.echo(f"lint for {lint['target']}: {lint['errors']} errors, {lint['warnings']} warnings")
        for f in lint["findings"]:
            if f["severity"] != "info":
                where = f"{f['node']} ({f['op_type']}): " if f.get("node") else ""
                click.echo(f"  {f['severity']}: [{f['rule']}] {where}{f['message']}")


def _figures(result: dict) -> str:
    """max |Δ| absolute and relative to the reference's scale, against the limit applied."""
    if "relative_diff" not in result:  # manifests written before the relative tolerance
        return f"max |Δ| {result['max_abs_diff']:.2e}"
    return (f"max |Δ| {result['max_abs_diff']:.2e} = {result['relative_diff']:.1e} of max |reference| "
            f"{result['reference_max_abs']:.3g} (limit {result['limit']:.2e})")
