"""Deployment targets (``--target``): what the ONNX file must look like for each runtime.

A target fixes the ONNX opset (and so the exporter: the dynamo exporter cannot emit opset < 18,
so opset-17 targets use the TorchScript exporter) and the quantization route:

* ``tensorrt``: explicit Q/DQ as TensorRT requires - symmetric, zero point 0, int8 activations,
  per-channel int8 weights, bias left in float. Every supported release builds this form, so
  precision lives in the graph (how each release is told so: ``segdeploy.backend.trt.releases``).
  TensorRT for RTX (target ``rtx``) takes the same form.
* ``ort-cpu``: the form ONNX Runtime's CPU kernels are fast with - asymmetric uint8 activations
  and per-channel int8 weights (u8s8, VNNI), int32 bias as ORT's QLinearConv takes it.

This module imports nothing heavy; ``export`` and the precision tools both read it.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

from .errors import BadInputError

QUANTIZATION_ROUTES = ("tensorrt", "ort-cpu")
#: The dynamo (torch.export) exporter emits opset 18 and newer only.
DYNAMO_MIN_OPSET = 18


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    #: "tensorrt" or "onnxruntime".
    runtime: str
    #: TensorRT release the target ships ("8.5", "10.3", ...); None for ONNX Runtime.
    tensorrt: str | None
    #: Opset written by default, and the newest the runtime's ONNX parser accepts.
    opset: int
    max_opset: int
    #: "dynamo" or "torchscript".
    exporter: str
    #: One of QUANTIZATION_ROUTES.
    quantization: str
    #: "tensorrt", or "rtx" for TensorRT for RTX (its own releases, 1.x, and Python package).
    edition: str = "tensorrt"

    @property
    def runtime_name(self) -> str:
        """How messages name the runtime: ``TensorRT 10.3``, ``TensorRT for RTX 1.x``, ``ONNX Runtime``."""
        if not self.tensorrt:
            return "ONNX Runtime"
        return f"TensorRT for RTX {self.tensorrt}.x" if self.edition == "rtx" else f"TensorRT {self.tensorrt}"

    def exporter_for(self, opset: int) -> str:
        """The exporter able to write ``opset`` (an override of the default one)."""
        if opset > self.max_opset:
            raise BadInputError(
                f"target {self.name!r} accepts ONNX opset <= {self.max_opset}; opset {opset} was asked for"
            )
        return "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"

    def to_manifest(self) -> dict:
        return asdict(self)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("jetpack5", "JetPack 5.x (TensorRT 8.5)", "tensorrt", "8.5", 17, 17, "torchscript", "tensorrt"),
        Target("jetpack6.0", "JetPack 6.0 (TensorRT 8.6)", "tensorrt", "8.6", 17, 17, "torchscript", "tensorrt"),
        Target("jetpack6.2", "JetPack 6.2 (TensorRT 10.3)", "tensorrt", "10.3", 18, 20, "dynamo", "tensorrt"),
        Target("trt10", "TensorRT 10.x on desktop/server GPUs", "tensorrt", "10", 18, 20, "dynamo", "tensorrt"),
        Target("trt11", "TensorRT 11.x on desktop/server GPUs", "tensorrt", "11", 18, 25, "dynamo", "tensorrt"),
        Target("rtx", "TensorRT for RTX 1.x on RTX desktop GPUs (Turing to Blackwell)", "tensorrt", "1", 18, 25, "dynamo",
               "tensorrt", edition="rtx"),
        Target("cpu", "ONNX Runtime on x86/ARM CPUs", "onnxruntime", None, 18, 23, "dynamo", "ort-cpu"),
    )
}
#: Engines are built for the newest TensorRT unless a target is named.
DEFAULT_TARGET = "trt11"


def get_target(name: str | None) -> Target:
    """The target called ``name`` (``None``: the default); unknown names are a BadInputError."""
    name = DEFAULT_TARGET if name is None else name
    try:
        return TARGETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, TARGETS, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise BadInputError(f"unknown target {name!r}.{hint} Known targets: {', '.join(TARGETS)}") from None
