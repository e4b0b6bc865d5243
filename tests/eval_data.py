"""Test data shared by the evaluation tests: a Pascal VOC folder writer and an independent IoU."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segdeploy.visualize import label_image


def write_voc(root, scenes, split_ids=None, border=True):
    """A VOC-layout folder: JPEGImages/*.jpg, SegmentationClass/*.png (palette, 255 borders)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    masks = {}
    for i, scene in enumerate(scenes):
        sample_id = f"2007_{i:06d}"
        Image.fromarray(scene.image).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=95)
        mask = scene.mask.copy()
        if border:  # VOC marks object outlines 255 ("ignore")
            edges = np.zeros_like(mask, dtype=bool)
            edges[:, 1:] |= mask[:, 1:] != mask[:, :-1]
            edges[1:, :] |= mask[1:, :] != mask[:-1, :]
            mask[edges] = 255
        label_image(mask).save(root / "SegmentationClass" / f"{sample_id}.png")
        masks[sample_id] = mask
    if split_ids is not None:
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        for split, ids in split_ids.items():
            (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{masks_id}\n" for masks_id in ids))
    return masks


def iou_loop(truth, pred, num_classes, ignore=255):
    """Independent per-class IoU: a plain loop over classes with boolean masks, NaN for absent classes."""
    valid = truth != ignore
    out = []
    for c in range(num_classes):
        inter = np.sum((truth == c) & (pred == c) & valid)
        union = np.sum(((truth == c) | (pred == c)) & valid)
        out.append(100.0 * inter / union if union else np.nan)
    return np.array(out)
