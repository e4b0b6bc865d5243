"""Map checkpoints of other libraries onto the matching segdeploy variant's key names.

Supported foreign formats (the variant's ``checkpoints`` field lists what it accepts):

- torchvision ``fcn_resnet50/101``, ``deeplabv3_resnet50/101``, ``deeplabv3_mobilenet_v3_large``:
  our variants use torchvision's module names, so only the training-time auxiliary head
  (``aux_classifier.*``) is dropped.
- segmentation_models_pytorch ``DeepLabV3(encoder_name="resnet50"/"resnet101")`` with its default
  decoder arguments → ``deeplabv3_resnet50_smp`` (``backbone=resnet101`` for the latter): its layout
  differs from torchvision's in the dilation of each dilated stage's first block and in
  ``align_corners=True`` upsampling, which that variant reproduces; the keys are renamed below.

Not supported, because the architectures differ from every variant here: smp ``Unet`` (a ResNet-
encoder U-Net with nearest-neighbour upsampling) and smp ``DeepLabV3Plus`` (an extra separable
conv after ASPP, separable convs without BN between depthwise and pointwise, one fusion conv).
"""

from __future__ import annotations

from ..errors import BadInputError

_MAX_LISTED = 8
#: A key prefix that marks each foreign format (no segdeploy variant has a module of that name),
#: and the prefixes of that format's keys.
_FORMAT_MARKERS = {"torchvision": "aux_classifier.", "segmentation_models_pytorch": "segmentation_head."}
_FOREIGN_PREFIXES = {
    "torchvision": ("aux_classifier.",),
    "segmentation_models_pytorch": ("encoder.", "decoder.", "segmentation_head."),
}


#: segmentation_models_pytorch DeepLabV3 → segdeploy prefixes; older smp releases saved the
#: decoder as a Sequential (decoder.0/1/2).
_SMP_DEEPLABV3_PREFIXES = {
    "encoder.": "backbone.",
    "decoder.aspp.": "classifier.0.",
    "decoder.0.": "classifier.0.",
    "decoder.conv.": "classifier.1.",
    "decoder.1.": "classifier.1.",
    "decoder.bn.": "classifier.2.",
    "decoder.2.": "classifier.2.",
    "segmentation_head.0.": "classifier.4.",
}


def detect_format(state_dict: dict) -> str:
    """'torchvision', 'segmentation_models_pytorch' or 'segdeploy' (anything else)."""
    for name, marker in _FORMAT_MARKERS.items():
        if any(key.startswith(marker) for key in state_dict):
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
    return _rename_prefixes(spec, state_dict, _SMP_DEEPLABV3_PREFIXES)


def _rename_prefixes(spec, state_dict: dict, prefixes: dict) -> dict:
    renamed, unmatched = {}, []
    for key, value in state_dict.items():
        old = next((p for p in prefixes if key.startswith(p)), None)
        if old is None:
            unmatched.append(key)
        else:
            renamed[prefixes[old] + key[len(old):]] = value
    if unmatched:
        more = f" (+{len(unmatched) - _MAX_LISTED} more)" if len(unmatched) > _MAX_LISTED else ""
        raise BadInputError(
            f"cannot map these checkpoint keys onto {spec.name}: {', '.join(unmatched[:_MAX_LISTED])}{more}"
        )
    return renamed
