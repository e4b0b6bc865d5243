"""A user's own ONNX file as a segdeploy artifact: what the graph says, completed by what the user says.

The graph tells the input's name, dims (fixed or dynamic), channel count and opset, the outputs
and, from its channel count and the op that produces it, what the prediction output holds
(``outputs.Head``). It cannot tell the input normalisation, the class names, or which of several
outputs is the prediction: those come from ``ModelOptions`` (the command line). ``describe_onnx``
makes the manifest every command works from; ``adopt`` writes it beside the file, so that later
commands need no options at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import BadInputError
from .fileio import sha256_file
from .manifest import MANIFEST_NAME, new_manifest, read_manifest, resolve_artifact, write_manifest
from .onnx_io import default_opset, elem_type, graph_inputs, load_onnx, tensor_dims
from .outputs import ACTIVATION_OPS, KINDS, Head
from .preprocess import COLORS, input_spec

#: Integer element types a label-map output may have (int64 only from graphs made elsewhere).
LABEL_TYPES = (onnx.TensorProto.UINT8, onnx.TensorProto.INT32, onnx.TensorProto.INT64)

#: Size at which a graph is run once when its output's channel count cannot be read from it.
PROBE_SIZE = (64, 64)


@dataclass(frozen=True)
class ModelOptions:
    """What the graph cannot say, from the command line: overrides where a manifest exists."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    size: tuple[int, int] | None = None
    color: str | None = None  # RGB, BGR, GRAY or tensor (default: by channel count)
    output: str | None = None  # the prediction output (default: the first)
    kind: str | None = None  # multiclass or binary (default: by channel count)
    threshold: float | None = None
    classes: tuple[str, ...] | None = None
    #: Drop the outputs other than the prediction from what later steps write.
    drop_side_outputs: bool = False

    def given(self) -> bool:
        return any(v not in (None, False) for v in vars(self).values())


@dataclass(frozen=True)
class GraphFacts:
    """What segdeploy reads from a graph before any option is applied."""

    input_name: str
    input_dims: list  # int where fixed, str/None where dynamic
    channels: int | None
    outputs: list[str]
    output_channels: dict  # output name -> channel count (None: unknown)
    output_activation: dict  # output name -> "sigmoid", "softmax" or "none"
    opset: int | None
    fp16_weight_casts: int  # float16 initializers that feed a Cast to float32
    weight_dtypes: dict
    #: Outputs that are label maps already (integer, (N, H, W)): name -> numpy dtype name.
    label_outputs: dict = field(default_factory=dict)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        height, width = self.input_dims[2], self.input_dims[3]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None

    @property
    def fixed_batch(self) -> int | None:
        return self.input_dims[0] if isinstance(self.input_dims[0], int) else None


def read_graph(onnx_path: Path, model: onnx.ModelProto, probe_size: tuple[int, int] | None = None) -> GraphFacts:
    """The facts of ``model``; BadInputError when its input is not one float32 NCHW tensor."""
    inputs = graph_inputs(model)
    images = [i for i in inputs if len(tensor_dims(i)) == 4]
    if len(inputs) != 1 or not images:
        described = ", ".join(f"{i.name} {tensor_dims(i)}" for i in inputs) or "none"
        raise BadInputError(f"{onnx_path}: expected one 4-D image input (N, C, H, W); the graph has: {described}")
    image = images[0]
    if elem_type(image) != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type(image)).name
        raise BadInputError(f"{onnx_path}: input {image.name!r} is {dtype}; segdeploy feeds float32 NCHW tensors "
                            "(add a Cast at the graph's start, or export with a float32 input)")
    dims = tensor_dims(image)
    if dims[3] in (1, 3) and dims[1] not in (1, 3, None) or (dims[3] == 3 and not isinstance(dims[1], int)):
        raise BadInputError(f"{onnx_path}: input {image.name!r} {dims} looks channels-last (NHWC); segdeploy feeds "
                            "NCHW: export the model with a channels-first input")
    channels = dims[1] if isinstance(dims[1], int) else None
    shaped = _with_shapes(model)
    producers = {out: node for node in shaped.graph.node for out in node.output}
    outputs = [o.name for o in shaped.graph.output]
    output_channels, label_outputs = {}, {}
    for value in shaped.graph.output:
        out_dims = tensor_dims(value)
        if elem_type(value) in LABEL_TYPES and len(out_dims) == 3:  # a deployment head's label map (N, H, W)
            label_outputs[value.name] = onnx.helper.tensor_dtype_to_np_dtype(elem_type(value)).name
            output_channels[value.name] = 1
            continue
        output_channels[value.name] = out_dims[1] if len(out_dims) == 4 and isinstance(out_dims[1], int) else None
    if None in output_channels.values():
        output_channels.update(_probe_channels(onnx_path, image.name, dims, probe_size))
    casts = _fp16_weight_casts(model)
    dtypes = {}
    for tensor in model.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        dtypes[name] = dtypes.get(name, 0) + 1
    return GraphFacts(image.name, dims, channels, outputs, output_channels,
                      {o: _activation(o, producers) for o in outputs}, default_opset(model), casts, dtypes,
                      label_outputs)  # fmt: skip


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes where ONNX can infer them (unchanged where it cannot)."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom domains, or graphs shape inference cannot follow
        return model


