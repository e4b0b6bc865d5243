"""U-Net.

Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", https://arxiv.org/abs/1505.04597.

- ``unet_original``: the paper's network — unpadded 3×3 convs, 2×2 max pooling, 2×2 up-convolutions
  halving the channels, skip connections center-cropped to the decoder's size, a 1×1 classifier.
  A 572×572 input gives 388×388 logits; only some input sizes are valid (``valid_unet_size``) and
  the output is smaller than the input.
- ``unet``: the padded ("same") variant deployments use — padded convs with batch norm, so logits
  have the input's size for any multiple of 2**depth.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

UNET_PAPER = "Ronneberger et al. 2015, U-Net: Convolutional Networks for Biomedical Image Segmentation"


class DoubleConv(nn.Sequential):
    """Two 3×3 conv → [BN] → ReLU; ``padded=False`` shrinks each side by 2 pixels."""

    def __init__(self, in_channels, out_channels, *, padded, batch_norm):
        layers = []
        for channels_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=int(padded), bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def center_crop(features, like):
    """Crops ``features`` to the spatial size of ``like`` around the center (paper, Fig. 1)."""
    top = (features.shape[2] - like.shape[2]) // 2
    left = (features.shape[3] - like.shape[3]) // 2
    return features[:, :, top : top + like.shape[2], left : left + like.shape[3]]


class UNet(nn.Module):
    def __init__(self, num_classes, depth=4, base_width=64, *, padded=True, batch_norm=True):
        super().__init__()
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.padded = padded
        self.encoder = nn.ModuleList(
            DoubleConv(3 if level == 0 else widths[level - 1], widths[level], padded=padded, batch_norm=batch_norm)
            for level in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2) for level in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            DoubleConv(2 * widths[level], widths[level], padded=padded, batch_norm=batch_norm)
            for level in reversed(range(depth))
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images):
        skips = []
        x = images
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = upsample(x)
            if not self.padded:
                skip = center_crop(skip, x)
            x = block(torch.cat([skip, x], dim=1))
        return self.classifier(x)


def unet_sizes(size: int, depth: int = 4) -> int | None:
    """Output size of the unpadded U-Net for an input ``size``, or None when it is not valid
    (an odd size before a pooling, or nothing left)."""
    for _ in range(depth):
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        if size < 1:
            return None
        size = 2 * size - 4
    return size if size >= 1 else None


def valid_unet_size(height: int, width: int, depth: int = 4) -> tuple[int, int]:
    """The smallest valid input size of the unpadded U-Net at or above each of (height, width)."""

    def next_valid(size):
        while unet_sizes(size, depth) is None:
            size += 1
        return size

    return next_valid(height), next_valid(width)


@register_model(
    "unet_original",
    family="U-Net",
    paper=UNET_PAPER,
    output_stride=16,
    defaults={"padded": False, "batch_norm": False},
    valid_input_size=valid_unet_size,
)
@register_model("unet", family="U-Net", paper=UNET_PAPER, output_stride=16)
def unet(num_classes=21, depth=4, base_width=64, padded=True, batch_norm=True):
    """U-Net with ``depth`` poolings and ``base_width`` channels at full resolution.

    The paper states no parameter count; its network at depth 4, width 64 has 31.0M."""
    return UNet(num_classes, depth, base_width, padded=padded, batch_norm=batch_norm)
