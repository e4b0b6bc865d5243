"""FC-DenseNet ("The One Hundred Layers Tiramisu").

Jégou, Drozdzal, Vazquez, Romero & Bengio 2017, "The One Hundred Layers Tiramisu: Fully
Convolutional DenseNets for Semantic Segmentation", https://arxiv.org/abs/1611.09326.

A 3×3 conv to 48 channels, five dense blocks each followed by a transition down (BN, ReLU, 1×1 conv,
dropout 0.2, 2×2 max pooling), a bottleneck dense block, and five transitions up (3×3 transposed
conv, stride 2) each followed by a dense block over the upsampled new features concatenated with
the skip. On the way up only the dense blocks' new feature maps are upsampled (§3.2), which keeps
the parameter count low (Table 2: 56 → 1.5M, 67 → 3.5M, 103 → 9.4M).

Deviation: the transposed convs use padding 1 and output padding 1 (exactly 2× the input) instead
of an unpadded conv followed by a crop; the parameters are the same.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

TIRAMISU_PAPER = "Jégou et al. 2017, The One Hundred Layers Tiramisu (FC-DenseNet)"
DROPOUT = 0.2


class DenseLayer(nn.Sequential):
    """BN → ReLU → 3×3 conv producing ``growth_rate`` maps → dropout (Table 1, "Layer")."""

    def __init__(self, in_channels, growth_rate):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, 3, padding=1),
            nn.Dropout2d(DROPOUT),
        )


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and all earlier layers' outputs.

    Returns the input concatenated with the new maps, or only the new maps (``new_only``), which is
    what the upsampling path passes on."""

    def __init__(self, in_channels, growth_rate, num_layers, *, new_only=False):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth_rate, growth_rate) for i in range(num_layers))
        self.new_only = new_only
        self.out_channels = num_layers * growth_rate + (0 if new_only else in_channels)

    def forward(self, x):
        new_maps = []
        for layer in self.layers:
            new_maps.append(layer(x))
            x = torch.cat([x, new_maps[-1]], dim=1)
        return torch.cat(new_maps, dim=1) if self.new_only else x


class TransitionDown(nn.Sequential):
    """BN → ReLU → 1×1 conv → dropout → 2×2 max pooling (Table 1, "Transition Down")."""

    def __init__(self, channels):
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Dropout2d(DROPOUT),
            nn.MaxPool2d(2),
        )


def transition_up(channels):
    """3×3 transposed conv, stride 2 (Table 1, "Transition Up")."""
    return nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1)


class FCDenseNet(nn.Module):
    def __init__(self, num_classes, layers_per_block, bottleneck_layers, growth_rate, first_channels=48):
        super().__init__()
        self.first_conv = nn.Conv2d(3, first_channels, 3, padding=1)
        channels = first_channels
        skip_channels = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for num_layers in layers_per_block:
            block = DenseBlock(channels, growth_rate, num_layers)
            channels = block.out_channels
            skip_channels.append(channels)
            self.down_blocks.append(block)
            self.transitions_down.append(TransitionDown(channels))
        self.bottleneck = DenseBlock(channels, growth_rate, bottleneck_layers, new_only=True)
        upsampled = self.bottleneck.out_channels
        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level, num_layers in enumerate(reversed(layers_per_block)):
            last = level == len(layers_per_block) - 1
            self.transitions_up.append(transition_up(upsampled))
            # The last block keeps its input so the classifier sees all of it (§3.2, Fig. 1).
            block = DenseBlock(upsampled + skip_channels[-1 - level], growth_rate, num_layers, new_only=not last)
            self.up_blocks.append(block)
            upsampled = block.out_channels
        self.classifier = nn.Conv2d(upsampled, num_classes, 1)

    def forward(self, images):
        x = self.first_conv(images)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.transitions_up, self.up_blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.classifier(x)


def _tiramisu(name, layers_per_block, bottleneck_layers, growth_rate, paper_params_m):
    register_model(
        name,
        family="FC-DenseNet",
        paper=TIRAMISU_PAPER,
        output_stride=2 ** len(layers_per_block),
        defaults={
            "layers_per_block": layers_per_block,
            "bottleneck_layers": bottleneck_layers,
            "growth_rate": growth_rate,
        },
        paper_params_m=paper_params_m,
    )(fcdensenet)


def fcdensenet(num_classes=21, layers_per_block=(4, 5, 7, 10, 12), bottleneck_layers=15, growth_rate=16):
    """FC-DenseNet with the given dense block sizes (mirrored on the way up) and growth rate."""
    return FCDenseNet(num_classes, layers_per_block, bottleneck_layers, growth_rate)


# Table 2 of the paper.
_tiramisu("fcdensenet56", (4,) * 5, 4, 12, 1.5)
_tiramisu("fcdensenet67", (5,) * 5, 5, 16, 3.5)
_tiramisu("fcdensenet103", (4, 5, 7, 10, 12), 15, 16, 9.4)
