"""Fully convolutional networks.

Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation",
https://arxiv.org/abs/1411.4038 — VGG-16 with fc6/fc7 as convolutions; FCN-32s upsamples the
stride-32 scores, FCN-16s and FCN-8s first fuse 2×-upsampled scores with scores predicted from pool4
(and pool3).

Deviation from the paper: the original pads conv1_1 by 100 and crops after upsampling; here fc6 is a
padded ("same") 7×7 conv so any input that is a multiple of 32 maps to an exactly aligned output,
with the same parameters (FCN paper, Table 1: 134M for FCN-VGG16).

FCN-ResNet50/101 follow torchvision's ``fcn_resnet50/101`` (dilated ResNet at output stride 8 with
``FCNHead``) so that its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import build_backbone, vgg16_features
from .deeplab import SegmentationModel
from .registry import register_model

FCN_PAPER = "Long et al. 2015, Fully Convolutional Networks for Semantic Segmentation"


class FCNHead(nn.Sequential):
    """3×3 conv to in/4 channels → BN → ReLU → dropout → 1×1 classifier (torchvision's layout)."""

    def __init__(self, in_channels, num_classes):
        channels = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable 2·factor × 2·factor transposed conv initialised to bilinear interpolation
    (FCN §3.3); output is exactly ``factor`` times the input size."""
    kernel_size = 2 * factor
    upsample = nn.ConvTranspose2d(
        channels, channels, kernel_size, stride=factor, padding=factor // 2, groups=channels, bias=False
    )
    center = (kernel_size - 1) / 2
    taps = 1 - torch.abs(torch.arange(kernel_size, dtype=torch.float32) - center) / factor
    with torch.no_grad():
        upsample.weight.copy_((taps[:, None] * taps[None, :]).expand_as(upsample.weight))
    return upsample


class FCNVGG16(nn.Module):
    """FCN-32s/16s/8s: ``skips`` is how many of pool4, pool3 feed score fusion (0, 1 or 2)."""

    def __init__(self, num_classes, skips):
        super().__init__()
        self.backbone = vgg16_features()
        self.classifier = nn.Sequential(  # fc6, fc7 as convolutions, then the score layer
            nn.Conv2d(512, 4096, 7, padding=3),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(4096, 4096, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(4096, num_classes, 1),
        )
        # Scores from pool4 then pool3 (channels 512, 256), each fused after a learnable 2× upsampling.
        skip_channels = list(reversed(self.backbone.channels[:-1]))[:skips]
        self.skip_scores = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in skip_channels)
        self.skip_upsampling = nn.ModuleList(bilinear_upsampling(num_classes, 2) for _ in skip_channels)
        for score in self.skip_scores:  # zero-initialised so training starts from the coarser net (§4.2)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)

    def forward(self, images):
        pool3, pool4, pool5 = self.backbone(images)
        scores = self.classifier(pool5)
        for skip, score, upsample in zip((pool4, pool3), self.skip_scores, self.skip_upsampling):
            scores = upsample(scores) + score(skip)
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


@register_model("fcn32s_vgg16", family="FCN", paper=FCN_PAPER, output_stride=32, defaults={"skips": 0},
                paper_params_m=134.0)
@register_model("fcn16s_vgg16", family="FCN", paper=FCN_PAPER, output_stride=32, defaults={"skips": 1},
                paper_params_m=134.0)
@register_model("fcn8s_vgg16", family="FCN", paper=FCN_PAPER, output_stride=32, defaults={"skips": 2},
                paper_params_m=134.0)
def fcn_vgg16(num_classes=21, skips=2):
    """FCN-8s (skips=2), FCN-16s (1) or FCN-32s (0) on VGG-16."""
    return FCNVGG16(num_classes, skips)


@register_model("fcn_resnet50", family="FCN", paper=FCN_PAPER, output_stride=8, defaults={"backbone": "resnet50"},
                checkpoints=("segdeploy state dict", "torchvision fcn_resnet50"))
@register_model("fcn_resnet101", family="FCN", paper=FCN_PAPER, output_stride=8, defaults={"backbone": "resnet101"},
                checkpoints=("segdeploy state dict", "torchvision fcn_resnet101"))
def fcn_resnet(num_classes=21, backbone="resnet50", output_stride=8):
    """FCN on a dilated ResNet (torchvision's layout)."""
    features = build_backbone(backbone, output_stride)
    return SegmentationModel(features, FCNHead(features.channels[-1], num_classes))
