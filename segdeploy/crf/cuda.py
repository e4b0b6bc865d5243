"""CUDA memory for the dense CRF: :class:`CudaBuffer`, the adapter over the kinds of CUDA array
:func:`~segdeploy.crf.dense_crf` takes (torch, cupy, CudaBuffer), the size of its workspace
(:func:`workspace_bytes`) and the bounded cache of its workspaces.

Workspace cache: ``sd_crf_cuda`` needs a workspace per (device, stream, classes, height, width) of
:func:`workspace_bytes`, sized for any image and parameters at that shape (a noise image makes
nearly every lattice entry its own vertex): with 21 classes 393 MiB at 512x512, 1.4 GiB at
1280x720, 3.0 GiB at 1920x1080 (2.9 GiB at 1024x2048 with 19). Allocating it at every frame costs a
device synchronisation and the CUDA graph of the call, so it is kept for the next call of that
shape, in a cache that holds at most a byte limit: 1 GiB by default (an
8 GB Jetson's memory is shared with the CPU and the network), ``SEGDEPLOY_CRF_WORKSPACE_LIMIT_MB``
or :func:`set_workspace_limit` otherwise. The least recently used workspaces are freed first,
before the new one is allocated. A workspace larger than the limit on its own (720p and larger
with 21 classes) is kept alone, after everything else is freed, so that a video at that size
does not allocate at every frame; a limit of 0 keeps none. :func:`free_workspaces` frees them all.
"""

from __future__ import annotations

import ctypes
import importlib
import numbers
import os
import threading
from collections import OrderedDict

import numpy as np

from .. import _native
from ..errors import BadInputError, SegdeployError
from ._binding import cuda_workspace_bytes

WORKSPACE_LIMIT_ENV = "SEGDEPLOY_CRF_WORKSPACE_LIMIT_MB"
DEFAULT_WORKSPACE_LIMIT_BYTES = 1 << 30


class CudaBuffer:
    """Device memory owned by the kernels library, for callers without torch or cupy.

    It exposes ``__cuda_array_interface__``, so it can be passed to :func:`dense_crf` and to
    any library that reads that protocol. The memory is freed when the object is.
    """

    def __init__(self, shape, dtype, device: int = 0):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        lib = _native.load_library()
        _native.check(lib.sd_cuda_set_device(self.device))
        pointer = ctypes.c_void_p()
        _native.check(lib.sd_cuda_malloc(max(self.nbytes, 1), ctypes.byref(pointer)))
        self.pointer = pointer.value

    @classmethod
    def from_numpy(cls, array: np.ndarray, device: int = 0) -> CudaBuffer:
        array = np.ascontiguousarray(array)
        buffer = cls(array.shape, array.dtype, device)
        _native.check(_native.load_library().sd_cuda_memcpy(buffer.pointer, array.ctypes.data, buffer.nbytes))
        return buffer

    def numpy(self) -> np.ndarray:
        array = np.empty(self.shape, self.dtype)
        _native.check(_native.load_library().sd_cuda_memcpy(array.ctypes.data, self.pointer, self.nbytes))
        return array

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.pointer, False), "version": 3,
                "strides": None}

    def __del__(self):
        pointer, self.pointer = getattr(self, "pointer", None), None
        if pointer:
            _native.load_library().sd_cuda_free(pointer)


class CudaArrays:
    """One kind of CUDA array (torch, cupy or CudaBuffer): its device, its current stream, and
    outputs allocated as that kind."""

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
        # torch or cupy is already imported: the caller made the array with it
        self.library = importlib.import_module(self.kind) if self.kind != "segdeploy" else None
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


