"""dense_crf: shapes checked, then the CPU kernel on numpy arrays or the CUDA kernel on CUDA arrays."""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import _native
from ..errors import BadInputError
from . import cuda
from ._binding import SD_DTYPE_FLOAT16, SD_DTYPE_FLOAT32, SD_IMAGE_CHW, SD_IMAGE_HWC, UNARY_KINDS, SdCrfIO
from .params import CRFParams

OUTPUTS = ("probabilities", "labels", "both")
_UNARY_DTYPES = {"float32": SD_DTYPE_FLOAT32, "float16": SD_DTYPE_FLOAT16}


@dataclass(frozen=True)
class _Geometry:
    """Shapes of one call, after checking that unary and image agree."""

    batch: int
    classes: int
    height: int
    width: int
    image_layout: int
    batched: bool  # the caller passed a leading batch axis

    def output_shapes(self) -> tuple[tuple, tuple]:
        """Shapes of the probabilities and the labels, with the batch axis if the caller gave one."""
        lead = (self.batch,) if self.batched else ()
        return (*lead, self.classes, self.height, self.width), (*lead, self.height, self.width)


def _geometry(unary_shape: tuple, image_shape: tuple) -> _Geometry:
    if len(unary_shape) not in (3, 4):
        raise BadInputError(f"unary must be (N, C, H, W) or (C, H, W), got shape {unary_shape}")
    batched = len(unary_shape) == 4
    batch, classes, height, width = unary_shape if batched else (1, *unary_shape)
    if len(image_shape) != len(unary_shape):
        raise BadInputError(
            f"image shape {image_shape} does not match unary shape {unary_shape}: give both with or without "
            "the batch axis"
        )
    image_shape = image_shape if batched else (1, *image_shape)
    if image_shape[0] != batch:
        raise BadInputError(f"image batch {image_shape[0]} does not match unary batch {batch}")
    if tuple(image_shape[1:]) == (height, width, 3):
        layout = SD_IMAGE_HWC
    elif tuple(image_shape[1:]) == (3, height, width):
        layout = SD_IMAGE_CHW
    else:
        raise BadInputError(
            f"image shape {tuple(image_shape[1:])} does not match the unary's {height}x{width}: expected "
            f"({height}, {width}, 3) or (3, {height}, {width})"
        )
    return _Geometry(batch, classes, height, width, layout, batched)


def _check_dtypes(unary_dtype: np.dtype, image_dtype: np.dtype) -> int:
    """The unary's sd_dtype code; BadInputError unless float32/float16 and uint8."""
    if unary_dtype.name not in _UNARY_DTYPES:
        raise BadInputError(f"unary must be float32 or float16, got {unary_dtype.name}")
    if image_dtype != np.uint8:
        raise BadInputError(f"image must be uint8 RGB, got {image_dtype}")
    return _UNARY_DTYPES[unary_dtype.name]


def _io(geometry: _Geometry, unary_ptr: int, unary_dtype: int, unary_kind: str, image_ptr: int,
        probabilities_ptr: int | None, labels_ptr: int | None) -> SdCrfIO:
    if unary_kind not in UNARY_KINDS:
        raise BadInputError(f"unary_kind must be one of {sorted(UNARY_KINDS)}, got {unary_kind!r}")
    return SdCrfIO(
        unary_ptr, unary_dtype, UNARY_KINDS[unary_kind], image_ptr, geometry.image_layout,
        geometry.batch, geometry.classes, geometry.height, geometry.width, probabilities_ptr, labels_ptr,
    )


def synthetic_logits(image: np.ndarray, classes: int, seed: int = 0, noise: float = 1.5) -> np.ndarray:
    """Logits (classes, H, W) that a weak network might give for `image` (H, W, 3 uint8).

    A coarse segmentation (each pixel's nearest of `classes` colours drawn from the image) as
    logits 2 for its class and 0 otherwise, plus Gaussian noise of std `noise`: a noisy unary with
    real structure, for tests, benchmarks and demonstrations.
    """
    rng = np.random.default_rng(seed)
    pixels = image.reshape(-1, 3).astype(np.float32)
    palette = pixels[rng.choice(len(pixels), classes, replace=False)]
    nearest = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(1).reshape(image.shape[:2])
    clean = 2.0 * (np.arange(classes)[:, None, None] == nearest)
    return (clean + rng.normal(0.0, noise, clean.shape)).astype(np.float32)


#: Why a label map cannot be refined, as every command says it.
NEEDS_SCORES = "the CRF needs scores; use --head logits or probabilities"


def unary_kind_for(head) -> str:
    """The ``unary_kind`` of a prediction output read with ``head`` (an :class:`segdeploy.outputs.Head`):
    ``probabilities`` after a softmax or sigmoid in the graph, else ``logits``. A ``labels`` head
    has no per-class scores for the CRF's unary: BadInputError."""
    if not head.has_scores:
        raise BadInputError(f"{NEEDS_SCORES} (the model's deployment head outputs labels only)")
    return "probabilities" if head.activation != "none" else "logits"


