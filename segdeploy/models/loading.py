"""Building a model and loading an untrusted checkpoint into it, with errors a user can act on."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from ..errors import BadInputError
from .convert import to_segdeploy_state_dict
from .registry import create_model, get_spec

_MAX_LISTED = 8


def build_model(name: str, args: dict, checkpoint: str | None = None, seed: int = 0):
    """The model ``name`` built with ``args``; weights from ``checkpoint`` or a seeded random init.

    The seed makes a random-init export reproducible, so the torch backend can rebuild the
    exact network that was exported without shipping its weights.
    """
    import torch

    torch.manual_seed(seed)
    model = create_model(name, **args)
    if checkpoint:
        spec = None if ":" in name else get_spec(name)
        load_checkpoint(model, checkpoint, spec)
    return model.eval()


def read_state_dict(path: str | Path) -> dict:
    """Tensors of a checkpoint file, loaded with ``weights_only=True`` (no code runs from the file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    # Training scripts wrap the weights: {"state_dict": ...}, {"model": ...}.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{path}: holds no state dict of tensors")
    # DataParallel / DistributedDataParallel prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model, path: str | Path, spec=None) -> None:
    state = read_state_dict(path)
    if spec is not None:
        state = to_segdeploy_state_dict(spec, state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
            if items:
                more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                problems.append(f"{label}: {', '.join(items[:_MAX_LISTED])}{more}")
        hint = _num_classes_hint(state, expected)
        raise BadInputError(f"{path}: does not fit the model; " + "; ".join(problems) + hint)
    model.load_state_dict(state)


def _num_classes_hint(state: dict, expected: dict) -> str:
    # The classifier is the last weight of the model: a mismatch there is a --num-classes mistake.
    last_weight = [k for k in expected if k.endswith("weight")][-1:]
    for k in last_weight:
        if k in state and state[k].shape[0] != expected[k].shape[0]:
            found, wanted = state[k].shape[0], expected[k].shape[0]
            return f" — the checkpoint has {found} classes, the model {wanted}: pass --num-classes {found}"
    return ""
