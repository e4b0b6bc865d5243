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


def with_segdeploy_ops(path: Path, options) -> str | bytes:
    """Register with ``options`` the Python ops of segdeploy's nodes the graph at ``path`` uses;
    returns what ONNX Runtime loads: the path, or the graph's bytes where a node runs as another op
    type in ONNX Runtime (``head.onnx_node.for_onnx_runtime``)."""
    if not _mentions(path, b"ai.onnx.contrib"):  # segdeploy's nodes' domain: parsing a large graph costs seconds
        return str(path)
    import onnx

    from ...conv import onnx_node as conv_node
    from ...crf import onnx_node as crf_node
    from ...head import onnx_node as head_node

    model = onnx.load(str(path), load_external_data=False)
    used = {(node.domain, node.op_type) for node in model.graph.node}
    source, libraries = str(path), []
    if (crf_node.CRF_DOMAIN, crf_node.CRF_OP_TYPE) in used:
        libraries.append(crf_node.define_crf_ort_op())
    if (head_node.DOMAIN, head_node.OP_TYPE) in used:
        libraries.append(head_node.define_ort_ops())
        renamed = head_node.for_onnx_runtime(model)
        model, source = (model, source) if renamed is None else (renamed, renamed.SerializeToString())
    if any((conv_node.DOMAIN, op) in used for op in conv_node.OP_TYPES):
        libraries.append(conv_node.define_ort_ops())
        source = conv_node.for_onnx_runtime(model).SerializeToString()
    for library in dict.fromkeys(libraries):  # one library holds every Python op defined: register it once
        options.register_custom_ops_library(library)
    return source


def _mentions(path: Path, marker: bytes) -> bool:
    """Whether the file at ``path`` holds the bytes ``marker`` (unreadable files: ONNX Runtime says why)."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(marker) != -1
    except (OSError, ValueError):
        return False


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
        model = with_segdeploy_ops(self.path, options)
        try:
            # The CPU provider stays last as the fallback for nodes a GPU provider does not take.
            providers = list(dict.fromkeys([*self.providers, "CPUExecutionProvider"]))
            return ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise BadInputError(f"{self.path}: ONNX Runtime cannot load this model ({exc})") from None


class OnnxrtRunner(Runner):
    name = "ort"

    def __init__(self, session_loader: SessionFromOnnx):
        self.session_loader = session_loader
        self.session = None

    @classmethod
    def from_artifact(cls, onnx_path, manifest=None, threads: int | None = None, providers=("CPUExecutionProvider",), **_):
        """A runner of the artifact's graph; segdeploy's own nodes in it (dense CRF, fused upsample +
        argmax) are registered by the session loader, whatever the manifest says."""
        return cls(SessionFromOnnx(onnx_path, providers=providers, threads=threads))

    def activate(self):
        self.session = self.session_loader()

    def deactivate(self):
        self.session = None

    def output_copy(self) -> str:
        if set(self.session_loader.providers) <= {"CPUExecutionProvider"}:
            return "none: ONNX Runtime on the CPU writes the outputs in host memory"
        return "device-to-host copy of every output inside session.run (timed)"

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))