def _select(output: str, probabilities, labels):
    if output == "probabilities":
        return probabilities
    if output == "labels":
        return labels
    return probabilities, labels


def dense_crf(unary, image, params: CRFParams | None = None, *, unary_kind: str = "logits",
              output: str = "both", num_threads: int = 0, **overrides):
    """Refine segmentation scores with a dense CRF.

    ``unary``: (N, C, H, W) or (C, H, W), float32 or float16 (see :mod:`segdeploy.crf` for
    ``unary_kind``). ``image``: uint8 RGB, (N, H, W, 3) or (N, 3, H, W), or without N like the
    unary. numpy arrays run on the CPU (``num_threads`` 0: every core); CUDA arrays (torch
    tensors, cupy arrays, :class:`CudaBuffer`) run on their GPU, on the library's current stream,
    and come back as the same kind of array; their workspace is kept for the next call of that
    size (see :mod:`segdeploy.crf.cuda`).

    ``params`` defaults to :class:`CRFParams` (DeepLab v2); keyword ``overrides`` replace single
    fields, e.g. ``dense_crf(u, img, iterations=5)``.

    Returns refined probabilities (float32, shaped like the unary), labels (int32, (N, H, W) or
    (H, W)) or both as a tuple, as ``output`` says.
    """
    params = dataclasses.replace(params or CRFParams(), **overrides)
    if output not in OUTPUTS:
        raise BadInputError(f"output must be one of {OUTPUTS}, got {output!r}")
    if hasattr(unary, "__cuda_array_interface__") or hasattr(image, "__cuda_array_interface__"):
        return _dense_crf_cuda(unary, image, params, unary_kind, output)
    return _dense_crf_cpu(unary, image, params, unary_kind, output, num_threads)


def _dense_crf_cpu(unary, image, params: CRFParams, unary_kind: str, output: str, num_threads: int):
    unary, image = np.asarray(unary), np.asarray(image)
    geometry = _geometry(unary.shape, image.shape)
    unary_dtype = _check_dtypes(unary.dtype, image.dtype)
    unary = np.ascontiguousarray(unary)
    image = np.ascontiguousarray(image)
    probabilities_shape, labels_shape = geometry.output_shapes()
    probabilities = np.empty(probabilities_shape, np.float32) if output != "labels" else None
    labels = np.empty(labels_shape, np.int32) if output != "probabilities" else None
    io = _io(geometry, unary.ctypes.data, unary_dtype, unary_kind, image.ctypes.data,
             None if probabilities is None else probabilities.ctypes.data,
             None if labels is None else labels.ctypes.data)
    c_params = params.to_c()
    lib = _native.load_library()
    _native.check(lib.sd_crf_cpu(ctypes.byref(c_params), ctypes.byref(io), int(num_threads)))
    return _select(output, probabilities, labels)


def _dense_crf_cuda(unary, image, params: CRFParams, unary_kind: str, output: str):
    unary_interface = cuda.contiguous_interface(unary, "unary")
    image_interface = cuda.contiguous_interface(image, "image")
    arrays = cuda.CudaArrays(unary)
    if cuda.CudaArrays(image).device != arrays.device:
        raise BadInputError("unary and image must be on the same CUDA device")
    geometry = _geometry(tuple(unary_interface["shape"]), tuple(image_interface["shape"]))
    unary_dtype = _check_dtypes(np.dtype(unary_interface["typestr"]), np.dtype(image_interface["typestr"]))
    lib = _native.load_library()
    if _native.cuda_device_count() == 0:
        raise BadInputError("a CUDA array was given but the segdeploy kernels see no CUDA device "
                            f"(built with CUDA: {_native.built_with_cuda()})")
    _native.check(lib.sd_cuda_set_device(arrays.device))
    probabilities_shape, labels_shape = geometry.output_shapes()
    probabilities = arrays.empty(probabilities_shape, np.float32) if output != "labels" else None
    labels = arrays.empty(labels_shape, np.int32) if output != "probabilities" else None

    def pointer(array):
        return None if array is None else array.__cuda_array_interface__["data"][0]

    io = _io(geometry, unary_interface["data"][0], unary_dtype, unary_kind, image_interface["data"][0],
             pointer(probabilities), pointer(labels))
    c_params = params.to_c()
    stream = arrays.stream()
    workspace = cuda.workspace(arrays.device, stream, geometry.classes, geometry.height, geometry.width)
    _native.check(lib.sd_crf_cuda(ctypes.byref(c_params), ctypes.byref(io), workspace.pointer, workspace.nbytes,
                                  1, stream or None))
    return _select(output, probabilities, labels)
