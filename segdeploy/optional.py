"""Optional dependencies, imported where they are used, with an install hint when missing."""

from __future__ import annotations

import importlib

from .errors import MissingDependencyError


def require(module: str, extra: str, why: str):
    """``import module`` or raise MissingDependencyError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module, extra=extra, why=why) from None
