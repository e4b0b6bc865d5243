"""A registry of named model variants with uniform constructor arguments (timm-style).

Every builder takes ``num_classes`` plus plain keyword arguments and returns an ``nn.Module``
whose ``forward(images)`` maps float32 NCHW images to logits of shape (N, num_classes, H, W).
This module imports no torch, so the names can be listed anywhere.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInputError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]
    family: str
    paper: str
    #: Input height and width must be multiples of this.
    output_stride: int
    #: Constructor arguments the variant is built with unless the caller overrides them.
    defaults: dict = field(default_factory=dict)
    #: Checkpoint formats this variant accepts, in words (shown by ``segdeploy models``).
    checkpoints: tuple[str, ...] = ("segdeploy state dict",)
    #: Paper parameter count (millions) for the default configuration, when the paper states one.
    paper_params_m: float | None = None
    #: For fixed-geometry models (e.g. the original valid-convolution U-Net): returns the
    #: nearest valid input size for a requested (H, W), or None when any multiple of
    #: ``output_stride`` is valid.
    valid_input_size: Callable[[int, int], tuple[int, int]] | None = None

    def build(self, **kwargs):
        return self.builder(**{**self.defaults, **kwargs})


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str, paper: str, output_stride: int, **spec_fields):
    """Decorator registering ``builder`` under ``name``."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(
            name=name, builder=builder, family=family, paper=paper, output_stride=output_stride, **spec_fields
        )
        return builder

    return wrap


def _load_zoo() -> None:
    # The architecture modules import torch; load them only when a model is asked for.
    importlib.import_module("segdeploy.models.zoo")


def list_models() -> list[ModelSpec]:
    _load_zoo()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    _load_zoo()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BadInputError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))}. "
            "A model of your own can be given as 'package.module:factory'."
        ) from None


def create_model(name: str, **kwargs):
    """Build a registered variant, or call a user factory given as ``package.module:factory``."""
    if ":" in name:
        return load_factory(name)(**kwargs)
    return get_spec(name).build(**kwargs)


def load_factory(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"cannot import module {module_name!r} for --model {target!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BadInputError(f"{module_name!r} has no callable {attr!r} (from --model {target!r})")
    return factory
