"""ctypes declarations of the dense CRF's C ABI (kernels/include/segdeploy/densecrf.h)."""

from __future__ import annotations

import ctypes

from .. import _native

SD_DTYPE_FLOAT32 = 0
SD_DTYPE_FLOAT16 = 1
SD_IMAGE_HWC = 0
SD_IMAGE_CHW = 1
UNARY_KINDS = {"logits": 0, "probabilities": 1, "neg_log_prob": 2}
NORMALIZATIONS = {"symmetric": 0, "after": 1}


class SdCrfParams(ctypes.Structure):
    """``sd_crf_params`` (built from :class:`segdeploy.crf.CRFParams`)."""

    _fields_ = [
        ("spatial_weight", ctypes.c_float),
        ("spatial_theta", ctypes.c_float),
        ("bilateral_weight", ctypes.c_float),
        ("bilateral_theta_xy", ctypes.c_float),
        ("bilateral_theta_rgb", ctypes.c_float),
        ("iterations", ctypes.c_int32),
        ("normalization", ctypes.c_int32),
    ]


class SdCrfIO(ctypes.Structure):
    """``sd_crf_io``: pointers are plain addresses (host or device memory)."""

    _fields_ = [
        ("unary", ctypes.c_void_p),
        ("unary_dtype", ctypes.c_int32),
        ("unary_kind", ctypes.c_int32),
        ("image", ctypes.c_void_p),
        ("image_layout", ctypes.c_int32),
        ("batch", ctypes.c_int32),
        ("classes", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("probabilities", ctypes.c_void_p),
        ("labels", ctypes.c_void_p),
    ]


_params_p, _io_p = ctypes.POINTER(SdCrfParams), ctypes.POINTER(SdCrfIO)
_native.register_signatures({
    "sd_crf_default_params": (None, [_params_p]),
    "sd_crf_validate": (ctypes.c_int, [_params_p, _io_p]),
    "sd_crf_cpu": (ctypes.c_int, [_params_p, _io_p, ctypes.c_int]),
    "sd_crf_cuda_workspace_bytes": (ctypes.c_int, [ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                                   ctypes.POINTER(ctypes.c_size_t)]),
    "sd_crf_cuda": (ctypes.c_int, [_params_p, _io_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]),
})


def cuda_workspace_bytes(classes: int, height: int, width: int) -> int:
    """Device workspace ``sd_crf_cuda`` needs for images of this size."""
    size = ctypes.c_size_t()
    _native.check(_native.load_library().sd_crf_cuda_workspace_bytes(classes, height, width, ctypes.byref(size)))
    return size.value
