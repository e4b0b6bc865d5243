"""The labels head's final bilinear upsample and argmax rewritten into one fused node.

A segmentation network ends by resizing C-channel low-resolution scores to the input's size
(DeepLabV3+ x4, DeepLabV3/FCN x8); the labels head then takes the argmax over C. The fused
``UpsampleArgmax`` node (:mod:`.onnx_node`) computes each output pixel's argmax straight from the
low-resolution scores, never writing the full-resolution tensor. :func:`fuse_upsample_argmax` finds
the path the labels head ends in,

    Resize(linear, 4-D, H and W only) -> [Cast to float32] -> [Softmax over C] -> ArgMax(axis 1) -> Cast(labels)

(a Cast in FP16 graphs; softmax keeps each pixel's argmax, so it may stand between, as may Identity
nodes), where no tensor
of the path but the labels feeds anything else, and replaces it with the node, which keeps the
Resize's coordinate convention and scales and takes its output size from the graph's image input.
It runs the graph at the check shapes to prove the Resize's output is the image's size (else the node,
whose size comes from the image, would compute something else) and refuses, with the reason, any
path it cannot reproduce exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import BadInputError
from ..onnx_io import ONNX_DOMAINS, default_opset
from ..outputs import Head
from .onnx_node import COORDINATE_MODES, add_opset, make_upsample_argmax_node

#: The label dtypes the fused node writes, by the Cast's ``to``.
_LABEL_CASTS = {TensorProto.UINT8: "uint8", TensorProto.INT32: "int32"}


@dataclass(frozen=True)
class Fusion:
    """What the rewrite did: the Resize it folded, its convention and scales (0: out / in)."""

    resize: str
    coordinate_transformation_mode: str
    scale_height: float
    scale_width: float
    #: The op types of the path the node replaced, in order.
    replaced: tuple[str, ...]
    labels_dtype: str


class NotFusable(BadInputError):
    """The graph's labels path cannot be computed by the fused node; the message says why."""


def fuse_upsample_argmax(model: onnx.ModelProto, labels: str, image: str, feeds: list[dict], *,
                         head: Head | None = None) -> tuple[onnx.ModelProto, Fusion]:
    """A copy of ``model`` whose ``labels`` output is computed by the fused node from the Resize's
    input, with ``image`` (the graph input) as its size reference; ``feeds`` (inputs at two shapes)
    are run to check the Resize's output size. Raises :class:`NotFusable` with the reason."""
    if head is not None and head.kind == "binary":
        raise NotFusable("--fused: the model's head is binary (one channel thresholded, no argmax to fuse); use "
                         "--head labels without --fused")
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    if labels not in outputs:
        raise NotFusable(f"--fused: the model has no output {labels!r}")

    def single_use(tensor: str) -> bool:
        return tensor not in outputs and len(consumers.get(tensor, [])) == 1

    path = []
    node = producers.get(labels)
    if node is None or node.op_type != "Cast" or node.domain not in ONNX_DOMAINS:
        raise NotFusable(f"--fused: output {labels!r} is not a Cast of an ArgMax (the labels head's ending)")
    labels_dtype = _LABEL_CASTS.get(_attribute(node, "to"))
    if labels_dtype is None:
        raise NotFusable(f"--fused: output {labels!r} is not uint8 or int32 labels")
    path.append(node)
    argmax = producers.get(node.input[0])
    if argmax is None or argmax.op_type != "ArgMax" or not single_use(argmax.output[0]):
        raise NotFusable(f"--fused: output {labels!r} is not computed by an ArgMax alone")
    if _attribute(argmax, "axis", 0) not in (1, -3) or _attribute(argmax, "keepdims", 1) != 0 \
            or _attribute(argmax, "select_last_index", 0) != 0:
        raise NotFusable("--fused: the ArgMax must take the first maximum over the classes (axis 1, keepdims 0, "
                         "select_last_index 0)")
    path.append(argmax)
    node = producers.get(argmax.input[0])
    while node is not None and node.op_type in ("Softmax", "Cast", "Identity") and node.domain in ONNX_DOMAINS:
        if not single_use(node.output[0]):
            raise NotFusable(f"--fused: {node.op_type} {node.name!r}'s output feeds more than the argmax")
        if node.op_type == "Cast" and _attribute(node, "to") != TensorProto.FLOAT:
            raise NotFusable(f"--fused: Cast {node.name!r} before the argmax casts to something other than float32")
        if node.op_type == "Softmax" and not _softmax_over_classes(node, model):
            raise NotFusable(f"--fused: Softmax {node.name!r} is not over the classes, so it may change the argmax")
        path.append(node)
        node = producers.get(node.input[0])
    resize = node
    if resize is None or resize.op_type not in ("Resize", "Upsample") or resize.domain not in ONNX_DOMAINS:
        found = "a graph input" if resize is None else f"{resize.op_type} {resize.name!r}"
        raise NotFusable(f"--fused: the scores reach the argmax from {found}, not from a bilinear Resize: there is no "
                         "upsample to fuse")
    if not single_use(resize.output[0]):
        raise NotFusable(f"--fused: Resize {resize.name!r}'s output feeds more than the argmax")
    mode, scales = _resize_convention(resize, model)
    path.append(resize)

    scores = resize.input[0]
    _check_sizes(model, resize, image, feeds)
    return _rewrite(model, path, scores, image, labels, mode, scales, labels_dtype), Fusion(
        resize.name, mode, scales[0], scales[1], tuple(n.op_type for n in reversed(path)), labels_dtype)


