"""Colour label maps (Pascal VOC palette) and overlays on the input image."""

from __future__ import annotations

import numpy as np


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: class i's RGB comes from interleaving the bits of i."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def label_image(labels: np.ndarray):
    """A palette PNG image (mode "P") whose pixel values are the class indices."""
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().ravel().tolist())
    return image


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured labels over an RGB uint8 image of the same height and width."""
    colours = voc_palette()[labels.astype(np.uint8)]
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)
