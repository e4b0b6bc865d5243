"""The depthwise convolution and the separable block on numpy arrays, with segdeploy's CPU kernels.

``depthwise_conv`` gives what ONNX ``Conv(group=C)`` followed by the activation gives (Relu, Clip,
HardSwish), ``separable_conv`` what that followed by a 1x1 ``Conv`` (+ activation) gives, the
depthwise result never written to memory. float32 or float16 in and out, float32 sums.
"""

from __future__ import annotations

import ctypes
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import _native
from ..errors import BadInputError
from ._binding import ACTIVATIONS, DTYPES, SdActivation, SdDepthwiseConvIO, SdSeparableConvIO

#: float32's largest finite value: the upper bound of a ReLU (the ONNX nodes never carry inf).
FLT_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Activation:
    """What follows a convolution: ``none``, ``clip`` (lower, upper; ReLU = clip(0, FLT_MAX)) or ``hardswish``."""

    kind: str = "none"
    lower: float = 0.0
    upper: float = FLT_MAX

    def __post_init__(self):
        if self.kind not in ACTIVATIONS:
            raise BadInputError(f"activation {self.kind!r}: expected one of {', '.join(ACTIVATIONS)}")
        if self.kind == "clip" and (math.isnan(self.lower) or math.isnan(self.upper) or self.lower > self.upper):
            raise BadInputError(f"clip activation: needs lower <= upper, got [{self.lower}, {self.upper}]")

    def to_c(self) -> SdActivation:
        return SdActivation(ACTIVATIONS[self.kind], self.lower, self.upper)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The activation in numpy (the references of tests and measurements)."""
        if self.kind == "clip":
            return np.clip(x, self.lower, self.upper)
        if self.kind == "hardswish":
            return x * np.clip(x + 3, 0, 6) / 6
        return x


RELU = Activation("clip", 0.0, FLT_MAX)
RELU6 = Activation("clip", 0.0, 6.0)
HARDSWISH = Activation("hardswish")


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution's kernel size, strides, dilations and pads (top, left, bottom, right)."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """ONNX Conv's output size; BadInputError when it is < 1."""
        sizes = []
        for i, size in enumerate((height, width)):
            span = self.dilations[i] * (self.kernel[i] - 1) + 1
            out = (size + self.pads[i] + self.pads[i + 2] - span) // self.strides[i] + 1
            if out < 1:
                raise BadInputError(f"a {self.kernel[0]}x{self.kernel[1]} convolution (dilation {self.dilations}, pads "
                                    f"{self.pads}) has no output for a {height}x{width} input")
            sizes.append(out)
        return sizes[0], sizes[1]


def _threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 0:
        raise BadInputError(f"threads must be an integer >= 0 (0: every core), got {threads!r}")
    return int(threads)


def _tensor(value, dtype: np.dtype, shape: tuple, what: str) -> np.ndarray:
    array = np.ascontiguousarray(value)
    if array.dtype != dtype:
        raise BadInputError(f"{what} must have the input's dtype {dtype.name}, got {array.dtype.name}")
    if array.shape != shape:
        raise BadInputError(f"{what} must be shaped {list(shape)}, got {list(array.shape)}")
    return array


def _depthwise_io(x: np.ndarray, weight, bias, geometry: ConvGeometry, activation: Activation):
    """The checked ``sd_depthwise_conv_io`` (output unset) and the arrays it points into (kept alive)."""
    x = np.ascontiguousarray(x)
    if x.ndim != 4:
        raise BadInputError(f"the input must be (N, C, H, W), got shape {list(x.shape)}")
    if x.dtype.name not in DTYPES:
        raise BadInputError(f"the input must be float32 or float16, got {x.dtype.name}")
    batch, channels, height, width = x.shape
    kh, kw = geometry.kernel
    weight = _tensor(weight, x.dtype, (channels, 1, kh, kw), "the depthwise weight")
    bias = None if bias is None else _tensor(bias, x.dtype, (channels,), "the depthwise bias")
    out_h, out_w = geometry.output_size(height, width)
    io = SdDepthwiseConvIO(
        x.ctypes.data, DTYPES[x.dtype.name], batch, channels, height, width, kh, kw, *geometry.strides,
        *geometry.dilations, *geometry.pads, weight.ctypes.data, None if bias is None else bias.ctypes.data,
        activation.to_c(), None, out_h, out_w,
    )
    return io, (x, weight, bias)


def depthwise_conv(x, weight, bias=None, *, geometry: ConvGeometry, activation: Activation = Activation(),
                   threads: int = 0) -> np.ndarray:
    """``activation(Conv(x, weight, bias, group=C))`` for ``x`` (N, C, H, W) and ``weight`` (C, 1, kh, kw).
    ``threads`` 0: every core."""
    threads = _threads(threads)
    io, (x, *_keep) = _depthwise_io(x, weight, bias, geometry, activation)
    out = np.empty((x.shape[0], x.shape[1], io.out_height, io.out_width), x.dtype)
    io.output = out.ctypes.data
    _native.check(_native.load_library().sd_depthwise_conv_cpu(ctypes.byref(io), threads))
    return out


def separable_conv(x, weight, bias, pointwise_weight, pointwise_bias=None, *, geometry: ConvGeometry,
                   activation: Activation = Activation(), pointwise_activation: Activation = Activation(),
                   threads: int = 0) -> np.ndarray:
    """The depthwise convolution (see :func:`depthwise_conv`) then the 1x1 convolution by
    ``pointwise_weight`` (C_out, C, 1, 1) + ``pointwise_bias`` + ``pointwise_activation``."""
    threads = _threads(threads)
    io, (x, *_keep) = _depthwise_io(x, weight, bias, geometry, activation)
    channels = x.shape[1]
    pw = np.ascontiguousarray(pointwise_weight)
    if pw.ndim != 4 or pw.shape[1:] != (channels, 1, 1):
        raise BadInputError(f"the pointwise weight must be shaped [C_out, {channels}, 1, 1], got {list(pw.shape)}")
    pw = _tensor(pw, x.dtype, pw.shape, "the pointwise weight")
    out_channels = pw.shape[0]
    pb = None if pointwise_bias is None else _tensor(pointwise_bias, x.dtype, (out_channels,), "the pointwise bias")
    out = np.empty((x.shape[0], out_channels, io.out_height, io.out_width), x.dtype)
    block = SdSeparableConvIO(io, out_channels, pw.ctypes.data, None if pb is None else pb.ctypes.data,
                              pointwise_activation.to_c(), out.ctypes.data)
    _native.check(_native.load_library().sd_separable_conv_cpu(ctypes.byref(block), threads))
    return out
