"""upsample_argmax_cuda: the fused upsample + argmax on a GPU, for scores already on the device.

The scores are a CUDA array (torch tensor, cupy array or :class:`segdeploy.crf.CudaBuffer`,
C-contiguous); the labels come back as the same kind of array, on the same device. The kernel
(``sd_upsample_argmax_cuda``) is enqueued on that library's current stream (a CudaBuffer: the
default stream) and the call returns without waiting for it, so it orders with the caller's
other work on the stream as any torch or cupy operation does.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .. import _native
from ..crf.cuda import CudaArrays, contiguous_interface
from .kernel import check_call


def upsample_argmax_cuda(scores, size, *, coordinates: str = "half_pixel", scales=None, labels_dtype=None):
    """Labels (N, H, W) of CUDA ``scores`` (N, C, h, w) bilinearly resized to ``size`` (H, W).

    The same operation and arguments as :func:`segdeploy.head.kernel.upsample_argmax` (ONNX
    ``Resize(mode="linear")`` then ``ArgMax(axis=1)``, the first maximum wins, NaN never does),
    on the GPU: float32 or float16 scores; uint8 or int32 labels (None: uint8 up to 255
    classes). Labels equal the CPU kernel's except where two classes' interpolated scores tie to
    float32 rounding (the GPU contracts the blends into fused multiply-adds).
    """
    interface = contiguous_interface(scores, "scores")
    arrays = CudaArrays(scores)
    call = check_call(tuple(interface["shape"]), np.dtype(interface["typestr"]), size, coordinates=coordinates,
                      scales=scales, labels_dtype=labels_dtype)
    labels = arrays.empty((call.batch, *call.out_size), call.labels_dtype.type)
    lib = _native.load_library()
    _native.check(lib.sd_cuda_set_device(arrays.device))
    io = call.io(interface["data"][0], labels.__cuda_array_interface__["data"][0])
    _native.check(lib.sd_upsample_argmax_cuda(ctypes.byref(io), arrays.stream()))
    return labels
