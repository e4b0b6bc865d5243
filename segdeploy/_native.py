"""ctypes loader of the compiled kernels library (a C ABI shared library, see kernels/include).

The library is built by CMake during ``pip install`` and installed as
``segdeploy/_lib/libsegdeploy_kernels.so``; ``SEGDEPLOY_KERNELS_LIB`` points elsewhere (a
CMake build tree, for instance).

Each kernel's binding declares its own C functions with :func:`register_signatures` (the dense
CRF's in ``segdeploy/crf/_binding.py``); this module declares only the library-wide ones
(version, errors, CUDA memory, streams and events).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

from .errors import BadInputError, SegdeployError

_LIB_NAMES = {"linux": "libsegdeploy_kernels.so", "darwin": "libsegdeploy_kernels.dylib", "win32": "segdeploy_kernels.dll"}

# sd_status (kernels/include/segdeploy/status.h)
SD_OK = 0
SD_ERROR_INVALID_ARGUMENT = 1
SD_ERROR_OUT_OF_MEMORY = 2
SD_ERROR_CUDA = 3
SD_ERROR_NOT_BUILT = 4

# name -> (restype, argtypes)
Signatures = dict[str, tuple[object, list]]

_c_int, _c_void_p, _c_size_t = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
_signatures: Signatures = {
    "sd_version": (ctypes.c_char_p, []),
    "sd_built_with_cuda": (_c_int, []),
    "sd_last_error": (ctypes.c_char_p, []),
    "sd_cuda_device_count": (_c_int, []),
    "sd_cuda_set_device": (_c_int, [_c_int]),
    "sd_cuda_malloc": (_c_int, [_c_size_t, ctypes.POINTER(_c_void_p)]),
    "sd_cuda_free": (_c_int, [_c_void_p]),
    "sd_cuda_memcpy": (_c_int, [_c_void_p, _c_void_p, _c_size_t]),
    "sd_cuda_stream_synchronize": (_c_int, [_c_void_p]),
    "sd_cuda_event_create": (_c_int, [ctypes.POINTER(_c_void_p)]),
    "sd_cuda_event_record": (_c_int, [_c_void_p, _c_void_p]),
    "sd_cuda_event_elapsed_ms": (_c_int, [_c_void_p, _c_void_p, ctypes.POINTER(ctypes.c_float)]),
    "sd_cuda_event_destroy": (None, [_c_void_p]),
}
_library: ctypes.CDLL | None = None
_lock = threading.Lock()


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


def _declare(lib: ctypes.CDLL, signatures: Signatures) -> None:
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


def register_signatures(signatures: Signatures) -> None:
    """Declare a kernel's C functions (name -> (restype, argtypes)); call it at the binding's import.

    Declared on the library now if it is loaded, else when it is.
    """
    with _lock:
        _signatures.update(signatures)
        if _library is not None:
            _declare(_library, signatures)


def load_library() -> ctypes.CDLL:
    global _library
    with _lock:
        if _library is None:
            path = library_path()
            if not path.is_file():
                raise SegdeployError(
                    f"the segdeploy kernels library was not found at {path}; reinstall segdeploy with "
                    "'pip install .' (it is built by CMake) or set SEGDEPLOY_KERNELS_LIB"
                )
            lib = ctypes.CDLL(str(path))
            _declare(lib, _signatures)
            _library = lib
        return _library


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
