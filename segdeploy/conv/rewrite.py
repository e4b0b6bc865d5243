"""The rewrite of depthwise convolutions into segdeploy's nodes: find the candidates, apply a chosen few.

:func:`find_candidates` matches, on any ONNX graph, a ``Conv`` with group == C_in == C_out (one 2-D
filter per channel, kernel <= 7, constant weight and bias) and the activation that alone reads it
(``Relu``, ``Clip`` with constant bounds, ``HardSwish``) as a ``DepthwiseConv`` candidate; where the
(activated) depthwise result's single reader is a 1x1 ``Conv`` (group 1, stride 1, no padding,
constant weights) with its own activation, also as a ``SeparableConv`` candidate. Every other grouped
or dilated ``Conv`` is listed as unmatched, with the reason. :func:`apply_rewrite` replaces the chosen
candidates; float16 graphs feed the (float32) nodes through Casts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .kernel import FLT_MAX, Activation, ConvGeometry
from .onnx_node import add_opset, make_depthwise_node, make_separable_node

MAX_KERNEL = 7
DEPTHWISE, SEPARABLE = "depthwise", "separable"


@dataclass(frozen=True)
class Candidate:
    """A run of nodes one segdeploy node can replace."""

    kind: str  # DEPTHWISE or SEPARABLE
    #: The depthwise Conv's name: the layer this candidate is one option for.
    layer: str
    #: The nodes replaced, in graph order (depthwise Conv, activation, 1x1 Conv, activation).
    nodes: tuple[str, ...]
    input: str
    output: str
    channels: int
    geometry: ConvGeometry
    activation: Activation
    weight: str
    bias: str
    out_channels: int | None = None
    pointwise_weight: str = ""
    pointwise_bias: str = ""
    pointwise_activation: Activation = Activation()
    float16: bool = False

    @property
    def name(self) -> str:
        return f"{self.layer}:{self.kind}"

    def to_json(self) -> dict:
        g = self.geometry
        data = {"layer": self.layer, "kind": self.kind, "nodes": list(self.nodes), "channels": self.channels,
                "kernel": list(g.kernel), "strides": list(g.strides), "dilations": list(g.dilations), "pads": list(g.pads),
                "activation": self.activation.kind}
        if self.kind == SEPARABLE:
            data.update(out_channels=self.out_channels, pointwise_activation=self.pointwise_activation.kind)
        return data


@dataclass(frozen=True)
class Unmatched:
    node: str
    reason: str

    def to_json(self) -> dict:
        return {"node": self.node, "reason": self.reason}


@dataclass
class Matches:
    candidates: list[Candidate] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)

    def layers(self) -> dict[str, list[Candidate]]:
        """The candidates by depthwise layer (the depthwise one first)."""
        by_layer: dict[str, list[Candidate]] = defaultdict(list)
        for candidate in self.candidates:
            by_layer[candidate.layer].append(candidate)
        return dict(by_layer)


class _Graph:
    """Indexes of a graph: producers, consumers, constants."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self.constants = {init.name: init for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
        self.producers = {out: node for node in graph.node for out in node.output}

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        """The single node reading ``name``, when nothing else (no graph output) does."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _activation(graph: _Graph, node: onnx.NodeProto | None, opset: int) -> Activation | None:
    """The activation ``node`` computes, None when it is not one the kernels fuse."""
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return Activation("clip", 0.0, FLT_MAX)
    if node.op_type == "HardSwish":
        return Activation("hardswish")
    if node.op_type == "Clip":
        if opset < 11:
            attrs = _attrs(node)
            lower, upper = attrs.get("min", -FLT_MAX), attrs.get("max", FLT_MAX)
        else:
            bounds = []
            for i, default in ((1, -FLT_MAX), (2, FLT_MAX)):
                if len(node.input) <= i or not node.input[i]:
                    bounds.append(default)
                    continue
                value = graph.array(node.input[i])
                if value is None or value.size != 1:
                    return None
                bounds.append(float(value.reshape(())))
            lower, upper = bounds
        lower, upper = max(float(lower), -FLT_MAX), min(float(upper), FLT_MAX)
        return Activation("clip", lower, upper) if lower <= upper else None
    return None


def _geometry(node: onnx.NodeProto, kernel: tuple[int, int]) -> tuple[ConvGeometry | None, str]:
    attrs = _attrs(node)
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif strides == (1, 1):  # SAME_*: the total padding depends on the input size only when strided
        total = [d * (k - 1) for d, k in zip(dilations, kernel)]
        small = [t // 2 for t in total]
        big = [t - s for t, s in zip(total, small)]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        pads = (begin[0], begin[1], end[0], end[1])
    else:
        return None, f"auto_pad {auto_pad} with stride {strides}: the padding depends on the input size"
    return ConvGeometry(kernel, strides, dilations, pads), ""


def _match_depthwise(graph: _Graph, node: onnx.NodeProto, opset: int) -> tuple[Candidate | None, str]:
    attrs = _attrs(node)
    weight = graph.array(node.input[1]) if len(node.input) > 1 else None
    group = int(attrs.get("group", 1))
    if weight is None:
        producer = graph.producers.get(node.input[1])
        how = f" (computed by {producer.op_type}{': an INT8 QDQ graph' if producer.op_type == 'DequantizeLinear' else ''})" \
            if producer is not None else ""
        return None, f"the weight is not a constant{how}"
    if weight.ndim != 4:
        return None, f"not a 2-D convolution (weight of rank {weight.ndim})"
    if group == 1:
        return None, "dense convolution (group 1)"
    if weight.shape[1] != 1 or weight.shape[0] != group:
        return None, (f"grouped convolution with {weight.shape[1]} input channels per group and {weight.shape[0]} outputs "
                      f"for {group} groups (the kernels take one filter per channel)")
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    if max(kernel) > MAX_KERNEL:
        return None, f"kernel {kernel[0]}x{kernel[1]} (the kernels take up to {MAX_KERNEL}x{MAX_KERNEL})"
    if weight.dtype not in (np.float32, np.float16):
        return None, f"{weight.dtype} weights"
    bias = ""
    if len(node.input) > 2 and node.input[2]:
        if graph.array(node.input[2]) is None:
            return None, "the bias is not a constant"
        bias = node.input[2]
    geometry, why = _geometry(node, kernel)
    if geometry is None:
        return None, why
    if min(geometry.pads) < 0:
        return None, "negative padding"
    nodes, output = [node.name], node.output[0]
    activation = _activation(graph, graph.only_reader(output), opset)
    if activation is not None:
        reader = graph.only_reader(output)
        nodes.append(reader.name)
        output = reader.output[0]
    return Candidate(DEPTHWISE, node.name, tuple(nodes), node.input[0], output, group, geometry,
                     activation or Activation(), node.input[1], bias, float16=weight.dtype == np.float16), ""


def _match_separable(graph: _Graph, depthwise: Candidate, opset: int) -> Candidate | None:
    node = graph.only_reader(depthwise.output)
    if node is None or node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[0] != depthwise.output:
        return None
    attrs = _attrs(node)
    weight = graph.array(node.input[1])
    if weight is None or weight.ndim != 4 or weight.shape[1:] != (depthwise.channels, 1, 1) or \
            int(attrs.get("group", 1)) != 1 or tuple(attrs.get("strides", (1, 1))) != (1, 1) or \
            any(attrs.get("pads", (0, 0, 0, 0))) or weight.dtype != (np.float16 if depthwise.float16 else np.float32):
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if bias and graph.array(bias) is None:
        return None
    nodes, output = [*depthwise.nodes, node.name], node.output[0]
    activation = _activation(graph, graph.only_reader(output), opset)
    if activation is not None:
        reader = graph.only_reader(output)
        nodes.append(reader.name)
        output = reader.output[0]
    return Candidate(SEPARABLE, depthwise.layer, tuple(nodes), depthwise.input, output, depthwise.channels,
                     depthwise.geometry, depthwise.activation, depthwise.weight, depthwise.bias, int(weight.shape[0]),
                     node.input[1], bias, activation or Activation(), depthwise.float16)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)


def named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, its unnamed nodes given unique names (candidates are named by their nodes)."""
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name or sum(1 for n in model.graph.node if n.name == node.name) > 1:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def find_candidates(model: onnx.ModelProto) -> Matches:
    """The depthwise (and separable) candidates of ``model`` and the grouped or dilated Convs not
    matched, with the reason. Give nodes unique names first (:func:`named_nodes`)."""
    graph, opset, matches = _Graph(model), _default_opset(model), Matches()
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = _attrs(node)
        dilated = any(d > 1 for d in attrs.get("dilations", ()))
        if int(attrs.get("group", 1)) == 1 and not dilated:
            continue
        candidate, why = _match_depthwise(graph, node, opset)
        if candidate is None:
            if why == "dense convolution (group 1)":
                why = "dense dilated convolution (group 1): the atrous rewrite's (segdeploy.conv.atrous), not a depthwise one"
            matches.unmatched.append(Unmatched(node.name, why))
            continue
        matches.candidates.append(candidate)
        separable = _match_separable(graph, candidate, opset)
        if separable is not None:
            matches.candidates.append(separable)
    return matches