def workspace_bytes(shape, classes: int) -> int:
    """Bytes of GPU workspace the CRF needs for images of ``shape`` (height, width) with ``classes``
    classes: one figure for every image and parameter set of that shape (TensorRT's plugin sizes its
    workspace with the same call). BadInputError for a shape the CUDA CRF cannot take."""
    dims = tuple(shape)
    if len(dims) != 2 or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in dims):
        raise BadInputError(f"shape must be (height, width) as two integers, got {shape!r}")
    if not isinstance(classes, numbers.Integral) or isinstance(classes, bool):
        raise BadInputError(f"classes must be an integer, got {classes!r}")
    try:
        return cuda_workspace_bytes(int(classes), int(dims[0]), int(dims[1]))
    except BadInputError as error:  # the library's own message: which limit the shape breaks
        raise BadInputError(f"no CUDA CRF workspace for {classes} classes at {dims[0]}x{dims[1]}: {error}") from error


def contiguous_interface(array, name: str) -> dict:
    """``array``'s ``__cuda_array_interface__``; BadInputError if on the host or not C-contiguous."""
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


# --------------------------------------------------------------------------------------------
# Workspace cache

_workspaces: OrderedDict[tuple, CudaBuffer] = OrderedDict()  # least recently used first
_limit_bytes: int | None = None  # None: the environment's, else the default
_lock = threading.Lock()


def _limit_from_environment() -> int:
    value = os.environ.get(WORKSPACE_LIMIT_ENV, "").strip()
    if not value:
        return DEFAULT_WORKSPACE_LIMIT_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:  # also refuses NaN
        raise BadInputError(f"{WORKSPACE_LIMIT_ENV} must be a number of MiB >= 0, got {value!r}")
    return int(megabytes * (1 << 20))


def workspace_limit() -> int:
    """Bytes of CRF workspaces kept between calls at most."""
    return _limit_bytes if _limit_bytes is not None else _limit_from_environment()


def set_workspace_limit(limit_bytes: int | None) -> None:
    """Keep at most ``limit_bytes`` of workspaces (0: none; None: ``$SEGDEPLOY_CRF_WORKSPACE_LIMIT_MB``
    or 1 GiB); the least recently used ones beyond it are freed now."""
    global _limit_bytes
    if limit_bytes is not None and (not isinstance(limit_bytes, numbers.Integral) or isinstance(limit_bytes, bool)
                                    or limit_bytes < 0):
        raise BadInputError(f"the workspace limit must be a number of bytes >= 0, got {limit_bytes!r}")
    with _lock:
        _limit_bytes = None if limit_bytes is None else int(limit_bytes)
        _evict_until(workspace_limit())


def cached_workspace_bytes() -> int:
    """Bytes of workspaces the cache holds now."""
    with _lock:
        return sum(buffer.nbytes for buffer in _workspaces.values())


def free_workspaces() -> None:
    """Free every cached workspace (the next call of each shape allocates its own again)."""
    with _lock:
        _workspaces.clear()


def _evict_until(budget: int) -> None:
    """Drop least recently used workspaces until the cache holds at most ``budget`` bytes."""
    held = sum(buffer.nbytes for buffer in _workspaces.values())
    while _workspaces and held > budget:
        _, buffer = _workspaces.popitem(last=False)
        held -= buffer.nbytes


def workspace(device: int, stream: int, classes: int, height: int, width: int) -> CudaBuffer:
    """The workspace of one call: cached, or allocated and cached (alone if it exceeds the limit)."""
    key = (device, stream, classes, height, width)
    with _lock:
        if key in _workspaces:
            _workspaces.move_to_end(key)
            return _workspaces[key]
        size = cuda_workspace_bytes(classes, height, width)
        limit = workspace_limit()
        _evict_until(max(limit - size, 0))  # before allocating: what is freed makes room
        try:
            buffer = CudaBuffer((size,), np.uint8, device)
        except SegdeployError:
            if not _workspaces:
                raise
            _workspaces.clear()  # memory held for other shapes may be what is missing
            buffer = CudaBuffer((size,), np.uint8, device)
        if size <= limit or (limit > 0 and not _workspaces):
            _workspaces[key] = buffer
        return buffer
