"""Segment image files with an artifact on any backend: labels at each image's own size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .backend.base import make_runner
from .errors import BadInputError
from .fileio import atomic_path
from .manifest import resolve_artifact
from .preprocess import load_image, normalize, resize
from .visualize import label_image, overlay


def segment_files(artifact, images, backend: str = "ort", size: tuple[int, int] | None = None):
    """Yield ``(path, rgb_image, labels)`` for each image file, labels resized back to the image's size."""
    onnx_path, manifest = resolve_artifact(artifact)
    if manifest is None:
        raise BadInputError(f"{artifact}: inference needs the manifest's input normalisation (export with segdeploy)")
    with make_runner(backend, onnx_path, manifest) as runner:
        for path in images:
            rgb = load_image(path)
            logits = predict_logits(runner, manifest, rgb, size)
            yield Path(path), rgb, labels_at(logits.argmax(axis=0), rgb.shape[:2])


def predict_logits(runner, manifest: dict, rgb: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """The network's scores (C, h, w) for one uint8 RGB image, resized to ``size`` (default: the manifest's)."""
    spec_in = manifest["input"]
    height, width = size or spec_in["size"]
    picture = resize(rgb, height, width)
    feed = {spec_in["name"]: normalize(picture, spec_in)}
    if manifest.get("crf"):  # a graph ending in the dense CRF also takes the picture itself
        feed[manifest["crf"]["image_input"]] = picture[None]
    return runner.infer(feed)[manifest["output"]["name"]][0]


def labels_at(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 class ids resized (nearest: ids are never blended) to ``shape`` (H, W)."""
    labels = labels.astype(np.uint8)
    if labels.shape == tuple(shape):
        return labels
    return np.asarray(Image.fromarray(labels).resize((shape[1], shape[0]), Image.NEAREST))


def write_outputs(out_dir: str | os.PathLike, path: Path, rgb: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """``STEM_mask.png`` (palette PNG of class indices) and ``STEM_overlay.png``, written atomically."""
    out_dir = Path(out_dir)
    mask_path, overlay_path = out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"
    with atomic_path(mask_path) as tmp:
        label_image(labels).save(tmp, format="PNG")
    with atomic_path(overlay_path) as tmp:
        Image.fromarray(overlay(rgb, labels)).save(tmp, format="PNG")
    return mask_path, overlay_path
