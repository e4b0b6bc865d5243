"""Backbones and small blocks shared by the architecture families.

Every backbone is an ``nn.Module`` whose ``forward(images)`` returns a list of feature maps,
shallow to deep, with ``channels`` and ``strides`` (relative to the input) describing them.
Attribute names follow torchvision's so that torchvision checkpoints map onto them 1:1.
"""

from __future__ import annotations

import torchvision
from torch import nn


class ConvBNReLU(nn.Sequential):
    """conv → batch norm → ReLU; ``separable`` makes the conv depthwise + pointwise 1×1."""

    def __init__(
        self, in_channels, out_channels, kernel_size=3, *, dilation=1, stride=1, separable=False,
        depthwise_activation=True,
    ):
        padding = dilation * (kernel_size - 1) // 2
        if separable:
            conv = SeparableConv2d(
                in_channels, out_channels, kernel_size, dilation=dilation, stride=stride,
                depthwise_activation=depthwise_activation,
            )
        else:
            conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False
            )
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SeparableConv2d(nn.Sequential):
    """Depthwise (atrous) conv → BN [→ ReLU] → pointwise 1×1 conv.

    DeepLabv3+ (Chen et al. 2018, §3.3) puts a ReLU after the depthwise BN; FastFCN's JPU does not.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, *, dilation=1, stride=1, depthwise_activation=True):
        padding = dilation * (kernel_size - 1) // 2
        layers = [
            nn.Conv2d(
                in_channels, in_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                groups=in_channels, bias=False,
            ),
            nn.BatchNorm2d(in_channels),
        ]
        if depthwise_activation:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(in_channels, out_channels, 1, bias=False))
        super().__init__(*layers)


class GlobalAveragePool(nn.Module):
    """Mean over H and W. Unlike ``AdaptiveAvgPool2d(k>1)`` it exports shape-independently."""

    def forward(self, x):
        return x.mean((2, 3), keepdim=True)


def _dilation_schedule(output_stride: int, num_strided_stages: int) -> list[bool]:
    """Which of the last stages trade their stride for dilation to reach ``output_stride``."""
    full_stride = 2 ** (num_strided_stages + 2)  # stem and first pooling give stride 4
    if output_stride not in {full_stride >> k for k in range(num_strided_stages + 1)}:
        raise ValueError(f"output_stride must be a power of two between 4 and {full_stride}, got {output_stride}")
    dilated = (full_stride // output_stride).bit_length() - 1
    return [False] * (num_strided_stages - dilated) + [True] * dilated


class ResNetFeatures(nn.Module):
    """ResNet-50/101 (He et al. 2016) up to ``layer4``; returns [stem, layer1, …, layer4].

    Stages past ``output_stride`` use dilation instead of stride (torchvision's
    ``replace_stride_with_dilation``). ``multi_grid`` multiplies the dilation of layer4's three
    blocks (DeepLabv3, Chen et al. 2017, §4.2: (1, 2, 4)); ``None`` keeps torchvision's layout.
    torchvision gives the first block of a dilated stage the previous stage's rate;
    ``dilate_first_block`` gives it the stage's own rate, as segmentation_models_pytorch does.
    """

    _builders = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}

    def __init__(
        self, depth: int = 50, output_stride: int = 32, multi_grid: tuple[int, ...] | None = None,
        dilate_first_block: bool = False,
    ):
        super().__init__()
        if depth not in self._builders:
            raise ValueError(f"ResNet depth must be one of {sorted(self._builders)}, got {depth}")
        net = self._builders[depth](weights=None, replace_stride_with_dilation=_dilation_schedule(output_stride, 3))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        if dilate_first_block:
            for stage in (self.layer2, self.layer3, self.layer4):
                _set_dilation(stage[0].conv2, stage[-1].conv2.dilation[0])
        if multi_grid is not None:
            base_dilation = self.layer4[-1].conv2.dilation[0]  # the stage's atrous rate
            for block, unit_rate in zip(self.layer4, multi_grid, strict=True):
                _set_dilation(block.conv2, base_dilation * unit_rate)
        self.channels = [64, 256, 512, 1024, 2048]
        self.strides = [2, 4, min(8, output_stride), min(16, output_stride), output_stride]

    def forward(self, images):
        x = self.relu(self.bn1(self.conv1(images)))
        features = [x]
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


def _set_dilation(conv: nn.Conv2d, dilation: int, stride: int | None = None) -> None:
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (conv.kernel_size[0] - 1) // 2,) * 2
    if stride is not None:
        conv.stride = (stride, stride)


class StagedSequential(nn.Sequential):
    """A sequential feature extractor returning the outputs of the modules at ``return_indices``.

    Keeps the plain ``N.…`` key layout of torchvision's ``features`` Sequentials.
    """

    def __init__(self, modules, return_indices, channels, strides):
        super().__init__(*modules)
        self.return_indices = tuple(return_indices)
        self.channels = list(channels)
        self.strides = list(strides)

    def forward(self, images):
        features = []
        x = images
        for index, module in enumerate(self):
            x = module(x)
            if index in self.return_indices:
                features.append(x)
        return features


def mobilenet_v2_features(output_stride: int = 16) -> StagedSequential:
    """MobileNetV2 (Sandler et al. 2018) up to its 320-channel block (the last 1×1 conv is dropped,
    as in DeepLab); returns [stride 4 (24 ch), last (320 ch)].

    Blocks past ``output_stride`` lose their stride and get dilated depthwise convs (DeepLabv3 §3.1);
    the block that used to stride keeps the previous rate.
    """
    _dilation_schedule(output_stride, 3)  # validates
    features = list(torchvision.models.mobilenet_v2(weights=None).features.children())[:-1]
    current_stride, dilation = 2, 1  # after the stem conv
    for block in features[1:]:
        depthwise = block.conv[-3][0]
        if block.stride == 2 and current_stride == output_stride:
            _set_dilation(depthwise, dilation, stride=1)
            dilation *= 2
        else:
            if dilation > 1:
                _set_dilation(depthwise, dilation)
            current_stride *= block.stride
    return StagedSequential(
        features, return_indices=(3, len(features) - 1), channels=(24, 320), strides=(4, output_stride)
    )


def mobilenet_v3_large_features() -> StagedSequential:
    """MobileNetV3-Large (Howard et al. 2019) with the dilated last stage of torchvision's
    DeepLabV3 (output stride 16); returns [last (960 ch)]."""
    features = list(torchvision.models.mobilenet_v3_large(weights=None, dilated=True).features.children())
    return StagedSequential(features, return_indices=(len(features) - 1,), channels=(960,), strides=(16,))


def vgg16_features(*, deeplab_large_fov=False) -> StagedSequential:
    """VGG-16 (Simonyan & Zisserman 2015) conv layers; returns [pool3, pool4, pool5].

    ``deeplab_large_fov`` applies DeepLab v1's changes (Chen et al. 2015, §3.1): 3×3 pooling,
    pool4/pool5 with stride 1 and conv5 with dilation 2, so pool5 is at stride 8.
    """
    features = list(torchvision.models.vgg16(weights=None).features.children())
    pool_indices = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    if not deeplab_large_fov:
        return StagedSequential(features, pool_indices[2:], channels=(256, 512, 512), strides=(8, 16, 32))
    for position, index in enumerate(pool_indices):
        features[index] = nn.MaxPool2d(3, stride=2 if position < 3 else 1, padding=1)
    for layer in features[pool_indices[3] + 1 : pool_indices[4]]:
        if isinstance(layer, nn.Conv2d):
            _set_dilation(layer, 2)
    return StagedSequential(features, pool_indices[2:], channels=(256, 512, 512), strides=(8, 8, 8))


class XceptionBlock(nn.Module):
    """Three separable conv units, the last one strided, plus a (projected) residual."""

    def __init__(self, in_channels, channels, *, stride=1, dilation=1, residual=True):
        super().__init__()
        widths = [in_channels, *channels]
        self.units = nn.ModuleList(
            ConvBNReLU(widths[i], widths[i + 1], 3, separable=True, dilation=dilation, stride=stride if i == 2 else 1)
            for i in range(3)
        )
        if not residual:
            self.shortcut = None
        elif stride == 1 and in_channels == channels[-1]:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels[-1], 1, stride=stride, bias=False), nn.BatchNorm2d(channels[-1])
            )

    def forward(self, x):
        return self.forward_with_hidden(x)[0]

    def forward_with_hidden(self, x):
        """Returns (output, output of the second unit): the latter is the pre-stride feature map."""
        hidden = self.units[1](self.units[0](x))
        out = self.units[2](hidden)
        return (out if self.shortcut is None else out + self.shortcut(x)), hidden


class Xception65Features(nn.Module):
    """Aligned Xception-65 as modified in DeepLabv3+ (Chen et al. 2018, §3.2): all max pooling
    replaced by strided separable convs, BN + ReLU after every depthwise conv, 16 middle-flow
    blocks. Returns [stride 4 (256 ch, the decoder's low-level features), last (2048 ch)]."""

    def __init__(self, output_stride=16):
        super().__init__()
        if output_stride < 8:
            raise ValueError(f"Xception-65 supports output stride 8, 16 or 32, got {output_stride}")
        # Stride-doubling blocks after stride 4: entry block2 (never dilated), entry block3, exit block1.
        _, entry_dilated, exit_dilated = _dilation_schedule(output_stride, 3)
        middle_dilation = 2 if entry_dilated else 1
        exit_dilation = middle_dilation * (2 if exit_dilated else 1)
        self.stem = nn.Sequential(ConvBNReLU(3, 32, 3, stride=2), ConvBNReLU(32, 64, 3))
        self.entry_block1 = XceptionBlock(64, (128, 128, 128), stride=2)
        self.entry_block2 = XceptionBlock(128, (256, 256, 256), stride=2)
        self.entry_block3 = XceptionBlock(256, (728, 728, 728), stride=1 if entry_dilated else 2)
        self.middle_flow = nn.Sequential(
            *(XceptionBlock(728, (728, 728, 728), dilation=middle_dilation) for _ in range(16))
        )
        self.exit_block1 = XceptionBlock(
            728, (728, 1024, 1024), stride=1 if exit_dilated else 2, dilation=middle_dilation
        )
        self.exit_block2 = XceptionBlock(1024, (1536, 1536, 2048), dilation=exit_dilation, residual=False)
        self.channels = [256, 2048]
        self.strides = [4, output_stride]

    def forward(self, images):
        x, low_level = self.entry_block2.forward_with_hidden(self.entry_block1(self.stem(images)))
        x = self.middle_flow(self.entry_block3(x))
        return [low_level, self.exit_block2(self.exit_block1(x))]


def build_backbone(
    name: str, output_stride: int, multi_grid: tuple[int, ...] | None = None, dilate_first_block: bool = False
) -> nn.Module:
    """A backbone by name: resnet50, resnet101, mobilenetv2, mobilenetv3_large, xception65.

    ``multi_grid`` and ``dilate_first_block``: see ``ResNetFeatures``."""
    if name in ("resnet50", "resnet101"):
        return ResNetFeatures(int(name[len("resnet"):]), output_stride, multi_grid, dilate_first_block)
    if multi_grid is not None or dilate_first_block:
        raise ValueError(f"multi_grid and dilate_first_block apply to ResNet backbones only, not {name!r}")
    if name == "mobilenetv2":
        return mobilenet_v2_features(output_stride)
    if name == "xception65":
        return Xception65Features(output_stride)
    if name == "mobilenetv3_large":
        if output_stride != 16:
            raise ValueError("mobilenetv3_large is built at output stride 16 only (torchvision's layout)")
        return mobilenet_v3_large_features()
    raise ValueError(
        f"unknown backbone {name!r}; known: resnet50, resnet101, mobilenetv2, mobilenetv3_large, xception65"
    )