def _activation(output: str, producers: dict) -> str:
    """The probability function that produces ``output`` (through Identity/Cast/Reshape), or "none"."""
    node = producers.get(output)
    while node is not None and node.op_type in ("Identity", "Cast", "Reshape", "Resize", "Upsample"):
        node = producers.get(node.input[0])
    return ACTIVATION_OPS.get(node.op_type, "none") if node is not None else "none"



def _probe_channels(onnx_path: Path, input_name: str, dims: list, probe_size) -> dict:
    """Run the graph once on zeros to read output channel counts the graph does not state."""
    import numpy as np

    from .backend.onnxrt.runner import SessionFromOnnx

    shape = [d if isinstance(d, int) else s for d, s in zip(dims, (1, dims[1] or 3, *(probe_size or PROBE_SIZE)))]
    session = SessionFromOnnx(onnx_path)()
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {input_name: np.zeros(shape, np.float32)})
    except Exception as exc:
        raise BadInputError(f"{onnx_path}: the output shapes are not in the graph and a run at {shape} failed ({exc}); "
                            "give --size H W") from None  # fmt: skip
    return {n: (int(v.shape[1]) if v.ndim == 4 else None) for n, v in zip(names, values)}


def _fp16_weight_casts(model: onnx.ModelProto) -> int:
    """How many float16 initializers feed a Cast to float32: FP16-stored weights of an FP32 graph."""
    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    return sum(1 for n in model.graph.node if n.op_type == "Cast" and n.input and n.input[0] in fp16
               and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute))  # fmt: skip


