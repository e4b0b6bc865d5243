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

from .errors import SegdeployError

_LIB_NAMES = {"linux": "libsegdeploy_kernels.so", "darwin": "libsegdeploy_kernels.dylib", "win32": "segdeploy_kernels.dll"}


def library_path() -> Path:
    override = os.environ.get("SEGDEPLOY_KERNELS_LIB")
    if override:
        return Path(override)
    return Path(__file__).parent / "_lib" / _LIB_NAMES.get(sys.platform, _LIB_NAMES["linux"])


@functools.cache
def load_library() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        raise SegdeployError(
            f"the segdeploy kernels library was not found at {path}; reinstall segdeploy with "
            "'pip install .' (it is built by CMake) or set SEGDEPLOY_KERNELS_LIB"
        )
    lib = ctypes.CDLL(str(path))
    lib.sd_version.restype = ctypes.c_char_p
    lib.sd_version.argtypes = []
    lib.sd_built_with_cuda.restype = ctypes.c_int
    lib.sd_built_with_cuda.argtypes = []
    return lib


def version() -> str:
    return load_library().sd_version().decode()


def built_with_cuda() -> bool:
    return bool(load_library().sd_built_with_cuda())
