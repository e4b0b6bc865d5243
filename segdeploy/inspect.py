"""A summary of an ONNX file: tensors, opsets, operator histogram, parameters, size."""

from __future__ import annotations

import collections
import os
from pathlib import Path

from .errors import BadInputError


def load_onnx(path: str | os.PathLike, load_external_data: bool = True):
    """Load an ONNX model; external data files must lie inside the model's own folder."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadInputError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    if model.ir_version == 0 or not model.HasField("graph"):
        # protobuf parses an empty or foreign file as an empty message rather than failing
        raise BadInputError(f"{path}: not an ONNX model (no IR version or graph)")
    if load_external_data:
        _check_external_data(model, path)
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise BadInputError(f"{path}: its external data cannot be read ({exc})") from None
    return model


def _check_external_data(model, path: Path) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    root = path.parent.resolve()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            target = (root / location).resolve()
            if not target.is_relative_to(root):
                raise BadInputError(f"{path}: tensor {tensor.name!r} points outside the model's folder ({location!r}); refusing to read it")


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in shape.dim]


def summarize_onnx(path: str | os.PathLike) -> dict:
    import numpy as np
    import onnx

    path = Path(path)
    model = load_onnx(path, load_external_data=False)
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    ops = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in graph.node
    )
    dtype = lambda vi: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name  # noqa: E731
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [{"name": i.name, "dtype": dtype(i), "shape": _dims(i)} for i in graph.input if i.name not in initializer_names],
        "outputs": [{"name": o.name, "dtype": dtype(o), "shape": _dims(o)} for o in graph.output],
        "nodes": len(graph.node),
        "parameters": int(sum(int(np.prod(t.dims)) for t in graph.initializer)),
        "initializer_dtypes": dict(collections.Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in graph.initializer)),
        "ops": dict(ops.most_common()),
    }
