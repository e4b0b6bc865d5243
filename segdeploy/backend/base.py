"""The runner interface shared by every backend."""

from __future__ import annotations

import abc
import importlib

import numpy as np

from ..errors import BadInputError


class Runner(abc.ABC):
    """Owns one loaded model and runs it: ``with runner: outputs = runner.infer(feed)``."""

    #: Short backend name used in tables, JSON and ``--backends``.
    name: str = "runner"

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()

    def activate(self) -> None:
        """Load the model (may be slow); called once before ``infer``."""

    def deactivate(self) -> None:
        """Release what ``activate`` acquired."""

    @abc.abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on named float32 inputs and return named numpy outputs."""


# --backends name -> "module:class"; each class is constructed from an artifact folder's
# ONNX path and manifest.
BACKENDS = {
    "ort": "segdeploy.backend.onnxrt.runner:OnnxrtRunner",
    "torch": "segdeploy.backend.torch.runner:TorchRunner",
}


def make_runner(backend: str, onnx_path, manifest: dict | None, **options) -> Runner:
    target = BACKENDS.get(backend)
    if target is None:
        raise BadInputError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_artifact(onnx_path, manifest, **options)
