"""Small user models for tests, given to the CLI as ``--model toy_models:NAME``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ColourNet(nn.Module):
    """A constructed (not random) model: class i wins where colour channel i dominates.

    Its argmax varies across an image, so argmax agreement is a meaningful figure for it.
    """

    output_stride = 4

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.head = nn.Conv2d(8, num_classes, 1)
        with torch.no_grad():
            self.down.weight.zero_()
            self.down.bias.zero_()
            for c in range(3):
                self.down.weight[c, c, 1, 1] = 1.0
            self.head.weight.zero_()
            self.head.bias.zero_()
            for k in range(num_classes):
                self.head.weight[k, k % 3, 0, 0] = 4.0

    def forward(self, images):
        logits = self.head(self.down(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class AdaptivePoolNet(ColourNet):
    """Adaptive pooling to 2x2: the dynamo exporter bakes the example's pooling window into the
    graph, so the ONNX is right at the export shape and silently wrong at others."""

    def __init__(self, num_classes: int = 3):
        super().__init__(num_classes)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))

    def forward(self, images):
        features = self.head(self.down(images))
        context = F.interpolate(self.pool(features), size=features.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(features + context, size=images.shape[-2:], mode="bilinear", align_corners=False)


class LargeLogitsNet(ColourNet):
    """ColourNet with logits scaled by 1e4 (as deep random networks reach): float32 rounding of
    logits ~1e5 (one ulp is ~8e-3) already exceeds an absolute 1e-3 tolerance."""

    def forward(self, images):
        return 1e4 * super().forward(images)


class SideOutputNet(ColourNet):
    """Two outputs: exact logits, and a side output (context, as an auxiliary head) through the
    adaptive pooling that exports wrong at shapes other than the example's."""

    output_names = ("logits", "context")

    def __init__(self, num_classes: int = 3):
        super().__init__(num_classes)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))

    def forward(self, images):
        logits = super().forward(images)
        context = F.interpolate(self.pool(logits), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits, context


class FaintBinaryNet(ColourNet):
    """One output channel (a binary logit) of tiny scale, foreground where red exceeds its
    pooled local mean: the adaptive pooling's mis-export at other shapes moves the logits by
    far less than any tolerance, but flips the sign, so the foreground, at many pixels; and the
    argmax of one channel is always 0."""

    def __init__(self, num_classes: int = 1):
        super().__init__(1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))

    def forward(self, images):
        red = self.head(self.down(images))
        local_mean = F.interpolate(self.pool(red), size=red.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(1e-5 * (red - local_mean), size=images.shape[-2:], mode="bilinear", align_corners=False)


class UnexportableNet(ColourNet):
    """Branches on the data: torch.export cannot trace it into one graph."""

    def forward(self, images):
        logits = super().forward(images)
        return logits if images.sum() > 0 else -logits


def colour_net(num_classes: int = 3) -> nn.Module:
    return ColourNet(num_classes)


def adaptive_pool_net(num_classes: int = 3) -> nn.Module:
    return AdaptivePoolNet(num_classes)


def unexportable_net(num_classes: int = 3) -> nn.Module:
    return UnexportableNet(num_classes)


def large_logits_net(num_classes: int = 3) -> nn.Module:
    return LargeLogitsNet(num_classes)


def side_output_net(num_classes: int = 3) -> nn.Module:
    return SideOutputNet(num_classes)


def faint_binary_net(num_classes: int = 1) -> nn.Module:
    return FaintBinaryNet(num_classes)
