"""Segment image files with an artifact on any backend: labels at each image's own size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import BadInputError


def segment_files(artifact, images, backend: str = "ort", size: tuple[int, int] | None = None):
    """Yield ``(path, rgb_image, labels)`` for each image file, labels resized back to the image's size."""
    from PIL import Image

    from .backend.base import make_runner
    from .manifest import resolve_artifact
    from .preprocess import load_image, normalize, resize

    onnx_path, manifest = resolve_artifact(artifact)
    if manifest is None:
        raise BadInputError(f"{artifact}: inference needs the manifest's input normalisation (export with segdeploy)")
    spec_in = manifest["input"]
    height, width = size or spec_in["size"]
    with make_runner(backend, onnx_path, manifest) as runner:
        for path in images:
            rgb = load_image(path)
            feed = {spec_in["name"]: normalize(resize(rgb, height, width), spec_in)}
            logits = runner.infer(feed)[manifest["output"]["name"]]
            labels = logits[0].argmax(axis=0).astype(np.uint8)
            if labels.shape != rgb.shape[:2]:
                labels = np.asarray(Image.fromarray(labels).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST))
            yield Path(path), rgb, labels


def write_outputs(out_dir: str | os.PathLike, path: Path, rgb: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """``STEM_mask.png`` (palette PNG of class indices) and ``STEM_overlay.png``, written atomically."""
    from PIL import Image

    from .fileio import atomic_path
    from .visualize import label_image, overlay

    out_dir = Path(out_dir)
    mask_path, overlay_path = out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"
    with atomic_path(mask_path) as tmp:
        label_image(labels).save(tmp, format="PNG")
    with atomic_path(overlay_path) as tmp:
        Image.fromarray(overlay(rgb, labels)).save(tmp, format="PNG")
    return mask_path, overlay_path
