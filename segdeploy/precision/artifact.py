"""The FP32 model a precision step starts from, and the artifact folder it writes.

The source is a segdeploy artifact (folder or its ``model.onnx``, with ``manifest.json``) or any
ONNX file a user already has, described by ``adopt.describe_onnx`` from its graph and the command
line (normalisation, the prediction output, how to read it). The
output is an artifact folder of the same form as ``segdeploy export`` writes, its manifest
naming the parent by sha256, so ``bench`` and the TensorRT build treat all precisions alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import onnx

from .. import __version__
from ..adopt import ModelOptions, artifact_manifest, read_graph
from ..errors import BadInputError
from ..fileio import atomic_path, sha256_file
from ..manifest import ONNX_NAME, derived_manifest, onnx_file_section, write_manifest
from ..onnx_io import default_opset, elem_type, load_onnx
from ..outputs import Head


@dataclass
class Source:
    onnx_path: Path
    manifest: dict  # the parent's, or one described from the graph and the command line for a bare ONNX file
    foreign: bool
    input_name: str
    #: The graph's fixed batch size, or None when the batch dimension is dynamic.
    batch: int | None
    sha256: str
    opset: int
    #: Every graph output, by name: the Head it is read with (the prediction's from the manifest,
    #: side outputs' from their channel count and the op producing them).
    heads: dict = field(default_factory=dict)
    #: The graph's own fixed (H, W), or None when its input size is dynamic.
    fixed_size: tuple[int, int] | None = None

    @property
    def spec(self) -> dict:
        return self.manifest["input"]

    @property
    def prediction(self) -> str:
        return self.manifest["output"]["name"]

    @property
    def head(self) -> Head:
        return Head.from_manifest(self.manifest)

    @property
    def side_outputs(self) -> list[str]:
        return [name for name in self.heads if name != self.prediction]

    @property
    def drop_side_outputs(self) -> bool:
        return bool(self.manifest["output"].get("drop_side_outputs")) and bool(self.side_outputs)


def load_source(path: str | os.PathLike, options: ModelOptions = ModelOptions()) -> Source:
    """Open an artifact or a user's bare ONNX file (described by ``adopt.describe_onnx``);
    ``options`` (the command line) override the manifest's normalisation and output reading."""
    onnx_path, manifest, adopted = artifact_manifest(path, options)
    model = load_onnx(onnx_path, load_external_data=False)
    facts = read_graph(onnx_path, model, options.size or _known_size(manifest["input"]))
    if manifest["onnx"].get("precision", "fp32") != "fp32":
        raise BadInputError(f"{path}: is a {manifest['onnx']['precision']} artifact; start from the FP32 one")
    prediction = manifest["output"]["name"]
    if prediction not in facts.outputs:
        raise BadInputError(f"{onnx_path}: the manifest's prediction output {prediction!r} is not in the graph "
                            f"(its outputs: {', '.join(facts.outputs)})")  # fmt: skip
    outputs = {o.name: o for o in model.graph.output}
    head = Head.from_manifest(manifest)
    # A label map (a "labels" head) is uint8 or int32 in an FP32 model too.
    allowed = (onnx.TensorProto.FLOAT,) if head.has_scores else (onnx.TensorProto.UINT8, onnx.TensorProto.INT32)
    if elem_type(outputs[prediction]) not in allowed:
        expected = "float32" if head.has_scores else "a uint8 or int32 label map (its manifest's head is 'labels')"
        raise BadInputError(f"{onnx_path}: expects an FP32 model; its output {prediction!r} is not {expected}")
    heads = {name: head if name == prediction else Head.detect(facts.output_channels.get(name), facts.output_activation.get(name, "none"))
             for name in facts.outputs}  # fmt: skip
    return Source(onnx_path, manifest, adopted, facts.input_name, facts.fixed_batch, sha256_file(onnx_path),
                  facts.opset or 0, heads, facts.fixed_size)  # fmt: skip


def _known_size(spec: dict) -> tuple[int, int] | None:
    size = spec.get("size") or [None, None]
    return tuple(size) if all(size) else None


def output_dir_for(source: Source, output_dir: str | os.PathLike | None, precision: str) -> Path:
    """``output_dir``, or by default ``out`` -> ``out_int8`` (a user's ``theirs.onnx``, adopted or not,
    -> ``theirs_int8`` beside it)."""
    if output_dir is None:
        if source.foreign or source.onnx_path.name != ONNX_NAME:
            return source.onnx_path.with_name(f"{source.onnx_path.stem}_{precision}")
        folder = source.onnx_path.parent
        return folder.with_name(f"{folder.name}_{precision}")
    output_dir = Path(output_dir)
    if output_dir.resolve() == source.onnx_path.parent.resolve():
        raise BadInputError(f"{output_dir}: is the source model's folder; choose another output folder")
    return output_dir


def write_artifact(output_dir: Path, model_file: Path, source: Source, precision: str, target: str | None, sections: dict,
                   *, outputs: list[str] | None = None, onnx_fields: dict | None = None) -> dict:  # fmt: skip
    """Move ``model_file`` to ``output_dir/model.onnx`` and write its manifest; returns the manifest.

    ``outputs``: the graph outputs the written model has (fewer than the parent's when side outputs
    were dropped); ``onnx_fields``: more of the ``onnx`` section (e.g. ``opset_conversion``)."""
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
    manifest["onnx"].pop("fp16_weight_casts", None)  # folded: the written graph has its weights as initializers
    manifest["onnx"].update(onnx_fields or {})
    if outputs is not None:
        output = manifest["output"]
        output["all"] = list(outputs)
        output["side_outputs"] = [o for o in outputs if o != output["name"]]
    write_manifest(output_dir, manifest)
    return manifest


def tool_versions() -> dict:
    import onnxruntime

    return {"segdeploy": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
