"""ctypes declarations of the depthwise and separable convolutions' C ABI
(kernels/include/segdeploy/depthwise_conv.h)."""

from __future__ import annotations

import ctypes

from .. import _native

# sd_dtype (kernels/include/segdeploy/dtype.h)
DTYPES = {"float32": 0, "float16": 1}
# sd_activation_kind
ACTIVATIONS = {"none": 0, "clip": 1, "hardswish": 2}


class SdActivation(ctypes.Structure):
    """``sd_activation``: kind, and the clip bounds (ReLU: 0, FLT_MAX)."""

    _fields_ = [("kind", ctypes.c_int32), ("lower", ctypes.c_float), ("upper", ctypes.c_float)]


class SdDepthwiseConvIO(ctypes.Structure):
    """``sd_depthwise_conv_io``: pointers are plain addresses of host memory."""

    _fields_ = [
        ("input", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("in_height", ctypes.c_int32),
        ("in_width", ctypes.c_int32),
        ("kernel_height", ctypes.c_int32),
        ("kernel_width", ctypes.c_int32),
        ("stride_height", ctypes.c_int32),
        ("stride_width", ctypes.c_int32),
        ("dilation_height", ctypes.c_int32),
        ("dilation_width", ctypes.c_int32),
        ("pad_top", ctypes.c_int32),
        ("pad_left", ctypes.c_int32),
        ("pad_bottom", ctypes.c_int32),
        ("pad_right", ctypes.c_int32),
        ("weight", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("activation", SdActivation),
        ("output", ctypes.c_void_p),
        ("out_height", ctypes.c_int32),
        ("out_width", ctypes.c_int32),
    ]


class SdSeparableConvIO(ctypes.Structure):
    """``sd_separable_conv_io``: the depthwise part (its output NULL), then the pointwise 1x1."""

    _fields_ = [
        ("depthwise", SdDepthwiseConvIO),
        ("out_channels", ctypes.c_int32),
        ("pointwise_weight", ctypes.c_void_p),
        ("pointwise_bias", ctypes.c_void_p),
        ("pointwise_activation", SdActivation),
        ("output", ctypes.c_void_p),
    ]


_dw_p, _sep_p, _i32 = ctypes.POINTER(SdDepthwiseConvIO), ctypes.POINTER(SdSeparableConvIO), ctypes.c_int32
_native.register_signatures({
    "sd_conv_output_size": (ctypes.c_int, [_i32, _i32, _i32, _i32, _i32, _i32, ctypes.POINTER(_i32)]),
    "sd_depthwise_conv_validate": (ctypes.c_int, [_dw_p]),
    "sd_depthwise_conv_cpu": (ctypes.c_int, [_dw_p, ctypes.c_int]),
    "sd_depthwise_conv_cuda": (ctypes.c_int, [_dw_p, ctypes.c_void_p]),
    "sd_separable_conv_validate": (ctypes.c_int, [_sep_p]),
    "sd_separable_conv_cpu": (ctypes.c_int, [_sep_p, ctypes.c_int]),
})