def apply_rewrite(model: onnx.ModelProto, chosen: list[Candidate]) -> onnx.ModelProto:
    """A copy of ``model`` with each chosen candidate's nodes replaced by its segdeploy node (at most
    one candidate per layer)."""
    layers = [c.layer for c in chosen]
    if len(layers) != len(set(layers)):
        raise ValueError("at most one candidate per depthwise layer")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not chosen:
        return out
    graph = out.graph
    replaced = {name: c for c in chosen for name in c.nodes}
    constants = _Graph(out).constants
    new_inits: list[onnx.TensorProto] = []

    def float32_input(name: str, prefix: str) -> str:
        """``name`` as a float32 initializer (float16 weights converted once)."""
        if not name:
            return ""
        array = numpy_helper.to_array(constants[name])
        if array.dtype == np.float32 and any(init.name == name for init in graph.initializer):
            return name
        converted = f"{prefix}_{name}_f32"
        if not any(init.name == converted for init in new_inits):
            new_inits.append(numpy_helper.from_array(array.astype(np.float32), converted))
        return converted

    nodes = []
    for node in graph.node:
        candidate = replaced.get(node.name)
        if candidate is None:
            nodes.append(node)
            continue
        if node.name != candidate.nodes[0]:
            continue  # the candidate's other nodes: replaced with its first
        prefix = f"{candidate.layer}_{candidate.kind}"
        x, y = candidate.input, candidate.output
        if candidate.float16:
            nodes.append(helper.make_node("Cast", [x], [f"{prefix}_x_f32"], name=f"{prefix}_cast_in", to=TensorProto.FLOAT))
            x, y = f"{prefix}_x_f32", f"{prefix}_y_f32"
        weight, bias = float32_input(candidate.weight, prefix), float32_input(candidate.bias, prefix)
        if candidate.kind == DEPTHWISE:
            nodes.append(make_depthwise_node(x, weight, bias, y, geometry=candidate.geometry,
                                             activation=candidate.activation, name=f"{prefix}"))
        else:
            nodes.append(make_separable_node(
                x, weight, bias, float32_input(candidate.pointwise_weight, prefix),
                float32_input(candidate.pointwise_bias, prefix), y, geometry=candidate.geometry,
                activation=candidate.activation, pointwise_activation=candidate.pointwise_activation, name=prefix))
        if candidate.float16:
            nodes.append(helper.make_node("Cast", [y], [candidate.output], name=f"{prefix}_cast_out",
                                          to=TensorProto.FLOAT16))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    _drop_unused(out)
    add_opset(out)
    return out


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove initializers, Constant nodes and value infos nothing reads any more."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    infos = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
