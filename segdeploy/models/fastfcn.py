"""FastFCN.

Wu, Zhang, Huang, Liang & Yu 2019, "FastFCN: Rethinking Dilated Convolution in the Backbone for
Semantic Segmentation", https://arxiv.org/abs/1903.11816.

The backbone keeps its strides (output stride 32, cheaper than a dilated one); the Joint Pyramid
Upsampling module (JPU, §3.2) brings conv3–conv5 to stride 8 (3×3 conv + BN + ReLU each, upsampled
and concatenated) and mixes them with four separable convs at dilations 1/2/4/8 whose outputs are
concatenated. An FCN head or a DeepLabv3-style ASPP head follows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import ConvBNReLU, build_backbone
from .deeplab import DeepLabV3Head, default_atrous_rates
from .fcn import FCNHead
from .registry import register_model

FASTFCN_PAPER = "Wu et al. 2019, FastFCN: Rethinking Dilated Convolution in the Backbone for Semantic Segmentation"


class JointPyramidUpsampling(nn.Module):
    def __init__(self, in_channels=(512, 1024, 2048), width=512, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.reduce = nn.ModuleList(ConvBNReLU(channels, width, 3) for channels in in_channels)
        self.dilated = nn.ModuleList(
            ConvBNReLU(len(in_channels) * width, width, 3, dilation=d, separable=True, depthwise_activation=False)
            for d in dilations
        )
        self.out_channels = len(dilations) * width

    def forward(self, features):
        """``features``: stride 8, 16 and 32 maps; returns ``out_channels`` maps at stride 8."""
        reduced = [reduce(x) for reduce, x in zip(self.reduce, features)]
        size = reduced[0].shape[-2:]
        upsampled = [reduced[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in reduced[1:]]
        joint = torch.cat(upsampled, dim=1)
        return torch.cat([branch(joint) for branch in self.dilated], dim=1)


class FastFCN(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, jpu: JointPyramidUpsampling):
        super().__init__()
        self.backbone = backbone
        self.jpu = jpu
        self.head = head

    def forward(self, images):
        features = self.backbone(images)[-3:]  # conv3, conv4, conv5
        logits = self.head(self.jpu(features))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


_HEADS = ("fcn", "aspp")


def _register(name, backbone, head):
    return register_model(
        name, family="FastFCN", paper=FASTFCN_PAPER, output_stride=32, defaults={"backbone": backbone, "head": head}
    )


@_register("fastfcn_fcn_resnet50", "resnet50", "fcn")
@_register("fastfcn_aspp_resnet50", "resnet50", "aspp")
@_register("fastfcn_fcn_resnet101", "resnet101", "fcn")
@_register("fastfcn_aspp_resnet101", "resnet101", "aspp")
def fastfcn(num_classes=21, backbone="resnet50", head="fcn", jpu_width=512):
    """FastFCN: strided ResNet + JPU + an FCN or ASPP head (the JPU output is at stride 8)."""
    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
    features = build_backbone(backbone, output_stride=32)
    jpu = JointPyramidUpsampling(features.channels[-3:], jpu_width)
    if head == "fcn":
        classifier = FCNHead(jpu.out_channels, num_classes)
    else:
        classifier = DeepLabV3Head(jpu.out_channels, num_classes, default_atrous_rates(8))
    return FastFCN(features, classifier, jpu)