def _attribute(node, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _softmax_over_classes(node, model) -> bool:
    """Whether every pixel's scores share one denominator: softmax over axis 1 (opset >= 13), or
    over the flattened axes from 0 or 1 (older opsets)."""
    opset = default_opset(model) or 13
    axis = _attribute(node, "axis", -1 if opset >= 13 else 1)
    return axis in (1, -3) if opset >= 13 else axis in (0, 1, -3, -4)


def _resize_convention(resize, model) -> tuple[str, tuple[float, float]]:
    """The Resize's coordinate mode and its (height, width) scales (0, 0 for sizes); NotFusable
    for what the kernels do not reproduce."""
    name = f"{resize.op_type} {resize.name!r}"
    opset = default_opset(model) or 11
    if resize.op_type == "Upsample" or opset < 11:
        raise NotFusable(f"--fused: {name} is an opset-{opset} upsample (asymmetric, before Resize had coordinate "
                         "modes); convert the model to opset 11 or newer first")
    mode = _attribute(resize, "mode", "nearest")
    if mode != "linear":
        raise NotFusable(f"--fused: {name} resizes with mode {mode!r}; the fused kernel interpolates bilinearly (linear)")
    coordinate = _attribute(resize, "coordinate_transformation_mode", "half_pixel")
    if coordinate not in COORDINATE_MODES:
        raise NotFusable(f"--fused: {name} uses coordinate_transformation_mode {coordinate!r}; the fused kernel "
                         f"implements {', '.join(COORDINATE_MODES)}")
    for attribute, default, what in (("antialias", 0, "antialiases"), ("exclude_outside", 0, "excludes outside samples"),
                                     ("keep_aspect_ratio_policy", "stretch", "keeps the aspect ratio")):
        if _attribute(resize, attribute, default) != default:
            raise NotFusable(f"--fused: {name} {what} ({attribute}={_attribute(resize, attribute)!r}); the fused "
                             "kernel interpolates plainly")
    axes = _attribute(resize, "axes")
    if axes is not None and sorted(a % 4 for a in axes) != [2, 3]:
        raise NotFusable(f"--fused: {name} resizes axes {list(axes)}; the fused kernel resizes height and width only")
    scales_name = resize.input[2] if len(resize.input) > 2 else ""
    sizes_name = resize.input[3] if len(resize.input) > 3 else ""
    if sizes_name:
        return coordinate, (0.0, 0.0)
    scales = _constant(model, scales_name)
    if scales is None:
        raise NotFusable(f"--fused: {name}'s scales are computed in the graph; the fused node needs them constant")
    scales = [float(s) for s in np.asarray(scales, np.float64).reshape(-1)]
    if len(scales) == 4:
        if scales[:2] != [1.0, 1.0]:
            raise NotFusable(f"--fused: {name} scales the batch or the classes ({scales}); the fused kernel resizes "
                             "height and width only")
        scales = scales[2:]
    if len(scales) != 2:
        raise NotFusable(f"--fused: {name} is not a 4-D resize (scales {scales})")
    return coordinate, (scales[0], scales[1])


def _constant(model, name: str):
    """The value of ``name`` if it is an initializer or a Constant node's output, else None."""
    if not name:
        return None
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value.t)
    return None


