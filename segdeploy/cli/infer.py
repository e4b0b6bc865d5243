from __future__ import annotations

import click
import numpy as np

from ..infer import no_matte_reason, predict_files, write_prediction
from .common import echo_json, json_option, model_options, model_options_from


@click.command()
@click.argument("artifact", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--backend", default="ort", show_default=True, help="Backend to run on: ort or torch.")
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W",
              help="Network input size. Default: the manifest's; a dynamic graph without one runs at each image's own size.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="predictions", show_default=True,
              help="Folder for STEM_mask.png, STEM_overlay.png and (one-channel outputs) STEM_matte.png.")
@model_options
@json_option
def infer(artifact, images, backend, input_size, out_dir, as_json, **params):
    """Segment IMAGES with ARTIFACT and write label masks, overlays and (binary outputs) soft mattes.

    ARTIFACT is an artifact folder, an adopted ONNX file, or any ONNX file with --mean/--std (and,
    for several outputs, --output NAME: the prediction; default the first). Runs without torch on
    the ort backend: this is what a Jetson or a server runs.

    \b
    For each input STEM it writes:
      STEM_mask.png     palette PNG of class ids (one-channel outputs: 0 background
                        in black, 1 foreground in white)
      STEM_overlay.png  the prediction over the image (not for .npy tensors:
                        there is no picture)
      STEM_matte.png    one-channel outputs only: the foreground probability as
                        8-bit grey (0..255), resized bilinearly to the image's size
                        (not for a model whose head is 'labels': it outputs the
                        label map only)

    A model exported with --head labels hands back the label map itself: it is used
    as is (no argmax on the host), resized to each image with nearest-neighbour.

    Models with a "tensor" input (depth, multispectral bands) take .npy files holding one
    (C, H, W) array, already normalised; GRAY models take any image (converted to grey).

    \b
    Examples:
      segdeploy infer artifacts/deeplabv3plus street.jpg park.png -o predictions
      segdeploy infer u2net.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --output-name d0 cat.jpg
      segdeploy infer bands/model.onnx tile_001.npy tile_002.npy
    """
    options = model_options_from(params)
    results, notes = [], []
    with click.progressbar(length=len(images), label="segmenting", file=click.get_text_stream("stderr"),
                           hidden=as_json) as bar:
        for prediction in predict_files(artifact, images, backend=backend, size=input_size, options=options):
            files = write_prediction(out_dir, prediction)
            labels = prediction.labels
            classes, counts = np.unique(labels, return_counts=True)
            result = {"image": str(prediction.path), "kind": prediction.head.kind, "head": prediction.head.name,
                      **{k: (str(v) if v is not None else None) for k, v in files.items()},
                      "class_fractions": {int(c): round(float(n) / labels.size, 4) for c, n in zip(classes, counts)}}  # fmt: skip
            if prediction.head.kind == "binary":
                result["foreground_fraction"] = round(float(np.count_nonzero(labels == 1)) / labels.size, 4)
            results.append(result)
            reason = no_matte_reason(prediction.head)
            if reason and reason not in notes:
                notes.append(reason)
            bar.update(1)
    for note in notes:  # on stderr: --json keeps stdout a JSON document
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(results)
    else:
        for r in results:
            written = ", ".join(r[k] for k in ("mask", "overlay", "matte") if r[k])
            extra = f" (foreground {100 * r['foreground_fraction']:.1f}%)" if "foreground_fraction" in r else ""
            click.echo(f"{r['image']} -> {written}{extra}")
