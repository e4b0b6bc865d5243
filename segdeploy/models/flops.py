"""Parameter and FLOP counts of a model, from forward hooks (torch only, no extra packages).

Convention: one multiply-add counts as **one** FLOP, i.e. the figures are GMACs, the unit most
segmentation papers report as "FLOPs". Only convolutions (incl. transposed) and linear layers are
counted; normalisation, activations, pooling and interpolation add well under 1%.

Models are built and run on the ``meta`` device: shapes propagate, nothing is computed or
allocated, so a 512×512 count of a 130M-parameter model takes well under a second.
"""

from __future__ import annotations

import torch
from torch import nn

#: Input size the zoo reports GFLOPs at.
REFERENCE_SIZE = (512, 512)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        # Every input element is multiplied into kernel_size × out_channels/groups outputs.
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return inputs[0].numel() * kernel * module.out_channels // module.groups
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * kernel * module.in_channels // module.groups
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1, device="meta") -> int:
    """Multiply-adds of one forward pass at ``input_size`` (H, W)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(batch, 3, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def reference_input_size(spec, size=REFERENCE_SIZE) -> tuple[int, int]:
    """``size``, or the nearest valid size for fixed-geometry variants (the unpadded U-Net)."""
    return spec.valid_input_size(*size) if spec.valid_input_size else size


def model_complexity(spec, input_size=REFERENCE_SIZE, **model_kwargs) -> dict:
    """Parameters (M) and GFLOPs (1 multiply-add = 1 FLOP) of a registered variant."""
    size = reference_input_size(spec, input_size)
    with torch.device("meta"):
        model = spec.build(**model_kwargs)
    return {
        "params_m": count_parameters(model) / 1e6,
        "gflops": count_macs(model, size) / 1e9,
        "input_size": list(size),
    }
