"""Fully-connected CRF refinement of segmentation scores (the "dense CRF").

Mean-field inference of P. Krähenbühl and V. Koltun, "Efficient Inference in Fully Connected
CRFs with Gaussian Edge Potentials", NIPS 2011, as DeepLab v1/v2 apply it after the network:
a spatial Gaussian kernel (weight, θγ) and a bilateral kernel over position and RGB (weight,
θα, θβ) with Potts compatibility, filtered on the permutohedral lattice (Adams et al. 2010).
The kernels live in the compiled library (``kernels/densecrf``, C ABI in
``kernels/include/segdeploy/densecrf.h``); they reproduce pydensecrf with the same parameters.

Unary convention: the CRF's unary energy is U = -log P (what pydensecrf's ``setUnaryEnergy``
takes). ``unary_kind`` says what you pass:

* ``"logits"`` -- network scores; U = -logits (a per-pixel constant does not matter),
* ``"probabilities"`` -- softmax outputs p >= 0; U = -log p,
* ``"neg_log_prob"`` -- U itself.

Zero iterations (or zero weights) return softmax(-U).
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass

import numpy as np

from . import kernels
from .errors import BadInputError

OUTPUTS = ("probabilities", "labels", "both")


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF parameters; the defaults are DeepLab v2's (spatial 3/3, bilateral 4/67/3).

    DeepLab's other published bilateral setting is weight 5, θα 50, θβ 10.
    """

    spatial_weight: float = 3.0
    spatial_theta: float = 3.0
    bilateral_weight: float = 4.0
    bilateral_theta_xy: float = 67.0
    bilateral_theta_rgb: float = 3.0
    iterations: int = 10
    normalization: str = "symmetric"  # pydensecrf NORMALIZE_SYMMETRIC; or "after" (NORMALIZE_AFTER)

    def to_c(self) -> kernels.CrfParams:
        if self.normalization not in kernels.CRF_NORMALIZATIONS:
            raise BadInputError(
                f"normalization must be one of {sorted(kernels.CRF_NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if isinstance(self.iterations, bool) or int(self.iterations) != self.iterations:
            raise BadInputError(f"iterations must be an integer, got {self.iterations!r}")
        if not -(2**31) <= int(self.iterations) < 2**31:
            raise BadInputError(f"iterations is out of range: {self.iterations}")
        return kernels.CrfParams(
            float(self.spatial_weight),
            float(self.spatial_theta),
            float(self.bilateral_weight),
            float(self.bilateral_theta_xy),
            float(self.bilateral_theta_rgb),
            int(self.iterations),
            kernels.CRF_NORMALIZATIONS[self.normalization],
        )


@dataclass(frozen=True)
class _Geometry:
    """Shapes of one call, after checking that unary and image agree."""

    batch: int
    classes: int
    height: int
    width: int
    image_layout: int
    batched: bool  # the caller passed a leading batch axis


_UNARY_DTYPES = {"float32": kernels.SD_DTYPE_FLOAT32, "float16": kernels.SD_DTYPE_FLOAT16}


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
        layout = kernels.SD_IMAGE_HWC
    elif tuple(image_shape[1:]) == (3, height, width):
        layout = kernels.SD_IMAGE_CHW
    else:
        raise BadInputError(
            f"image shape {tuple(image_shape[1:])} does not match the unary's {height}x{width}: expected "
            f"({height}, {width}, 3) or (3, {height}, {width})"
        )
    return _Geometry(batch, classes, height, width, layout, batched)


def _unary_dtype_code(dtype_name: str) -> int:
    if dtype_name not in _UNARY_DTYPES:
        raise BadInputError(f"unary must be float32 or float16, got {dtype_name}")
    return _UNARY_DTYPES[dtype_name]


def _io(geometry: _Geometry, unary_ptr: int, unary_dtype: int, unary_kind: str, image_ptr: int,
        probabilities_ptr: int | None, labels_ptr: int | None) -> kernels.CrfIO:
    if unary_kind not in kernels.CRF_UNARY_KINDS:
        raise BadInputError(f"unary_kind must be one of {sorted(kernels.CRF_UNARY_KINDS)}, got {unary_kind!r}")
    return kernels.CrfIO(
        unary_ptr, unary_dtype, kernels.CRF_UNARY_KINDS[unary_kind], image_ptr, geometry.image_layout,
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


def _select(output: str, probabilities, labels):
    if output == "probabilities":
        return probabilities
    if output == "labels":
        return labels
    return probabilities, labels


def dense_crf(unary, image, params: CRFParams | None = None, *, unary_kind: str = "logits",
              output: str = "both", num_threads: int = 0, **overrides):
    """Refine segmentation scores with a dense CRF.

    ``unary``: (N, C, H, W) or (C, H, W), float32 or float16 (see the module docstring for
    ``unary_kind``). ``image``: uint8 RGB, (N, H, W, 3) or (N, 3, H, W), or without N like the
    unary. numpy arrays run on the CPU (``num_threads`` 0: every core); CUDA arrays (torch
    tensors, cupy arrays, :class:`CudaBuffer`) run on their GPU, on the library's current stream,
    and come back as the same kind of array.

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
    unary_dtype = _unary_dtype_code(unary.dtype.name)
    if image.dtype != np.uint8:
        raise BadInputError(f"image must be uint8 RGB, got {image.dtype}")
    unary = np.ascontiguousarray(unary)
    image = np.ascontiguousarray(image)
    spatial = (geometry.height, geometry.width)
    lead = (geometry.batch,) if geometry.batched else ()
    probabilities = np.empty((*lead, geometry.classes, *spatial), np.float32) if output != "labels" else None
    labels = np.empty((*lead, *spatial), np.int32) if output != "probabilities" else None
    io = _io(geometry, unary.ctypes.data, unary_dtype, unary_kind, image.ctypes.data,
             None if probabilities is None else probabilities.ctypes.data,
             None if labels is None else labels.ctypes.data)
    c_params = params.to_c()
    lib = kernels.load_library()
    kernels.check(lib.sd_crf_cpu(ctypes.byref(c_params), ctypes.byref(io), int(num_threads)))
    return _select(output, probabilities, labels)


# --------------------------------------------------------------------------------------------
# CUDA


class CudaBuffer:
    """Device memory owned by the kernels library, for callers without torch or cupy.

    It exposes ``__cuda_array_interface__``, so it can be passed to :func:`dense_crf` and to
    any library that reads that protocol.
    """

    def __init__(self, shape, dtype, device: int = 0):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        lib = kernels.load_library()
        kernels.check(lib.sd_cuda_set_device(self.device))
        pointer = ctypes.c_void_p()
        kernels.check(lib.sd_cuda_malloc(max(self.nbytes, 1), ctypes.byref(pointer)))
        self.pointer = pointer.value

    @classmethod
    def from_numpy(cls, array: np.ndarray, device: int = 0) -> "CudaBuffer":
        array = np.ascontiguousarray(array)
        buffer = cls(array.shape, array.dtype, device)
        kernels.check(kernels.load_library().sd_cuda_memcpy(buffer.pointer, array.ctypes.data, buffer.nbytes))
        return buffer

    def numpy(self) -> np.ndarray:
        array = np.empty(self.shape, self.dtype)
        kernels.check(kernels.load_library().sd_cuda_memcpy(array.ctypes.data, self.pointer, self.nbytes))
        return array

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.pointer, False), "version": 3,
                "strides": None}

    def __del__(self):
        pointer, self.pointer = getattr(self, "pointer", None), None
        if pointer:
            kernels.load_library().sd_cuda_free(pointer)


class _CudaArrays:
    """How to allocate outputs and find the device and stream for one kind of CUDA array."""

    def __init__(self, example):
        module = type(example).__module__.split(".")[0]
        if isinstance(example, CudaBuffer):
            self.kind = "segdeploy"
        elif module in ("torch", "cupy"):
            self.kind = module
        else:
            raise BadInputError(
                f"CUDA arrays must be torch tensors, cupy arrays or segdeploy.crf.CudaBuffer, got {type(example)}"
            )
        self.library = __import__(self.kind) if self.kind != "segdeploy" else None
        if self.kind == "torch":
            self.device = example.device.index if example.device.index is not None else 0
        elif self.kind == "cupy":
            self.device = example.device.id
        else:
            self.device = example.device

    def stream(self) -> int:
        if self.kind == "torch":
            return self.library.cuda.current_stream(self.device).cuda_stream
        if self.kind == "cupy":
            with self.library.cuda.Device(self.device):
                return self.library.cuda.get_current_stream().ptr
        return 0

    def empty(self, shape, dtype):
        if self.kind == "torch":
            torch_dtype = {np.float32: self.library.float32, np.int32: self.library.int32,
                           np.uint8: self.library.uint8}[dtype]
            return self.library.empty(shape, dtype=torch_dtype, device=f"cuda:{self.device}")
        if self.kind == "cupy":
            with self.library.cuda.Device(self.device):
                return self.library.empty(shape, dtype=dtype)
        return CudaBuffer(shape, dtype, self.device)


def _interface(array, name: str) -> dict:
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        raise BadInputError(f"{name} is on the host while the other input is on a CUDA device; move both")
    strides = interface.get("strides")
    if strides is not None:
        itemsize = np.dtype(interface["typestr"]).itemsize
        expected, step = [], itemsize
        for n in reversed(interface["shape"]):
            expected.append(step)
            step *= n
        if tuple(strides) != tuple(reversed(expected)):
            raise BadInputError(f"{name} must be C-contiguous on the device (call .contiguous() first)")
    return interface


# Workspaces are sized once per (device, stream, classes, height, width) and reused.
_workspaces: dict[tuple, CudaBuffer] = {}


def _workspace(device: int, stream: int, classes: int, height: int, width: int) -> CudaBuffer:
    key = (device, stream, classes, height, width)
    if key not in _workspaces:
        size = ctypes.c_size_t()
        kernels.check(kernels.load_library().sd_crf_cuda_workspace_bytes(classes, height, width, ctypes.byref(size)))
        _workspaces[key] = CudaBuffer((size.value,), np.uint8, device)
    return _workspaces[key]


def _dense_crf_cuda(unary, image, params: CRFParams, unary_kind: str, output: str):
    unary_interface = _interface(unary, "unary")
    image_interface = _interface(image, "image")
    arrays = _CudaArrays(unary)
    if _CudaArrays(image).device != arrays.device:
        raise BadInputError("unary and image must be on the same CUDA device")
    geometry = _geometry(tuple(unary_interface["shape"]), tuple(image_interface["shape"]))
    unary_dtype = _unary_dtype_code(np.dtype(unary_interface["typestr"]).name)
    if np.dtype(image_interface["typestr"]) != np.uint8:
        raise BadInputError(f"image must be uint8 RGB, got {np.dtype(image_interface['typestr'])}")
    lib = kernels.load_library()
    if kernels.cuda_device_count() == 0:
        raise BadInputError("a CUDA array was given but the segdeploy kernels see no CUDA device "
                            f"(built with CUDA: {kernels.built_with_cuda()})")
    kernels.check(lib.sd_cuda_set_device(arrays.device))
    spatial = (geometry.height, geometry.width)
    lead = (geometry.batch,) if geometry.batched else ()
    probabilities = arrays.empty((*lead, geometry.classes, *spatial), np.float32) if output != "labels" else None
    labels = arrays.empty((*lead, *spatial), np.int32) if output != "probabilities" else None

    def pointer(array):
        return None if array is None else array.__cuda_array_interface__["data"][0]

    io = _io(geometry, unary_interface["data"][0], unary_dtype, unary_kind, image_interface["data"][0],
             pointer(probabilities), pointer(labels))
    c_params = params.to_c()
    stream = arrays.stream()
    workspace = _workspace(arrays.device, stream, geometry.classes, geometry.height, geometry.width)
    kernels.check(lib.sd_crf_cuda(ctypes.byref(c_params), ctypes.byref(io), workspace.pointer, workspace.nbytes,
                                  1, stream or None))
    return _select(output, probabilities, labels)
