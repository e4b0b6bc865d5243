"""Imports every architecture module so that their variants register themselves."""

from . import deeplab, fastfcn, fcdensenet, fcn, gscnn, unet  # noqa: F401
