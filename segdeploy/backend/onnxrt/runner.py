"""ONNX Runtime: the embedded default backend, on the CPU unless another provider is asked for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import BadInputError
from ...optional import require
from ..base import Runner


def import_onnxruntime():
    return require("onnxruntime", extra="ort", why="needed to run ONNX files")


class SessionFromOnnx:
    """Loader: an ``onnxruntime.InferenceSession`` from an ONNX file."""

    def __init__(self, path: str | os.PathLike, providers=("CPUExecutionProvider",), threads: int | None = None,
                 session_options=None):
        self.path = Path(path)
        self.providers = list(providers)
        self.threads = threads
        self.session_options = session_options

    def __call__(self):
        ort = import_onnxruntime()
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise BadInputError(
                f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} (available: "
                f"{', '.join(ort.get_available_providers())}); install the matching onnxruntime build"
            )
        options = self.session_options or ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            # The CPU provider stays last as the fallback for nodes a GPU provider does not take.
            providers = list(dict.fromkeys([*self.providers, "CPUExecutionProvider"]))
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise BadInputError(f"{self.path}: ONNX Runtime cannot load this model ({exc})") from None


class OnnxrtRunner(Runner):
    name = "ort"

    def __init__(self, session_loader: SessionFromOnnx):
        self.session_loader = session_loader
        self.session = None

    @classmethod
    def from_artifact(cls, onnx_path, manifest=None, threads: int | None = None, providers=("CPUExecutionProvider",), **_):
        options = None
        if manifest and manifest.get("crf"):
            from ...crf import register_crf_ort  # the graph ends in segdeploy's DenseCRF node

            options = register_crf_ort(import_onnxruntime().SessionOptions())
        return cls(SessionFromOnnx(onnx_path, providers=providers, threads=threads, session_options=options))

    def activate(self):
        self.session = self.session_loader()

    def deactivate(self):
        self.session = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))
