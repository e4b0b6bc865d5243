"""segdeploy's ONNX nodes as onnxruntime-extensions Python ops, handing their outputs back as arrays.

ONNX Runtime's C API headers ship in no PyPI or Debian package, so segdeploy's custom nodes (the
dense CRF, the fused upsample + argmax) run in ONNX Runtime as onnxruntime-extensions Python ops
calling the C kernels. Two limits of that route shape the nodes: one output dtype per op type, and
no float16 tensors (its native side aborts the process on one), so the graphs feed these nodes
float32 and ONNX Runtime sessions are told which variant to run (:func:`define_python_op`).

The library's own hook passes every output to ONNX Runtime as a Python list (``tolist()``), which
for a 21x512x512 tensor costs more than the kernels; its native side also takes flat numpy arrays,
which the one hook installed here hands back for every op defined through this module (other Python
ops keep the library's hook).
"""

from __future__ import annotations

import functools

import numpy as np

from ...errors import MissingDependencyError

#: Output dtypes of the ops defined here, by their onnxruntime-extensions id.
_OUTPUT_DTYPES: dict[int, tuple[np.dtype, ...]] = {}


def _extensions():
    try:
        import onnxruntime_extensions
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime-extensions", "ort", "ONNX Runtime runs segdeploy's custom nodes "
                                     "through it") from exc
    return onnxruntime_extensions


def _element_types() -> dict:
    from onnxruntime_extensions import PyCustomOpDef

    return {np.dtype(np.float32): PyCustomOpDef.dt_float, np.dtype(np.uint8): PyCustomOpDef.dt_uint8,
            np.dtype(np.int32): PyCustomOpDef.dt_int32, np.dtype(np.int64): PyCustomOpDef.dt_int64}


def _attribute_types() -> dict:
    from onnxruntime_extensions import PyCustomOpDef

    return {float: PyCustomOpDef.dt_float, int: PyCustomOpDef.dt_int64, str: PyCustomOpDef.dt_string}


def define_python_op(op_type: str, body, *, inputs: tuple, outputs: tuple, attributes: dict) -> str:
    """Declare ``body`` as the Python op ``op_type`` (domain ``ai.onnx.contrib``) with numpy dtypes
    ``inputs``/``outputs`` and attribute types (``float``, ``int``, ``str``) by name; returns the
    library a ``SessionOptions`` registers to run it. Call once per op type and process."""
    extensions = _extensions()
    element, attribute = _element_types(), _attribute_types()
    op = extensions.onnx_op(op_type=op_type, inputs=[element[np.dtype(t)] for t in inputs],
                            outputs=[element[np.dtype(t)] for t in outputs],
                            attrs={name: attribute[kind] for name, kind in attributes.items()})(body)
    _OUTPUT_DTYPES[op._id] = tuple(np.dtype(t) for t in outputs)
    _install_hook()
    return extensions.get_library_path()


@functools.cache
def _install_hook() -> None:
    from onnxruntime_extensions import PyCustomOpDef, _ocos

    library_hook = _ocos._on_pyop_invocation

    def invoke(op_id, inputs, attributes):
        dtypes = _OUTPUT_DTYPES.get(op_id)
        if dtypes is None:
            return library_hook(op_id, inputs, attributes)
        op = _ocos.Opdef._odlist[op_id]
        values = op.body(*inputs, **op.cast_attributes(attributes))
        values = values if isinstance(values, tuple) else (values,)
        handed = [op_id]
        for value, dtype in zip(values, dtypes, strict=True):
            handed += [value.shape, np.ascontiguousarray(value, dtype).reshape(-1)]
        return tuple(handed)

    PyCustomOpDef.install_hooker(invoke)
