"""DeepLab v1, v2, v3 and v3+.

- DeepLab v1: Chen et al. 2015, "Semantic Image Segmentation with Deep Convolutional Nets and Fully
  Connected CRFs", https://arxiv.org/abs/1412.7062 — VGG-16 LargeFOV: atrous fc6 (3×3, rate 12,
  1024 channels), output stride 8. The CRF is a post-processing step, not part of the network.
- DeepLab v2: Chen et al. 2017, "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
  Atrous Convolution, and Fully Connected CRFs", https://arxiv.org/abs/1606.00915 — ResNet-101 at
  output stride 8 with ASPP-L: four 3×3 classifiers at rates 6/12/18/24, summed.
- DeepLabv3: Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation",
  https://arxiv.org/abs/1706.05587 — ASPP with image-level pooling and batch norm, output stride
  8 or 16, multi-grid.
- DeepLabv3+: Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution for Semantic
  Image Segmentation", https://arxiv.org/abs/1802.02611 — DeepLabv3 as encoder plus a decoder that
  fuses 48-channel low-level features and upsamples ×4.

Module names follow torchvision's ``models/segmentation/deeplabv3.py`` so that its checkpoints
load unchanged (see convert.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import ConvBNReLU, GlobalAveragePool, build_backbone, vgg16_features
from .registry import register_model

DEEPLABV1_PAPER = "Chen et al. 2015, Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs"
DEEPLABV2_PAPER = "Chen et al. 2017, DeepLab: ... Atrous Convolution, and Fully Connected CRFs (TPAMI)"
DEEPLABV3_PAPER = "Chen et al. 2017, Rethinking Atrous Convolution for Semantic Image Segmentation"
DEEPLABV3PLUS_PAPER = "Chen et al. 2018, Encoder-Decoder with Atrous Separable Convolution (DeepLabv3+)"


def default_atrous_rates(output_stride: int) -> tuple[int, ...]:
    """(6, 12, 18) at output stride 16, doubled at 8 (DeepLabv3 §4.3)."""
    scale = 16 // output_stride if output_stride <= 16 else 1
    return tuple(rate * scale for rate in (6, 12, 18))


class ImagePooling(nn.Sequential):
    """ASPP's image-level branch: global mean → 1×1 conv → BN → ReLU, broadcast back over H×W.

    A global mean rather than ``AdaptiveAvgPool2d`` keeps the ONNX graph valid at any input size;
    broadcasting a 1×1 map equals bilinear upsampling of it.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__(
            GlobalAveragePool(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return super().forward(x).expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1×1 conv, one 3×3 atrous conv per rate and image pooling,
    concatenated and projected to ``out_channels``.

    ``extra_branches`` widens the projection for that many more ``out_channels`` maps computed
    elsewhere and passed to ``forward`` (Gated-SCNN's boundary branch)."""

    def __init__(
        self, in_channels, atrous_rates, out_channels=256, *, separable=False, dropout=0.5, extra_branches=0
    ):
        super().__init__()
        branches = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [
            ConvBNReLU(in_channels, out_channels, 3, dilation=rate, separable=separable) for rate in atrous_rates
        ]
        branches.append(ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d((len(branches) + extra_branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x, *extra_branch_outputs):
        return self.project(torch.cat([branch(x) for branch in self.convs] + list(extra_branch_outputs), dim=1))


class DeepLabV3Head(nn.Sequential):
    """ASPP → 3×3 conv → BN → ReLU → 1×1 classifier (torchvision's ``DeepLabHead`` layout)."""

    def __init__(self, in_channels, num_classes, atrous_rates, channels=256):
        super().__init__(
            ASPP(in_channels, atrous_rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )


class SegmentationModel(nn.Module):
    """backbone → head on the deepest feature map → bilinear upsampling to the input size.

    ``align_corners=True`` reproduces segmentation_models_pytorch's final upsampling."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module, *, align_corners=False):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.align_corners = align_corners

    def forward(self, images):
        logits = self.classifier(self.backbone(images)[-1])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners)


class LargeFOVHead(nn.Sequential):
    """DeepLab v1's fc6 (3×3, rate 12, 1024 channels) → fc7 (1×1) → fc8 classifier."""

    def __init__(self, in_channels, num_classes, rate=12, channels=1024):
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(channels, num_classes, 1),
        )


class SummedASPP(nn.Module):
    """DeepLab v2's ASPP-L: one 3×3 atrous classifier per rate, their logits summed."""

    def __init__(self, in_channels, num_classes, atrous_rates=(6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in atrous_rates
        )

    def forward(self, x):
        logits = self.branches[0](x)
        for branch in self.branches[1:]:
            logits = logits + branch(x)
        return logits


class DeepLabV3PlusDecoder(nn.Module):
    """Fuses ASPP output (upsampled to stride 4) with 48-channel projected low-level features."""

    def __init__(self, low_level_channels, num_classes, channels=256, low_level_projection=48, *, separable=False):
        super().__init__()
        self.project_low_level = ConvBNReLU(low_level_channels, low_level_projection, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(channels + low_level_projection, channels, 3, separable=separable),
            ConvBNReLU(channels, channels, 3, separable=separable),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, aspp_features, low_level_features):
        upsampled = F.interpolate(
            aspp_features, size=low_level_features.shape[-2:], mode="bilinear", align_corners=False
        )
        fused = self.fuse(torch.cat([upsampled, self.project_low_level(low_level_features)], dim=1))
        return self.classifier(fused)


class DeepLabV3Plus(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes, atrous_rates, channels=256, *, separable=False):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.channels[-1], atrous_rates, channels, separable=separable, dropout=0.1)
        self.low_level_index = backbone.strides.index(4)
        self.decoder = DeepLabV3PlusDecoder(
            backbone.channels[self.low_level_index], num_classes, channels, separable=separable
        )

    def forward(self, images):
        features = self.backbone(images)
        logits = self.decoder(self.aspp(features[-1]), features[self.low_level_index])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@register_model("deeplabv1_vgg16_largefov", family="DeepLab v1", paper=DEEPLABV1_PAPER, output_stride=8, paper_params_m=20.5)
def deeplabv1_largefov(num_classes=21, rate=12):
    """DeepLab-LargeFOV (v1 paper, Table 2: 20.5M parameters)."""
    backbone = vgg16_features(deeplab_large_fov=True)
    return SegmentationModel(backbone, LargeFOVHead(backbone.channels[-1], num_classes, rate))


@register_model("deeplabv2_resnet101", family="DeepLab v2", paper=DEEPLABV2_PAPER, output_stride=8)
def deeplabv2(num_classes=21, backbone="resnet101", output_stride=8, atrous_rates=(6, 12, 18, 24)):
    """DeepLab v2 ResNet-101 with ASPP-L (rates 6/12/18/24, branch logits summed)."""
    features = build_backbone(backbone, output_stride)
    return SegmentationModel(features, SummedASPP(features.channels[-1], num_classes, atrous_rates))


@register_model("deeplabv3_resnet50", family="DeepLabv3", paper=DEEPLABV3_PAPER, output_stride=8, defaults={"backbone": "resnet50"},
                checkpoints=("segdeploy state dict", "torchvision deeplabv3_resnet50"))
@register_model("deeplabv3_resnet101", family="DeepLabv3", paper=DEEPLABV3_PAPER, output_stride=8, defaults={"backbone": "resnet101"},
                checkpoints=("segdeploy state dict", "torchvision deeplabv3_resnet101"))
@register_model("deeplabv3_mobilenetv2", family="DeepLabv3", paper=DEEPLABV3_PAPER, output_stride=16,
                defaults={"backbone": "mobilenetv2", "output_stride": 16})
@register_model("deeplabv3_mobilenetv3_large", family="DeepLabv3", paper=DEEPLABV3_PAPER, output_stride=16,
                defaults={"backbone": "mobilenetv3_large", "output_stride": 16, "atrous_rates": (12, 24, 36)},
                checkpoints=("segdeploy state dict", "torchvision deeplabv3_mobilenet_v3_large"))
@register_model("deeplabv3_resnet50_smp", family="DeepLabv3", paper=DEEPLABV3_PAPER, output_stride=8,
                defaults={"backbone": "resnet50", "smp_layout": True},
                checkpoints=("segdeploy state dict", "segmentation_models_pytorch DeepLabV3(encoder_name='resnet50' or 'resnet101' "
                             "with --model-arg backbone=resnet101), default decoder arguments"))
def deeplabv3(
    num_classes=21, backbone="resnet50", output_stride=8, atrous_rates=None, multi_grid=None, smp_layout=False
):
    """DeepLabv3. Defaults match torchvision's layout (output stride 8, rates 12/24/36, no
    multi-grid); the paper's best setting adds ``multi_grid=(1, 2, 4)``. ``smp_layout`` matches
    segmentation_models_pytorch's DeepLabV3 instead: the first block of each dilated ResNet stage
    dilated too, and the final upsampling with ``align_corners=True``."""
    features = build_backbone(backbone, output_stride, multi_grid, dilate_first_block=smp_layout)
    rates = atrous_rates or default_atrous_rates(output_stride)
    head = DeepLabV3Head(features.channels[-1], num_classes, rates)
    return SegmentationModel(features, head, align_corners=smp_layout)


#: The DeepLabv3+ variants: name -> constructor defaults (ASPP rates 6/12/18 at output stride 16).
DEEPLABV3PLUS_VARIANTS = {
    "deeplabv3plus": {"backbone": "resnet50"},
    "deeplabv3plus_resnet101": {"backbone": "resnet101"},
    "deeplabv3plus_mobilenetv2": {"backbone": "mobilenetv2"},
    "deeplabv3plus_xception65": {"backbone": "xception65", "separable": True},
}


def deeplabv3plus(
    num_classes=21, backbone="resnet50", output_stride=16, atrous_rates=None, multi_grid=None, separable=False
):
    """DeepLabv3+: ASPP (rates 6/12/18 at stride 16) + decoder with 48-channel low-level features.

    ``separable`` uses depthwise-separable atrous convs in ASPP and decoder (the paper's Xception
    setting)."""
    features = build_backbone(backbone, output_stride, multi_grid)
    rates = atrous_rates or default_atrous_rates(output_stride)
    return DeepLabV3Plus(features, num_classes, rates, separable=separable)


for _name, _defaults in DEEPLABV3PLUS_VARIANTS.items():
    register_model(_name, family="DeepLabv3+", paper=DEEPLABV3PLUS_PAPER, output_stride=16, defaults=_defaults)(deeplabv3plus)
