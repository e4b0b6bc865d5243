"""Model zoo: registered architectures (see registry.py) and checkpoint loading."""

from .registry import ModelSpec, create_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