def describe_onnx(onnx_path: str | os.PathLike, options: ModelOptions = ModelOptions(), *,
                  need_normalisation: bool = True, model: onnx.ModelProto | None = None,
                  adopting: bool = False) -> dict:  # fmt: skip
    """The manifest of a user's ONNX file: the graph's facts completed by ``options``.

    With ``need_normalisation`` False (timing, linting) a missing mean/std is taken as 0/1 and
    recorded as unknown (``input.normalisation_known`` false) instead of being an error.
    """
    onnx_path = Path(onnx_path)
    model = model or load_onnx(onnx_path, load_external_data=False)
    facts = read_graph(onnx_path, model, options.size)
    channels = facts.channels or (len(options.mean) if options.mean else None)
    color = _color(onnx_path, facts, channels, options)
    known = True
    if color == "tensor":
        if options.mean or options.std:
            raise BadInputError(f"{onnx_path}: a tensor input takes samples already normalised (.npy); drop --mean/--std")
        mean, std = (), ()
    elif options.mean is None or options.std is None:
        if need_normalisation:
            raise BadInputError(
                f"{onnx_path}: no {MANIFEST_NAME} beside this ONNX file, so its input normalisation is unknown; give "
                f"--mean and --std ({channels or 'one per'} channel values, on pixels scaled by --scale, default 1/255)"
                + ("" if adopting else f", or record them once with: segdeploy adopt {onnx_path} --mean ... --std ...")
            )
        known = False
        mean, std = (0.0,) * (channels or 3), (1.0,) * (channels or 3)
    else:
        mean, std = options.mean, options.std
        if len(mean) != len(std) or (channels and len(mean) != channels):
            raise BadInputError(f"{onnx_path}: input {facts.input_name!r} has {channels} channel(s); --mean and --std "
                                f"give {len(mean)} and {len(std)} values")  # fmt: skip
    size = options.size or facts.fixed_size
    if facts.fixed_size and options.size and tuple(options.size) != facts.fixed_size:
        raise BadInputError(f"{onnx_path}: the graph's input is fixed at {facts.fixed_size[0]}x{facts.fixed_size[1]}; "
                            f"--size {options.size[0]} {options.size[1]} cannot be fed to it")  # fmt: skip
    spec = input_spec(*(size or (1, 1)), mean=mean, std=std, color=color)
    spec.update(name=facts.input_name, channels=channels, size=list(size) if size else [None, None])
    if options.scale is not None:
        spec["scale"] = float(options.scale)
    if color == "tensor":
        spec["scale"] = 1.0
    if not known:
        spec["normalisation_known"] = False

    prediction = options.output or facts.outputs[0]
    if prediction not in facts.outputs:
        raise BadInputError(f"{onnx_path}: no output named {prediction!r}; its outputs are {', '.join(facts.outputs)}")
    side = [o for o in facts.outputs if o != prediction]
    if prediction in facts.label_outputs:
        head, classes = _labels_head(onnx_path, prediction, options, need_normalisation)
        layout = {"dtype": facts.label_outputs[prediction], "layout": "NHW"}
    else:
        head = _head(onnx_path, facts, prediction, options)
        out_channels = facts.output_channels.get(prediction)
        classes = list(options.classes) if options.classes else _default_classes(head, out_channels)
        if out_channels and head.kind == "multiclass" and len(classes) != out_channels:
            raise BadInputError(f"{onnx_path}: {len(classes)} class names given for output {prediction!r} with {out_channels} channels")
        layout = {"dtype": "float32", "layout": "NCHW"}
    output = {"name": prediction, **layout, "all": facts.outputs, **head.to_manifest(),
              "side_outputs": side, "drop_side_outputs": bool(options.drop_side_outputs and side)}  # fmt: skip
    onnx_section = {"file": onnx_path.name, "sha256": sha256_file(onnx_path), "bytes": onnx_path.stat().st_size,
                    "opset": facts.opset, "precision": _precision(facts), "target": None}  # fmt: skip
    if facts.fp16_weight_casts:
        onnx_section["fp16_weight_casts"] = facts.fp16_weight_casts
    return new_manifest(
        model={"name": onnx_path.stem, "args": {}, "init": "adopted ONNX file"},
        classes=classes,
        input_spec=spec,
        output=output,
        onnx=onnx_section,
        dynamic_axes={axis: i for i, axis in enumerate(("batch", None, "height", "width"))
                      if axis and not isinstance(facts.input_dims[i], int)},  # fmt: skip
    )


def _color(onnx_path: Path, facts: GraphFacts, channels: int | None, options: ModelOptions) -> str:
    if options.color is None:
        return {3: "RGB", 1: "GRAY"}.get(channels, "tensor")
    color = options.color.upper() if options.color.lower() != "tensor" else "tensor"
    if color not in COLORS:
        raise BadInputError(f"--color {options.color!r}: choose from {', '.join(COLORS)}")
    wanted = {"RGB": 3, "BGR": 3, "GRAY": 1}.get(color)
    if wanted and channels and channels != wanted:
        raise BadInputError(f"{onnx_path}: --color {color} gives {wanted} channel(s) but input {facts.input_name!r} takes {channels}")
    return color


def _head(onnx_path: Path, facts: GraphFacts, prediction: str, options: ModelOptions) -> Head:
    channels = facts.output_channels.get(prediction)
    head = Head.detect(channels, facts.output_activation.get(prediction, "none"), options.threshold)
    if options.kind is None or options.kind == head.kind:
        return head
    if options.kind not in KINDS:
        raise BadInputError(f"--kind {options.kind!r}: choose from {', '.join(KINDS)}")
    if options.kind == "binary" and channels not in (1, None):
        raise BadInputError(f"{onnx_path}: output {prediction!r} has {channels} channels; a binary head has one")
    if options.kind == "multiclass" and channels == 1:
        raise BadInputError(f"{onnx_path}: output {prediction!r} has one channel: it can only be read as binary")
    return Head.detect(1 if options.kind == "binary" else 2, head.activation, options.threshold)


