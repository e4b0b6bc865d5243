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
        """Run on named float32 host arrays and return named host arrays (end to end)."""

    def output_copy(self) -> str:
        """Where ``infer``'s outputs are made and how they reach host memory, for benchmark reports: any copy
        off a device happens inside ``infer``, so it is inside the timed end-to-end figure."""
        return "outputs returned in host memory by infer (any copy is inside the timed run)"

    def time_on_device(self, feed: dict[str, np.ndarray], iterations: int) -> list[float] | None:
        """Per-run GPU time in ms (CUDA events, inputs already on the device); None on a CPU."""
        return None

    def peak_device_memory_mb(self) -> float | None:
        """Peak GPU memory this runner allocated, when it can tell; None on a CPU."""
        return None


# --backends name -> ("module:class", constructor options). Each class is built by its
# ``from_artifact(onnx_path, manifest, **options)``.
BACKENDS = {
    "ort": ("segdeploy.backend.onnxrt.runner:OnnxrtRunner", {}),
    "ort-cuda": ("segdeploy.backend.onnxrt.runner:OnnxrtRunner", {"providers": ("CUDAExecutionProvider",)}),
    "torch": ("segdeploy.backend.torch.runner:TorchRunner", {}),
    "torch-cuda": ("segdeploy.backend.torch.runner:TorchRunner", {"device": "cuda"}),
    "torch-cuda-fp16": ("segdeploy.backend.torch.runner:TorchRunner", {"device": "cuda", "half": True}),
    "torch-cuda-graph": ("segdeploy.backend.torch.runner:TorchRunner", {"device": "cuda", "cuda_graph": True}),
    # The engine `segdeploy build` wrote beside the artifact's model.onnx (model.engine + engine.json).
    "trt": ("segdeploy.backend.trt.runner:TrtRunner", {}),
    # A running Triton server (url=, model=): segdeploy is its client.
    "triton": ("segdeploy.backend.triton.runner:TritonRunner", {}),
}


def make_runner(backend: str, onnx_path, manifest: dict | None, **options) -> Runner:
    if backend not in BACKENDS:
        raise BadInputError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    target, backend_options = BACKENDS[backend]
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    runner = cls.from_artifact(onnx_path, manifest, **backend_options, **options)
    runner.name = backend
    return runner
