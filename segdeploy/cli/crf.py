"""``segdeploy crf``: refine a network's logits with the dense CRF and write a coloured mask."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from ..crf import CRFParams, dense_crf
from ..crf.refine import NEEDS_SCORES
from ..errors import BadInputError
from ..fileio import atomic_path
from ..preprocess import load_image
from ..visualize import label_image, overlay
from .common import echo_json, json_option

_DEFAULTS = CRFParams()


def _load_logits(path: Path) -> np.ndarray:
    try:
        logits = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read {path} as a .npy array: {exc}") from exc
    if not np.issubdtype(logits.dtype, np.floating):
        # what a graph with a "labels" deployment head outputs: class ids, nothing left to refine
        raise BadInputError(f"{path} holds {logits.dtype} values {list(logits.shape)}, a label map: {NEEDS_SCORES} "
                            "(save the logits or probabilities output, then --unary-kind says which)")
    if logits.ndim == 4 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.ndim != 3:
        raise BadInputError(f"{path} holds an array of shape {logits.shape}; expected (C, H, W) or (1, C, H, W)")
    if logits.dtype == np.float64:
        logits = logits.astype(np.float32)
    return logits


def _two_class(scores: np.ndarray, unary_kind: str) -> np.ndarray:
    """A one-channel binary output (1, H, W) as two-class probabilities [1 - p, p] (2, H, W).

    ``p`` is the sigmoid of a logit, a probability as given, or exp(-x) of a -log p.
    """
    x = scores[0].astype(np.float64)
    if unary_kind == "logits":
        p = 1.0 / (1.0 + np.exp(-x))
    elif unary_kind == "probabilities":
        if x.min() < 0 or x.max() > 1:
            raise BadInputError(f"--unary-kind probabilities: the one-channel scores range over [{x.min():.3g}, "
                                f"{x.max():.3g}], not [0, 1]; give --unary-kind logits for raw scores")
        p = x
    else:
        p = np.exp(-x)
    p = np.clip(p, 0.0, 1.0)
    return np.stack([1.0 - p, p]).astype(np.float32)


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    """Whether (C, H, W) scores are a softmax's output: in [0, 1] and summing to 1 at every pixel."""
    return bool(scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(0, dtype=np.float64), 1.0, atol=1e-3))


def _save_png(image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


@click.command("crf")
@click.option("--logits", "logits_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Network output, .npy of shape (C, H, W) or (1, C, H, W): a logits or probabilities head's "
                   "scores (a label map cannot be refined); one channel (C = 1) is a binary output, refined as two "
                   "classes [1-p, p].")
@click.option("--image", "image_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The RGB image the logits belong to (same H x W).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Coloured label mask (PNG, palette = VOC colours). Default: <image>_crf_mask.png.")
@click.option("--overlay", "overlay_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Image blended with the mask (PNG). Default: <out>_overlay.png.")
@click.option("--probabilities-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the refined probabilities (C, H, W) as .npy.")
@click.option("--unary-kind", type=click.Choice(["logits", "probabilities", "neg_log_prob"]), default="logits",
              show_default=True, help="What the .npy holds: scores (a logits head), softmax probabilities (a "
                                      "probabilities head) or -log P.")
@click.option("--iterations", type=int, default=_DEFAULTS.iterations, show_default=True)
@click.option("--spatial-weight", type=float, default=_DEFAULTS.spatial_weight, show_default=True)
@click.option("--spatial-theta", type=float, default=_DEFAULTS.spatial_theta, show_default=True, help="θγ (pixels).")
@click.option("--bilateral-weight", type=float, default=_DEFAULTS.bilateral_weight, show_default=True)
@click.option("--bilateral-theta-xy", type=float, default=_DEFAULTS.bilateral_theta_xy, show_default=True,
              help="θα (pixels).")
@click.option("--bilateral-theta-rgb", type=float, default=_DEFAULTS.bilateral_theta_rgb, show_default=True,
              help="θβ (intensity levels).")
@click.option("--normalization", type=click.Choice(["symmetric", "after"]), default=_DEFAULTS.normalization,
              show_default=True, help="pydensecrf's NORMALIZE_SYMMETRIC or NORMALIZE_AFTER.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Opacity of the mask in the overlay.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="CPU threads (0: all).")
@json_option
def crf(logits_path: Path, image_path: Path, out_path: Path | None, overlay_path: Path | None,
        probabilities_out: Path | None, unary_kind: str, iterations: int, spatial_weight: float, spatial_theta: float,
        bilateral_weight: float, bilateral_theta_xy: float, bilateral_theta_rgb: float, normalization: str,
        alpha: float, threads: int, as_json: bool):
    """Refine segmentation logits with a fully-connected CRF (Krähenbühl & Koltun 2011).

    Writes the refined label mask as a palette PNG (pixel value = class) and an overlay of the
    mask on the image. Defaults are DeepLab v2's CRF parameters.

    \b
    Examples:
      segdeploy crf --logits frame_logits.npy --image frame.png --out frame_mask.png
      segdeploy crf --logits p.npy --unary-kind probabilities --image frame.png --bilateral-theta-xy 50 --bilateral-theta-rgb 10
    """
    logits = _load_logits(logits_path)
    image = load_image(image_path)
    if image.shape[:2] != logits.shape[1:]:
        raise BadInputError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} but the logits are "
            f"{logits.shape[2]}x{logits.shape[1]} (W x H); resize the logits to the image first"
        )
    if logits.shape[0] > 256:
        raise BadInputError(f"a PNG palette mask holds at most 256 classes, the logits have {logits.shape[0]}")
    if unary_kind == "logits" and logits.shape[0] > 1 and _looks_like_probabilities(logits):
        click.echo("warning: the scores lie in [0, 1] and sum to 1 over the classes, like a probabilities head's "
                   "output; give --unary-kind probabilities if they are (read as logits, the unary is too weak)", err=True)
    binary = logits.shape[0] == 1
    if binary:  # one channel (a binary head): two-class probabilities [1 - p, p]
        logits, unary_kind = _two_class(logits, unary_kind), "probabilities"
    params = CRFParams(spatial_weight, spatial_theta, bilateral_weight, bilateral_theta_xy, bilateral_theta_rgb,
                       iterations, normalization)
    started = time.perf_counter()
    probabilities, labels = dense_crf(logits, image, params, unary_kind=unary_kind, num_threads=threads)
    elapsed = time.perf_counter() - started
    before = logits.argmax(0) if unary_kind != "neg_log_prob" else logits.argmin(0)  # binary: p > 0.5
    changed = float((before != labels).mean())

    out_path = out_path or Path(f"{image_path.stem}_crf_mask.png")
    overlay_path = overlay_path or out_path.with_name(f"{out_path.stem}_overlay.png")
    _save_png(label_image(labels), out_path)
    _save_png(Image.fromarray(overlay(image, labels, alpha)), overlay_path)
    written = [out_path, overlay_path]
    if probabilities_out is not None:
        with atomic_path(probabilities_out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, probabilities)
        written.append(probabilities_out)
    if as_json:
        echo_json({"seconds": elapsed, "changed_fraction": changed, "classes": int(logits.shape[0]), "binary": binary,
                   "written": [str(p) for p in written]})
        return
    click.echo(
        ("binary (one channel read as probabilities [1-p, p]): " if binary else "")
        + f"refined {logits.shape[0]}-class {logits.shape[2]}x{logits.shape[1]} scores in {elapsed:.2f} s "
        f"({iterations} iterations); {changed:.1%} of the pixels changed label"
    )
    for path in written:
        click.echo(f"wrote {path}")
