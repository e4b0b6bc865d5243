"""Imports every architecture module so that their variants register themselves."""

from . import deeplab  # noqa: F401