def _labels_head(onnx_path: Path, prediction: str, options: ModelOptions, need_classes: bool) -> tuple[Head, list[str]]:
    """An output that is a label map already: read as it is; only ``--classes`` can say how many classes it has."""
    binary = options.kind == "binary"
    if options.classes:
        classes = list(options.classes)
    elif binary:
        classes = ["background", "foreground"]
    elif need_classes:
        raise BadInputError(f"{onnx_path}: output {prediction!r} is a label map (class ids, N x H x W); the graph cannot "
                            "say how many classes there are: give --classes FILE (one name per line)")
    else:
        classes = []
    return Head("binary" if binary else "multiclass", form="labels"), classes


def _default_classes(head: Head, channels: int | None) -> list[str]:
    if head.kind == "binary":
        return ["background", "foreground"]
    return [f"class_{i}" for i in range(channels or 0)]


def _precision(facts: GraphFacts) -> str:
    """FP32 unless the graph computes in reduced precision; FP16 weights behind Casts still compute in FP32."""
    stored = facts.weight_dtypes
    if stored.get("int8") or stored.get("uint8"):
        return "int8"
    if stored.get("float16", 0) > facts.fp16_weight_casts:
        return "fp16"
    return "fp32"


def artifact_manifest(path: str | os.PathLike, options: ModelOptions = ModelOptions(), *,
                      need_normalisation: bool = True) -> tuple[Path, dict, bool]:  # fmt: skip
    """(ONNX path, manifest, adopted-on-the-fly) of an artifact folder or ONNX file.

    A file without a manifest beside it is described from its graph and ``options``; where a
    manifest exists, ``options`` override its normalisation and output reading.
    """
    onnx_path, manifest = resolve_artifact(path)
    if manifest is None:
        return onnx_path, describe_onnx(onnx_path, options, need_normalisation=need_normalisation), True
    return onnx_path, apply_options(manifest, options), False


def apply_options(manifest: dict, options: ModelOptions) -> dict:
    """A copy of ``manifest`` with the normalisation and output reading that ``options`` override."""
    import copy

    manifest = copy.deepcopy(manifest)
    spec = manifest["input"]
    for key in ("mean", "std"):
        value = getattr(options, key)
        if value is not None:
            if len(value) != len(spec[key]):
                raise BadInputError(f"--{key}: the model's input has {len(spec[key])} channel(s); {len(value)} value(s) given")
            spec[key] = [float(v) for v in value]
    if options.scale is not None:
        spec["scale"] = float(options.scale)
    if options.size is not None:
        spec["size"] = [int(s) for s in options.size]
    output = manifest["output"]
    if options.output is not None and options.output != output["name"]:
        raise BadInputError(f"--output-name {options.output}: the manifest names {output['name']!r} as the prediction; "
                            "run segdeploy adopt again to change it")  # fmt: skip
    if options.threshold is not None:
        if Head.from_manifest(manifest).kind != "binary":
            raise BadInputError("--threshold applies to one-channel (binary) outputs only")
        output["threshold"] = float(options.threshold)
    if options.drop_side_outputs:
        output["drop_side_outputs"] = bool(output.get("side_outputs"))
    return manifest


def adopt(path: str | os.PathLike, options: ModelOptions) -> tuple[Path, dict]:
    """Write ``manifest.json`` beside the ONNX file at ``path``; returns (its path, the manifest).

    Refuses to overwrite a manifest that belongs to another file of the same folder.
    """
    onnx_path = Path(path)
    if onnx_path.is_dir():
        raise BadInputError(f"{onnx_path}: give the ONNX file itself, not a folder")
    if not onnx_path.is_file():
        raise BadInputError(f"{onnx_path}: no such file")
    existing = onnx_path.parent / MANIFEST_NAME
    if existing.is_file():
        other = read_manifest(existing)["onnx"].get("file")
        if other != onnx_path.name:
            raise BadInputError(f"{existing}: already describes {other}; put {onnx_path.name} in a folder of its own")
    manifest = describe_onnx(onnx_path, options, adopting=True)
    return write_manifest(onnx_path.parent, manifest), manifest
