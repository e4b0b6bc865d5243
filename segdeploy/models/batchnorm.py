"""Realistic activation scales for randomly initialised networks.

A freshly built network's batch-norm layers have running mean 0 and variance 1, so in eval mode
they do nothing, and activations grow through residual stages (a random ResNet-101 reaches ~10⁴ at
layer4). Such logits say nothing about a trained model and make absolute parity tolerances
meaningless. Setting every BN layer's running statistics from one forward pass over random images
gives each layer the unit-scale activations that a trained network has, with every branch active.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import create_model

#: Floor of calibrated variances (see calibrate_batch_norm).
MIN_VARIANCE = 1e-2


def calibrate_batch_norm(model: nn.Module, input_size: tuple[int, int], *, batch=8, seed=0,
                         images: torch.Tensor | None = None) -> nn.Module:  # fmt: skip
    """Set the running statistics of every BN layer from one batch of Gaussian images (or of
    ``images``, NCHW); returns ``model`` in eval mode. Deterministic for a given ``seed``.

    BN layers after global pooling see one value per image, hence a batch of 8: a variance
    estimated from 2 values can be near zero. Channels that are almost never active on the batch
    (a ReLU'd random feature) also get variances near zero; dividing by their square root would
    amplify float rounding ~300× at other inputs, so variances are floored at ``MIN_VARIANCE``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    if images is None:
        images = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(seed))
    model.train()
    with torch.no_grad():
        model(images)
    for bn, momentum in zip(norms, saved_momenta):
        bn.momentum = momentum
        bn.running_var.clamp_(min=MIN_VARIANCE)
    return model.eval()


def calibrated_state_dict(name: str, input_size: tuple[int, int], *, seed=0, **model_kwargs) -> dict:
    """The state dict of registered variant ``name``, randomly initialised from ``seed`` and
    BN-calibrated at ``input_size``: stand-in weights for exports, tests and benchmarks."""
    torch.manual_seed(seed)
    return calibrate_batch_norm(create_model(name, **model_kwargs), input_size, seed=seed).state_dict()
