"""Fully-connected CRF refinement of segmentation scores (the "dense CRF").

Mean-field inference of P. Krähenbühl and V. Koltun, "Efficient Inference in Fully Connected
CRFs with Gaussian Edge Potentials", NIPS 2011, as DeepLab v1/v2 apply it after the network:
a spatial Gaussian kernel (weight, θγ) and a bilateral kernel over position and RGB (weight,
θα, θβ) with Potts compatibility, filtered on the permutohedral lattice (Adams et al. 2010).
The kernels live in the compiled library (``kernels/densecrf``, C ABI in
``kernels/include/segdeploy/densecrf.h``); they reproduce pydensecrf with the same parameters.

Unary convention: the CRF's unary energy is U = -log P (what pydensecrf's ``setUnaryEnergy``
takes). ``unary_kind`` says what you pass:

* ``"logits"`` -- network scores; U = -logits (a per-pixel constant does not matter),
* ``"probabilities"`` -- softmax outputs p >= 0; U = -log p,
* ``"neg_log_prob"`` -- U itself.

Zero iterations (or zero weights) return softmax(-U).

Modules: :mod:`~segdeploy.crf.params` (:class:`CRFParams`), :mod:`~segdeploy.crf.refine`
(:func:`dense_crf` on the CPU or a GPU), :mod:`~segdeploy.crf.cuda` (:class:`CudaBuffer`, the GPU
workspace's size per shape, :func:`workspace_bytes`, and the bounded cache of workspaces),
:mod:`~segdeploy.crf.onnx_node` (the ``DenseCRF`` ONNX node and its ONNX Runtime op, loaded with
onnx on first use). torch, cupy and onnxruntime are imported only where used.
"""

from .cuda import (
    WORKSPACE_LIMIT_ENV,
    CudaBuffer,
    cached_workspace_bytes,
    free_workspaces,
    set_workspace_limit,
    workspace_bytes,
    workspace_limit,
)
from .params import CRFParams
from .refine import OUTPUTS, dense_crf, synthetic_logits

_ONNX_NODE_NAMES = ("CRF_DOMAIN", "CRF_OP_TYPE", "append_crf_node", "register_crf_ort")


def __getattr__(name: str):
    # The ONNX node's names import onnx (most of a second, more on a Jetson) only when asked for:
    # dense_crf needs numpy alone.
    if name in _ONNX_NODE_NAMES:
        from . import onnx_node

        return getattr(onnx_node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CRF_DOMAIN",
    "CRF_OP_TYPE",
    "OUTPUTS",
    "WORKSPACE_LIMIT_ENV",
    "CRFParams",
    "CudaBuffer",
    "append_crf_node",
    "cached_workspace_bytes",
    "dense_crf",
    "free_workspaces",
    "register_crf_ort",
    "set_workspace_limit",
    "synthetic_logits",
    "workspace_bytes",
    "workspace_limit",
]
