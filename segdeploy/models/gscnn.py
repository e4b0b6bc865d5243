"""Gated-SCNN.

Takikawa, Acuna, Jampani & Fidler 2019, "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation",
https://arxiv.org/abs/1907.05740.

A regular stream (a ResNet at output stride 8) and a shape stream at input resolution: residual
blocks and 1×1 convs interleaved with gated convolutional layers (§3.2) whose gates come from the
regular stream's layer2–layer4 side outputs. The shape stream's boundary map, fused with the image
gradient, enters ASPP as an extra branch (§3.3); a DeepLabv3+-style decoder gives the logits.

Deviation: the paper feeds a Canny edge map of the image to the fusion, which cannot be exported;
here the image gradient is the Sobel gradient magnitude of the luma, computed in the graph.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock

from .backbones import ConvBNReLU, build_backbone
from .deeplab import ASPP, DeepLabV3PlusDecoder, default_atrous_rates
from .registry import register_model

GSCNN_PAPER = "Takikawa et al. 2019, Gated-SCNN: Gated Shape CNNs for Semantic Segmentation"


class GatedConv(nn.Module):
    """Gated convolutional layer (§3.2): an attention map α from the shape-stream features and a
    regular-stream side output re-weights the features as (1 + α) before a 1×1 conv."""

    def __init__(self, channels):
        super().__init__()
        self.gate = nn.Sequential(
            nn.BatchNorm2d(channels + 1),
            nn.Conv2d(channels + 1, channels + 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels + 1, 1, 1),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, features, side_output):
        attention = self.gate(torch.cat([features, side_output], dim=1))
        return self.conv(features * (attention + 1))


class ImageGradient(nn.Module):
    """Sobel gradient magnitude of the image's luma: an exportable stand-in for Canny edges."""

    def __init__(self):
        super().__init__()
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        # Buffers, not parameters, and not in the state dict: they are fixed by construction.
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("sobel", torch.stack([sobel_x, sobel_x.T]).unsqueeze(1), persistent=False)

    def forward(self, images):
        luma = (images * self.luma).sum(1, keepdim=True)
        gradient = F.conv2d(luma, self.sobel, padding=1)
        return gradient.pow(2).sum(1, keepdim=True).sqrt()


class ShapeStream(nn.Module):
    """Residual block → 1×1 conv (halving channels) → gated conv, three times, then a 1×1 conv to
    one boundary logit map, all at input resolution."""

    def __init__(self, in_channels, side_channels, widths=(64, 32, 16, 8)):
        super().__init__()
        # ResNet's stem already has the 64 channels the paper's first residual block takes.
        self.input_projection = nn.Identity() if in_channels == widths[0] else nn.Conv2d(in_channels, widths[0], 1)
        self.side_outputs = nn.ModuleList(nn.Conv2d(channels, 1, 1) for channels in side_channels)
        self.residual_blocks = nn.ModuleList(BasicBlock(width, width) for width in widths[:-1])
        self.reductions = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:]))
        self.gates = nn.ModuleList(GatedConv(width) for width in widths[1:])
        self.to_boundary = nn.Conv2d(widths[-1], 1, 1, bias=False)

    def forward(self, early_features, side_features, size):
        x = F.interpolate(self.input_projection(early_features), size=size, mode="bilinear", align_corners=False)
        for block, reduce, gate, side, features in zip(
            self.residual_blocks, self.reductions, self.gates, self.side_outputs, side_features
        ):
            side_map = F.interpolate(side(features), size=size, mode="bilinear", align_corners=False)
            x = gate(reduce(block(x)), side_map)
        return self.to_boundary(x)


class GatedSCNN(nn.Module):
    def __init__(self, num_classes, backbone: nn.Module, atrous_rates, channels=256, *, return_boundary=False):
        super().__init__()
        self.return_boundary = return_boundary
        self.backbone = backbone
        # ResNet features: [stem (stride 2), layer1 (4), layer2, layer3, layer4].
        self.shape_stream = ShapeStream(backbone.channels[0], backbone.channels[2:])
        self.image_gradient = ImageGradient()
        self.boundary_fusion = nn.Conv2d(2, 1, 1, bias=False)
        self.boundary_branch = ConvBNReLU(1, channels, 1)
        self.aspp = ASPP(backbone.channels[-1], atrous_rates, channels, extra_branches=1, dropout=0.0)
        self.decoder = DeepLabV3PlusDecoder(backbone.channels[1], num_classes, channels)

    def forward(self, images):
        size = images.shape[-2:]
        stem, layer1, *side_features = self.backbone(images)
        boundary = torch.sigmoid(self.shape_stream(stem, side_features, size))
        fused = torch.sigmoid(self.boundary_fusion(torch.cat([boundary, self.image_gradient(images)], dim=1)))
        deepest = side_features[-1]
        fused = F.interpolate(fused, size=deepest.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.decoder(self.aspp(deepest, self.boundary_branch(fused)), layer1)
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return (logits, boundary) if self.return_boundary else logits


@register_model("gscnn_resnet50", family="Gated-SCNN", paper=GSCNN_PAPER, output_stride=8,
                defaults={"backbone": "resnet50"})
@register_model("gscnn_resnet101", family="Gated-SCNN", paper=GSCNN_PAPER, output_stride=8,
                defaults={"backbone": "resnet101"})
def gscnn(num_classes=21, backbone="resnet50", output_stride=8, atrous_rates=None, return_boundary=False):
    """Gated-SCNN on a dilated ResNet; ``return_boundary=True`` makes forward return
    ``(logits, boundary)`` with the boundary probability map at input resolution."""
    features = build_backbone(backbone, output_stride)
    rates = atrous_rates or default_atrous_rates(output_stride)
    return GatedSCNN(num_classes, features, rates, return_boundary=return_boundary)
