"""upsample_argmax: the label map of bilinearly upsampled scores, from the low-resolution scores.

The fused kernel (``sd_upsample_argmax_cpu``) gives what ONNX ``Resize(mode="linear")`` followed
by ``ArgMax(axis=1)`` gives, without writing the full-resolution scores: labels equal except
where two classes' interpolated scores tie to float32 rounding.
"""

from __future__ import annotations

import ctypes
import numbers
from dataclasses import dataclass

import numpy as np

from .. import _native
from ..errors import BadInputError
from ._binding import COORDINATES, LABEL_DTYPES, SCORE_DTYPES, SdUpsampleArgmaxIO
from .graph import label_dtype_name

#: Largest class count a uint8 label map can hold (the kernel's limit; the default dtype switches
#: to int32 earlier, see :func:`segdeploy.head.graph.label_dtype`).
MAX_UINT8_CLASSES = 256
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class UpsampleArgmaxCall:
    """A checked call: shapes, ``sd_*`` codes and the scales (0: out / in)."""

    batch: int
    classes: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    scores_dtype: int
    coordinates: int
    scales: tuple[float, float]
    labels_dtype: np.dtype

    def io(self, scores_pointer: int, labels_pointer: int) -> SdUpsampleArgmaxIO:
        return SdUpsampleArgmaxIO(
            scores_pointer, self.scores_dtype, self.batch, self.classes, *self.in_size, *self.out_size,
            self.coordinates, *self.scales, labels_pointer, LABEL_DTYPES[self.labels_dtype.name],
        )


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= _INT32_MAX:
        raise BadInputError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def _pair(value, what: str) -> tuple:
    try:
        items = tuple(value)
    except TypeError:
        raise BadInputError(f"{what} must be a pair (height, width), got {value!r}") from None
    if len(items) != 2:
        raise BadInputError(f"{what} must be a pair (height, width), got {value!r}")
    return items


def check_call(shape: tuple, dtype: np.dtype, size, *, coordinates: str = "half_pixel", scales=None,
               labels_dtype=None) -> UpsampleArgmaxCall:
    """Check the arguments of :func:`upsample_argmax` for scores of ``shape`` and ``dtype``
    (shared by the CPU and CUDA entry points); BadInputError names what is wrong."""
    if len(shape) != 4:
        raise BadInputError(f"scores must be (N, C, H, W), got shape {tuple(shape)}")
    batch, classes, in_height, in_width = (_positive_int(n, f"scores dimension {i} ({name})")
                                           for i, (n, name) in enumerate(zip(shape, "NCHW")))
    if dtype.name not in SCORE_DTYPES:
        raise BadInputError(f"scores must be float32 or float16, got {dtype.name}")
    out_height, out_width = (_positive_int(n, f"size[{i}]") for i, n in enumerate(_pair(size, "size")))
    if coordinates not in COORDINATES:
        raise BadInputError(f"coordinates must be one of {sorted(COORDINATES)}, got {coordinates!r}")
    if scales is None:
        scale_pair = (0.0, 0.0)
    else:
        scale_pair = _pair(scales, "scales")
        if not all(isinstance(s, numbers.Real) and np.isfinite(s) and s > 0 for s in scale_pair):
            raise BadInputError(f"scales must be two finite numbers > 0 (the Resize's height and width scales), "
                                f"got {scales!r}")
        scale_pair = tuple(float(np.float32(s)) for s in scale_pair)
    if labels_dtype is None:
        labels = np.dtype(label_dtype_name(classes))
    else:
        try:
            labels = np.dtype(labels_dtype)
        except TypeError:
            raise BadInputError(f"labels_dtype must be uint8 or int32, got {labels_dtype!r}") from None
        if labels.name not in LABEL_DTYPES:
            raise BadInputError(f"labels_dtype must be uint8 or int32, got {labels.name}")
    if labels == np.uint8 and classes > MAX_UINT8_CLASSES:
        raise BadInputError(f"uint8 labels hold at most {MAX_UINT8_CLASSES} classes, the scores have {classes}: "
                            "use labels_dtype='int32'")
    return UpsampleArgmaxCall(batch, classes, (in_height, in_width), (out_height, out_width),
                              SCORE_DTYPES[dtype.name], COORDINATES[coordinates], scale_pair, labels)


def upsample_argmax(scores, size, *, coordinates: str = "half_pixel", scales=None, labels_dtype=None,
                    threads: int = 0) -> np.ndarray:
    """Labels (N, H, W) of ``scores`` (N, C, h, w) bilinearly resized to ``size`` (H, W).

    Exactly ONNX ``Resize(mode="linear", coordinate_transformation_mode=coordinates)`` then
    ``ArgMax(axis=1, keepdims=0)`` (the first maximum wins; NaN never does), computed without the
    full-resolution scores. ``scores``: a float32 or float16 numpy array. ``scales``: the
    Resize's (height, width) scales when it was given scales (they place the source coordinates;
    ``size`` must then be ``floor(in * scale)``); None: ``size / in``, as for a Resize given sizes.
    ``labels_dtype``: uint8 or int32; None: uint8 up to 255 classes, else int32. ``threads`` 0:
    every core.
    """
    if hasattr(scores, "__cuda_array_interface__"):
        raise BadInputError("upsample_argmax takes a numpy array (host memory); for CUDA arrays use "
                            "segdeploy.head.cuda.upsample_argmax_cuda")
    scores = np.asarray(scores)
    call = check_call(scores.shape, scores.dtype, size, coordinates=coordinates, scales=scales,
                      labels_dtype=labels_dtype)
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 0:
        raise BadInputError(f"threads must be an integer >= 0 (0: every core), got {threads!r}")
    scores = np.ascontiguousarray(scores)
    labels = np.empty((call.batch, *call.out_size), call.labels_dtype)
    io = call.io(scores.ctypes.data, labels.ctypes.data)
    _native.check(_native.load_library().sd_upsample_argmax_cpu(ctypes.byref(io), int(threads)))
    return labels
