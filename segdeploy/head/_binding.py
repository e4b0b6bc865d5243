"""ctypes declarations of the fused upsample + argmax's C ABI (kernels/include/segdeploy/upsample_argmax.h)."""

from __future__ import annotations

import ctypes

from .. import _native

# sd_dtype (kernels/include/segdeploy/dtype.h)
SD_DTYPE_FLOAT32 = 0
SD_DTYPE_FLOAT16 = 1
# sd_resize_coordinates: ONNX Resize's coordinate_transformation_mode values the operator takes
COORDINATES = {"half_pixel": 0, "pytorch_half_pixel": 1, "align_corners": 2, "asymmetric": 3}
# sd_label_dtype
LABEL_DTYPES = {"uint8": 0, "int32": 1}
SCORE_DTYPES = {"float32": SD_DTYPE_FLOAT32, "float16": SD_DTYPE_FLOAT16}


class SdUpsampleArgmaxIO(ctypes.Structure):
    """``sd_upsample_argmax_io``: pointers are plain addresses (host or device memory)."""

    _fields_ = [
        ("scores", ctypes.c_void_p),
        ("scores_dtype", ctypes.c_int32),
        ("batch", ctypes.c_int32),
        ("classes", ctypes.c_int32),
        ("in_height", ctypes.c_int32),
        ("in_width", ctypes.c_int32),
        ("out_height", ctypes.c_int32),
        ("out_width", ctypes.c_int32),
        ("coordinates", ctypes.c_int32),
        ("scale_height", ctypes.c_float),
        ("scale_width", ctypes.c_float),
        ("labels", ctypes.c_void_p),
        ("labels_dtype", ctypes.c_int32),
    ]


_io_p = ctypes.POINTER(SdUpsampleArgmaxIO)
_native.register_signatures({
    "sd_upsample_argmax_validate": (ctypes.c_int, [_io_p]),
    "sd_upsample_argmax_cpu": (ctypes.c_int, [_io_p, ctypes.c_int]),
    "sd_upsample_argmax_cuda": (ctypes.c_int, [_io_p, ctypes.c_void_p]),
})
