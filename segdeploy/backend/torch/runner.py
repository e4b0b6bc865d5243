"""PyTorch eager execution: the reference that exported graphs are checked against."""

from __future__ import annotations

import numpy as np

from ...errors import BadInputError, MissingDependencyError
from ..base import Runner


def import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", extra="export", why="needed for the PyTorch backend") from None
    return torch


class ModelFromManifest:
    """Loader: rebuild the exported ``nn.Module`` from the manifest (name, arguments, checkpoint, seed)."""

    def __init__(self, manifest: dict):
        if not manifest or "model" not in manifest:
            raise BadInputError("the torch backend needs a segdeploy artifact folder (its manifest names the model)")
        self.model_info = manifest["model"]

    def __call__(self):
        from ...models.loading import build_model

        info = self.model_info
        return build_model(info["name"], info.get("args", {}), checkpoint=info.get("checkpoint"), seed=info.get("seed", 0))


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model_loader, output_names=("logits",), threads: int | None = None, device: str = "cpu"):
        self.model_loader = model_loader
        self.output_names = tuple(output_names)
        self.threads = threads
        self.device = device
        self.model = None

    @classmethod
    def from_artifact(cls, onnx_path, manifest=None, threads: int | None = None, **_):
        outputs = (manifest or {}).get("output", {}).get("name", "logits")
        return cls(ModelFromManifest(manifest), output_names=(outputs,), threads=threads)

    def activate(self):
        torch = import_torch()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = self.model_loader().eval().to(self.device)

    def deactivate(self):
        self.model = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = import_torch()
        (images,) = feed.values()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(images).to(self.device))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, outs)}
