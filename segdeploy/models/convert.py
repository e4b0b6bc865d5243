"""Map checkpoints of other libraries onto the matching segdeploy variant's key names.

Supported foreign formats (the variant's ``checkpoints`` field lists what it accepts):

- torchvision ``fcn_resnet50/101``, ``deeplabv3_resnet50/101``, ``deeplabv3_mobilenet_v3_large``:
  our variants use torchvision's module names, so only the training-time auxiliary head
  (``aux_classifier.*``) is dropped.
"""

from __future__ import annotations

from ..errors import BadInputError

_MAX_LISTED = 8
#: Key prefixes of checkpoints from other libraries, by format.
_FOREIGN_PREFIXES = {
    "torchvision": ("aux_classifier.",),
    "segmentation_models_pytorch": ("encoder.", "decoder.", "segmentation_head."),
}


def detect_format(state_dict: dict) -> str:
    """'torchvision', 'segmentation_models_pytorch' or 'segdeploy' (anything else)."""
    for name, prefixes in _FOREIGN_PREFIXES.items():
        if any(key.startswith(prefixes) for key in state_dict):
            return name
    return "segdeploy"


def accepts(spec, checkpoint_format: str) -> bool:
    return any(entry.startswith(checkpoint_format) for entry in spec.checkpoints)


def to_segdeploy_state_dict(spec, state_dict: dict) -> dict:
    """``state_dict`` with its keys renamed for the variant ``spec``; identity for our own.

    Raises ``BadInputError`` naming the keys that have no counterpart when the checkpoint comes
    from a library whose layout this variant does not take."""
    checkpoint_format = detect_format(state_dict)
    if checkpoint_format == "segdeploy":
        return dict(state_dict)
    if not accepts(spec, checkpoint_format):
        foreign = [k for k in state_dict if k.startswith(_FOREIGN_PREFIXES[checkpoint_format])]
        more = f" (+{len(foreign) - _MAX_LISTED} more)" if len(foreign) > _MAX_LISTED else ""
        raise BadInputError(
            f"this looks like a {checkpoint_format} checkpoint, which {spec.name} cannot take "
            f"(unmatched keys: {', '.join(foreign[:_MAX_LISTED])}{more}); {spec.name} accepts: "
            f"{', '.join(spec.checkpoints)}"
        )
    if checkpoint_format == "torchvision":
        return {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}
    raise AssertionError(f"no key mapping for {checkpoint_format}")  # accepts() listed a format without one
