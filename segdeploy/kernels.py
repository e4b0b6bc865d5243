"""Loader for the compiled kernels library (a C ABI shared library, see kernels/include).

The library is built by CMake during ``pip install`` and installed as
``segdeploy/_lib/libsegdeploy_kernels.so``; ``SEGDEPLOY_KERNELS_LIB`` points elsewhere (a
CMake build tree, for instance).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

from .errors import BadInputError, SegdeployError

_LIB_NAMES = {"linux": "libsegdeploy_kernels.so", "darwin": "libsegdeploy_kernels.dylib", "win32": "segdeploy_kernels.dll"}

# sd_status (kernels/include/segdeploy/status.h)
SD_OK = 0
SD_ERROR_INVALID_ARGUMENT = 1
SD_ERROR_OUT_OF_MEMORY = 2
SD_ERROR_CUDA = 3
SD_ERROR_NOT_BUILT = 4

# Enumerations of kernels/include/segdeploy/densecrf.h
SD_DTYPE_FLOAT32 = 0
SD_DTYPE_FLOAT16 = 1
SD_IMAGE_HWC = 0
SD_IMAGE_CHW = 1
CRF_UNARY_KINDS = {"logits": 0, "probabilities": 1, "neg_log_prob": 2}
CRF_NORMALIZATIONS = {"symmetric": 0, "after": 1}


class CrfParams(ctypes.Structure):
    """``sd_crf_params``."""

    _fields_ = [
        ("spatial_weight", ctypes.c_float),
        ("spatial_theta", ctypes.c_float),
        ("bilateral_weight", ctypes.c_float),
        ("bilateral_theta_xy", ctypes.c_float),
        ("bilateral_theta_rgb", ctypes.c_float),
        ("iterations", ctypes.c_int32),
        ("normalization", ctypes.c_int32),
    ]


class CrfIO(ctypes.Structure):
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


def find_packaged_library(env_var: str, file_names: dict[str, str]) -> Path:
    """A shared library installed in ``segdeploy/_lib``: ``$env_var`` if set, else the one beside
    this package, else (running from a source checkout) the installed distribution's."""
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    relative = Path("_lib") / file_names.get(sys.platform, file_names["linux"])
    beside = Path(__file__).parent / relative
    if beside.is_file():
        return beside
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        installed = Path(distribution("segdeploy").locate_file(Path("segdeploy") / relative))
        return installed if installed.is_file() else beside
    except PackageNotFoundError:
        return beside


def library_path() -> Path:
    return find_packaged_library("SEGDEPLOY_KERNELS_LIB", _LIB_NAMES)


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_void_p, c_size_t = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    signatures = {
        "sd_version": (ctypes.c_char_p, []),
        "sd_built_with_cuda": (c_int, []),
        "sd_last_error": (ctypes.c_char_p, []),
        "sd_cuda_device_count": (c_int, []),
        "sd_cuda_set_device": (c_int, [c_int]),
        "sd_cuda_malloc": (c_int, [c_size_t, ctypes.POINTER(c_void_p)]),
        "sd_cuda_free": (c_int, [c_void_p]),
        "sd_cuda_memcpy": (c_int, [c_void_p, c_void_p, c_size_t]),
        "sd_cuda_stream_synchronize": (c_int, [c_void_p]),
        "sd_cuda_event_create": (c_int, [ctypes.POINTER(c_void_p)]),
        "sd_cuda_event_record": (c_int, [c_void_p, c_void_p]),
        "sd_cuda_event_elapsed_ms": (c_int, [c_void_p, c_void_p, ctypes.POINTER(ctypes.c_float)]),
        "sd_cuda_event_destroy": (None, [c_void_p]),
        "sd_crf_default_params": (None, [ctypes.POINTER(CrfParams)]),
        "sd_crf_validate": (c_int, [ctypes.POINTER(CrfParams), ctypes.POINTER(CrfIO)]),
        "sd_crf_cpu": (c_int, [ctypes.POINTER(CrfParams), ctypes.POINTER(CrfIO), c_int]),
        "sd_crf_cuda_workspace_bytes": (c_int, [ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(c_size_t)]),
        "sd_crf_cuda": (c_int, [ctypes.POINTER(CrfParams), ctypes.POINTER(CrfIO), c_void_p, c_size_t, c_int, c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


@functools.cache
def load_library() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        raise SegdeployError(
            f"the segdeploy kernels library was not found at {path}; reinstall segdeploy with "
            "'pip install .' (it is built by CMake) or set SEGDEPLOY_KERNELS_LIB"
        )
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return lib


def check(status: int) -> None:
    """Raise the error a non-zero status stands for, with the library's message."""
    if status == SD_OK:
        return
    message = load_library().sd_last_error().decode(errors="replace")
    if status == SD_ERROR_INVALID_ARGUMENT:
        raise BadInputError(message)
    raise SegdeployError(message)


def version() -> str:
    return load_library().sd_version().decode()


def built_with_cuda() -> bool:
    return bool(load_library().sd_built_with_cuda())


def cuda_device_count() -> int:
    """CUDA devices the library can use (0 when it was built without CUDA)."""
    return int(load_library().sd_cuda_device_count())
