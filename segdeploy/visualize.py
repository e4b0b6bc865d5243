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


#: Binary masks: foreground drawn in this colour over the picture (background left as it is).
FOREGROUND_COLOUR = (255, 0, 255)


def mask_palette(binary: bool = False) -> np.ndarray:
    """The palette of mask PNGs: VOC colours, or for a binary mask 0 black and 1 white (visible in any viewer)."""
    palette = voc_palette()
    if binary:
        palette = palette.copy()
        palette[1] = (255, 255, 255)
    return palette


def label_image(labels: np.ndarray, palette: np.ndarray | None = None):
    """A palette PNG image (mode "P") whose pixel values are the class indices."""
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette((voc_palette() if palette is None else palette).ravel().tolist())
    return image


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, binary: bool = False) -> np.ndarray:
    """Blend the coloured labels over an RGB uint8 image of the same height and width; ``binary``: only the
    foreground (label 1) is tinted, in FOREGROUND_COLOUR."""
    labels = labels.astype(np.uint8)
    if binary:
        blended = image.astype(np.float32)
        fg = labels == 1
        blended[fg] = blended[fg] * (1 - alpha) + np.asarray(FOREGROUND_COLOUR, np.float32) * alpha
        return blended.round().astype(np.uint8)
    colours = voc_palette()[labels]
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)
