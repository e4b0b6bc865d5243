"""ONNX files and artifact folders: loading (external data kept inside the model's folder), tensor
dimensions, the image input, opening an artifact, and the summary ``segdeploy inspect`` prints.

Every module that reads an ONNX file goes through here, so a foreign or hostile file is refused
in one place and a dimension means the same everywhere.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import BadInputError
from .manifest import resolve_artifact

#: Domains whose ops are ONNX's own.
ONNX_DOMAINS = ("", "ai.onnx")


def load_onnx(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; external data files must lie inside the model's own folder.

    The references are checked even when the data is not loaded: tools that later read the file
    themselves (ONNX Runtime's quantizer, TensorRT's parser) must never be handed a hostile one.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadInputError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    if model.ir_version == 0 or not model.HasField("graph"):
        # protobuf parses an empty or foreign file as an empty message rather than failing
        raise BadInputError(f"{path}: not an ONNX model (no IR version or graph)")
    _check_external_data(model, path)
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise BadInputError(f"{path}: its external data cannot be read ({exc})") from None
    return model


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    root = path.parent.resolve()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            if not (root / location).resolve().is_relative_to(root):
                raise BadInputError(f"{path}: tensor {tensor.name!r} points outside the model's folder ({location!r}); "
                                    "refusing to read it")


def tensor_dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """A tensor's dimensions: an int where static, the symbol's name where named, None where unknown."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def static_dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """A tensor's dimensions: an int where static, None where dynamic (named or not)."""
    return [d if isinstance(d, int) else None for d in tensor_dims(value_info)]


def elem_type(value_info: onnx.ValueInfoProto) -> int:
    """The tensor's ``onnx.TensorProto`` element type."""
    return value_info.type.tensor_type.elem_type


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def image_input(model: onnx.ModelProto, name: str | None = None) -> onnx.ValueInfoProto | None:
    """The input called ``name`` (the manifest's), else the first float32 input of four dimensions."""
    inputs = graph_inputs(model)
    return next((i for i in inputs if name and i.name == name), None) or next(
        (i for i in inputs if len(i.type.tensor_type.shape.dim) == 4 and elem_type(i) == onnx.TensorProto.FLOAT), None)


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (ONNX) domain the model imports."""
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), None)


@dataclass
class Artifact:
    """An opened artifact folder or bare ONNX file: the graph without its external data."""

    onnx_path: Path
    #: ``manifest.json`` beside the ONNX file; None for a bare ONNX file of a user's.
    manifest: dict | None
    model: onnx.ModelProto

    def image_input(self) -> onnx.ValueInfoProto:
        """The float32 NCHW image input (the manifest's input name first); BadInputError when none."""
        found = image_input(self.model, ((self.manifest or {}).get("input") or {}).get("name"))
        if found is None:
            raise BadInputError(f"{self.onnx_path}: no float32 NCHW image input")
        return found


def open_artifact(path: str | os.PathLike) -> Artifact:
    """An artifact folder (``model.onnx`` + ``manifest.json``) or an ONNX file, loaded without external data."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    onnx_path, manifest = resolve_artifact(path)
    return Artifact(onnx_path, manifest, load_onnx(onnx_path, load_external_data=False))


def summarize_onnx(path: str | os.PathLike) -> dict:
    """Tensors, opsets, operator histogram, parameters and size of an ONNX file."""
    path = Path(path)
    model = load_onnx(path, load_external_data=False)
    graph = model.graph
    ops = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ONNX_DOMAINS else n.op_type) for n in graph.node
    )

    def dtype(value_info) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type(value_info)).name

    def shape(value_info) -> list:
        return [d if d is not None else "?" for d in tensor_dims(value_info)]

    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [{"name": i.name, "dtype": dtype(i), "shape": shape(i)} for i in graph_inputs(model)],
        "outputs": [{"name": o.name, "dtype": dtype(o), "shape": shape(o)} for o in graph.output],
        "nodes": len(graph.node),
        "parameters": int(sum(int(np.prod(t.dims)) for t in graph.initializer)),
        "initializer_dtypes": dict(collections.Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
                                                       for t in graph.initializer)),
        "ops": dict(ops.most_common()),
    }
