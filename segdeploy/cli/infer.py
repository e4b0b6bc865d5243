from __future__ import annotations

import click
import numpy as np

from ..infer import segment_files, write_outputs
from .common import echo_json, json_option


@click.command()
@click.argument("artifact", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--backend", default="ort", show_default=True, help="Backend to run on: ort or torch.")
@click.option("--input-size", nargs=2, type=click.IntRange(1), metavar="H W", help="Network input size. Default: the manifest's.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default="predictions", show_default=True,
              help="Folder for STEM_mask.png (class indices, VOC palette) and STEM_overlay.png.")
@json_option
def infer(artifact, images, backend, input_size, out_dir, as_json):
    """Segment IMAGES with ARTIFACT and write label masks and overlays.

    Runs without torch on the ort backend: this is what a Jetson or a server runs.

    \b
    Example:
      segdeploy infer artifacts/deeplabv3plus street.jpg park.png -o predictions
    """
    results = []
    with click.progressbar(length=len(images), label="segmenting", file=click.get_text_stream("stderr"),
                           hidden=as_json) as bar:
        for path, rgb, labels in segment_files(artifact, images, backend=backend, size=input_size):
            mask, over = write_outputs(out_dir, path, rgb, labels)
            classes, counts = np.unique(labels, return_counts=True)
            results.append({"image": str(path), "mask": str(mask), "overlay": str(over),
                            "class_fractions": {int(c): round(float(n) / labels.size, 4) for c, n in zip(classes, counts)}})
            bar.update(1)
    if as_json:
        echo_json(results)
    else:
        for r in results:
            click.echo(f"{r['image']} -> {r['mask']}, {r['overlay']}")
