"""The FP32 model a precision step starts from, and the artifact folder it writes.

The source is a segdeploy artifact (folder or its ``model.onnx``, with ``manifest.json``) or any
ONNX file a user already has; then the input normalisation comes from the command line. The
output is an artifact folder of the same form as ``segdeploy export`` writes, its manifest
naming the parent by sha256, so ``bench`` and the TensorRT build treat all precisions alike.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy
import onnx

from .. import __version__
from ..errors import BadInputError
from ..fileio import atomic_path, sha256_file
from ..manifest import MANIFEST_NAME, ONNX_NAME, default_class_names, derived_manifest, new_manifest, onnx_file_section, write_manifest
from ..onnx_io import default_opset, elem_type, graph_inputs, load_onnx, open_artifact, static_dims
from ..preprocess import input_spec


@dataclass
class Source:
    onnx_path: Path
    manifest: dict  # the parent's, or one made from the command line for a foreign ONNX file
    foreign: bool
    input_name: str
    #: The graph's fixed batch size, or None when the batch dimension is dynamic.
    batch: int | None
    sha256: str
    opset: int

    @property
    def spec(self) -> dict:
        return self.manifest["input"]


def load_source(
    path: str | os.PathLike,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
) -> Source:
    """Open an artifact or a foreign ONNX file; ``mean``/``std``/``scale``/``size`` override the manifest."""
    artifact = open_artifact(path)
    onnx_path, manifest, model = artifact.onnx_path, artifact.manifest, artifact.model
    inputs = graph_inputs(model)
    if len(inputs) != 1 or elem_type(inputs[0]) != onnx.TensorProto.FLOAT:
        raise BadInputError(f"{onnx_path}: expected one float32 image input, found {[i.name for i in inputs]}")
    dims = static_dims(inputs[0])
    if len(dims) != 4 or dims[1] not in (3, None):
        raise BadInputError(f"{onnx_path}: expected an NCHW RGB input (N, 3, H, W), found shape {dims}")
    output = model.graph.output[0]
    if elem_type(output) != onnx.TensorProto.FLOAT:
        raise BadInputError(f"{onnx_path}: expects an FP32 model; its output {output.name!r} is not float32")

    foreign = manifest is None
    if foreign:
        manifest = _foreign_manifest(onnx_path, model, dims, mean, std, scale, size)
    else:
        manifest = copy.deepcopy(manifest)
        if manifest["onnx"].get("precision", "fp32") != "fp32":
            raise BadInputError(f"{path}: is a {manifest['onnx']['precision']} artifact; start from the FP32 one")
        spec = manifest["input"]
        spec.update({k: [float(v) for v in val] for k, val in (("mean", mean), ("std", std)) if val is not None})
        if scale is not None:
            spec["scale"] = float(scale)
        if size is not None:
            spec["size"] = [int(s) for s in size]
    return Source(onnx_path, manifest, foreign, inputs[0].name, dims[0], sha256_file(onnx_path), default_opset(model) or 0)


def _foreign_manifest(onnx_path: Path, model, dims, mean, std, scale, size) -> dict:
    if mean is None or std is None:
        raise BadInputError(
            f"{onnx_path}: no {MANIFEST_NAME} beside this ONNX file, so the input normalisation is unknown; "
            "give it with --mean R,G,B --std R,G,B (on 0..1 pixels; --scale if not pixel/255)"
        )
    height, width = size or (dims[2], dims[3])
    if not height or not width:
        raise BadInputError(f"{onnx_path}: the input size is dynamic; give the size to calibrate at with --size H W")
    spec = input_spec(height, width, mean=mean, std=std)
    if scale is not None:
        spec["scale"] = float(scale)
    spec["name"] = model.graph.input[0].name
    output_dims = static_dims(model.graph.output[0])
    classes = default_class_names(output_dims[1]) if len(output_dims) == 4 and output_dims[1] else []
    return new_manifest(
        model={"name": onnx_path.name, "args": {}},
        classes=classes,
        input_spec=spec,
        output={"name": model.graph.output[0].name, "dtype": "float32", "layout": "NCHW"},
        onnx={"file": ONNX_NAME, "sha256": sha256_file(onnx_path), "precision": "fp32", "target": None},
    )


def output_dir_for(source: Source, output_dir: str | os.PathLike | None, precision: str) -> Path:
    """``output_dir``, or by default ``out`` -> ``out_int8`` (a foreign ``model.onnx`` -> ``model_int8`` beside it)."""
    if output_dir is None:
        if source.foreign:
            return source.onnx_path.with_name(f"{source.onnx_path.stem}_{precision}")
        folder = source.onnx_path.parent
        return folder.with_name(f"{folder.name}_{precision}")
    output_dir = Path(output_dir)
    if output_dir.resolve() == source.onnx_path.parent.resolve():
        raise BadInputError(f"{output_dir}: is the source model's folder; choose another output folder")
    return output_dir


def write_artifact(output_dir: Path, model_file: Path, source: Source, precision: str, target: str | None, sections: dict) -> dict:
    """Move ``model_file`` to ``output_dir/model.onnx`` and write its manifest; returns the manifest."""
    output_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = output_dir / ONNX_NAME
    with atomic_path(onnx_path) as tmp:
        os.replace(model_file, tmp)
    opset = default_opset(load_onnx(onnx_path, load_external_data=False))
    manifest = derived_manifest(
        source.manifest,
        onnx=onnx_file_section(onnx_path, opset=opset, precision=precision, target=target),
        parent_file={"onnx": str(source.onnx_path.resolve()), "sha256": source.sha256, "precision": "fp32"},
        versions=tool_versions(),
        **sections,
    )
    write_manifest(output_dir, manifest)
    return manifest


def tool_versions() -> dict:
    import onnxruntime

    return {"segdeploy": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