def _check_sizes(model: onnx.ModelProto, resize, image: str, feeds: list[dict]) -> None:
    """Run the graph at each feed and check that the Resize maps (N, C, h, w) to (N, C, H, W) of the image."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = {"in": "__fuse_probe_scores_shape", "out": "__fuse_probe_resized_shape", "image": "__fuse_probe_image_shape"}
    for key, tensor in (("in", resize.input[0]), ("out", resize.output[0]), ("image", image)):
        probe.graph.node.append(helper.make_node("Shape", [tensor], [names[key]]))
        probe.graph.output.append(helper.make_tensor_value_info(names[key], TensorProto.INT64, None))
    from ..backend.onnxrt.runner import with_segdeploy_ops

    options = ort.SessionOptions()
    with _temporary_file(probe) as path:
        session = ort.InferenceSession(with_segdeploy_ops(path, options), options, providers=["CPUExecutionProvider"])
    for feed in feeds:
        scores_shape, resized, image_shape = (tuple(int(v) for v in s) for s in session.run(list(names.values()), feed))
        if len(scores_shape) != 4 or len(image_shape) != 4:
            raise NotFusable(f"--fused: Resize {resize.name!r} is not a 4-D resize of the image's size")
        if resized[:2] != scores_shape[:2]:
            raise NotFusable(f"--fused: Resize {resize.name!r} resizes the batch or the classes ({list(scores_shape)} -> "
                             f"{list(resized)}); the fused kernel resizes height and width only")
        if resized[2:] != image_shape[2:]:
            raise NotFusable(f"--fused: Resize {resize.name!r} resizes to {resized[2]}x{resized[3]}, not the image's "
                             f"{image_shape[2]}x{image_shape[3]} (at input {list(image_shape)}); the fused node's output "
                             "size is the image's")


class _temporary_file:
    """A model written to a temporary file (ONNX Runtime reads large graphs from files only)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model

    def __enter__(self):
        import tempfile
        from pathlib import Path

        self.folder = tempfile.TemporaryDirectory(prefix="segdeploy-fuse-")
        path = Path(self.folder.name) / "probe.onnx"
        onnx.save(self.model, str(path))
        return path

    def __exit__(self, *exc):
        self.folder.cleanup()


def _rewrite(model: onnx.ModelProto, path: list, scores: str, image: str, labels: str, mode: str,
             scales: tuple[float, float], labels_dtype: str) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    replaced = {out for node in path for out in node.output}
    keep = [_copy(node) for node in graph.node if not set(node.output) & replaced]
    # The node goes where the Resize was: its inputs (the scores, the image) are ready there.
    position = sum(1 for node in graph.node[:_index(graph, path[-1])] if not set(node.output) & replaced)
    new_nodes = []
    scores_type = _elem_type(result, scores)
    node_scores = scores
    if scores_type != TensorProto.FLOAT:
        # onnxruntime-extensions' Python ops take no float16: cast the low-resolution scores (exact).
        node_scores = f"{scores}_float32"
        new_nodes.append(helper.make_node("Cast", [scores], [node_scores], name="upsample_argmax_scores_float32",
                                          to=TensorProto.FLOAT))
    # The node writes int32 labels, cast to uint8 after it where the classes fit: TensorRT gives a
    # plugin no uint8 output (IPluginV3OneBuild::getOutputDataTypes), so the plugin writes int32 and
    # a uint8 graph output must come from a Cast; ONNX Runtime runs the same graph.
    node_labels = labels if labels_dtype == "int32" else f"{labels}_int32"
    new_nodes.append(make_upsample_argmax_node(node_scores, image, node_labels, coordinate_transformation_mode=mode,
                                               scale_height=scales[0], scale_width=scales[1], labels_dtype="int32"))
    if node_labels != labels:
        new_nodes.append(helper.make_node("Cast", [node_labels], [labels], name="upsample_argmax_labels_uint8",
                                          to=TensorProto.UINT8))
    del graph.node[:]
    graph.node.extend(keep[:position] + new_nodes + keep[position:])
    _remove_dead(result)
    add_opset(result)
    return result


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _index(graph, node) -> int:
    return next(i for i, candidate in enumerate(graph.node) if list(candidate.output) == list(node.output))


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of tensor ``name`` (float32 unless shape inference says otherwise)."""
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if value.name == name:
            return value.type.tensor_type.elem_type
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # graphs shape inference cannot follow: the type is checked by the runtime
        return TensorProto.FLOAT
    for value in inferred.graph.value_info:
        if value.name == name:
            return value.type.tensor_type.elem_type
    return TensorProto.FLOAT


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (the Resize's size computation), unused initializers
    and stale shape annotations."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {name for node in graph.node for name in node.input}
        dead = [node for node in graph.node if not any(out in used for out in node.output if out)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = outputs | {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    produced = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
    for value in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(value)
