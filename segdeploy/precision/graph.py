"""Small graph utilities shared by the precision tools."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..onnx_io import default_opset, load_onnx

#: Layers with weights: what the TensorRT scheme quantizes and what sensitivity analysis ranks.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: The output-channel axis of each weighted op's weight tensor (per-channel scales lie along it).
WEIGHT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name: layers are kept in higher precision by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def weighted_layers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, op type) of the layers whose weights are constants, in graph order."""
    initializers = {i.name for i in model.graph.initializer}
    return [
        (n.name, n.op_type)
        for n in model.graph.node
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in initializers
    ]


def layer_macs(path: Path, spec: dict) -> dict[str, int]:
    """Multiply-accumulates per weighted layer of the float model at ``path`` for one image of the
    manifest's size (empty if the shapes cannot be inferred)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = load_onnx(path)
    height, width = spec["size"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    channels = dims[1].dim_value if len(dims) > 1 and dims[1].HasField("dim_value") else (spec.get("channels") or 3)
    for dim, value in zip(dims, (1, channels, height, width)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    try:
        model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # shape inference gives up on some foreign graphs; MACs are only a report
        return {}
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = {}
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in WEIGHTED_OPS or not weight:
            continue
        # Conv: each output element sums Cin/groups*kh*kw products; ConvTranspose: each input element
        # spreads over Cout/groups*kh*kw outputs; MatMul/Gemm: each output sums K products.
        counted, per_element = {
            "Conv": (node.output[0], int(np.prod(weight[1:]))),
            "ConvTranspose": (node.input[0], int(np.prod(weight[1:]))),
            "MatMul": (node.output[0], weight[0]),
            "Gemm": (node.output[0], weight[1] if any(a.name == "transB" and a.i for a in node.attribute) else weight[0]),
        }[node.op_type]
        shape = shapes.get(counted)
        if shape and all(shape):
            macs[node.name] = int(np.prod(shape)) * per_element
    return macs


def sort_topologically(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder nodes so each comes after the producers of its inputs (ONNX requires it; converters
    that append Cast nodes at the end break it). Stable: already-ordered graphs are unchanged."""
    nodes = list(model.graph.node)
    producer = {out: index for index, node in enumerate(nodes) for out in node.output if out}
    waiting_on = [{producer[i] for i in node.input if i in producer} for node in nodes]
    consumers: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting_on):
        for need in needs:
            consumers.setdefault(need, []).append(index)
    ready = [index for index, needs in enumerate(waiting_on) if not needs]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers.get(index, []):
            waiting_on[consumer].discard(index)
            if not waiting_on[consumer]:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    model.graph.ClearField("node")
    model.graph.node.extend(nodes[i] for i in order)
    return model


def keep_only_outputs(model: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose graph outputs are ``names`` only, with the nodes and initializers
    that only fed the others removed; returns (model, the outputs dropped)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    dropped = [o.name for o in graph.output if o.name not in names]
    for value in [o for o in graph.output if o.name not in names]:
        graph.output.remove(value)
    needed = set(names)
    kept = []
    for node in reversed(list(graph.node)):  # nodes are in topological order: walk back from the outputs
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            for attribute in node.attribute:  # subgraphs (If, Loop) read outer names too
                for sub in [attribute.g, *attribute.graphs]:
                    needed.update(name for n in sub.node for name in n.input if name)
    graph.ClearField("node")
    graph.node.extend(reversed(kept))
    unused = [t for t in graph.initializer if t.name not in needed]
    for tensor in unused:
        graph.initializer.remove(tensor)
    removed = {t.name for t in unused}
    for value in [v for v in graph.input if v.name in removed]:  # old exporters list initializers as inputs
        graph.input.remove(value)
    kept_values = [v for v in graph.value_info if v.name in needed]
    graph.ClearField("value_info")
    graph.value_info.extend(kept_values)
    return pruned, dropped


#: The ops a deployment head starts with (``segdeploy.head``: softmax or sigmoid, argmax, a binary
#: threshold, the fused upsample + argmax node), reading the scores tensor as their first input.
HEAD_OPS = ("Softmax", "Sigmoid", "ArgMax", "Greater", "UpsampleArgmax")
#: The ops between that start and the prediction output (the label map's Cast and Squeeze).
HEAD_PASS_OPS = ("Cast", "Squeeze", "Identity")
#: The ops before that start that belong to the head (a binary head squeezes its one channel first).
HEAD_LEAD_OPS = ("Squeeze",)


@dataclass
class HeadTail:
    """The nodes of a deployment head, cut off a graph at the scores tensor they read."""

    scores: str
    prediction: onnx.ValueInfoProto
    nodes: list
    initializers: list
    #: The graph's opset imports (the head's nodes are of its default opset, custom ones of their domain's).
    opset_imports: list
    scores_is_output: bool


def split_head(model: onnx.ModelProto, prediction: str) -> tuple[onnx.ModelProto, HeadTail]:
    """(the scores graph, the head) of a graph whose ``prediction`` output a deployment head makes.

    The scores graph ends in the tensor the head reads (float32 (N, C, h, w): full-resolution
    logits, or the low-resolution ones the fused node upsamples), in the prediction's place among
    the outputs; ``attach_head`` puts the head back. ValueError when no head makes ``prediction``.
    """
    nodes = list(model.graph.node)
    producers = {out: index for index, node in enumerate(nodes) for out in node.output}
    chain, index = [], producers.get(prediction)
    while index is not None and nodes[index].op_type in HEAD_PASS_OPS:
        chain.append(index)
        index = producers.get(nodes[index].input[0])
    if index is None or nodes[index].op_type not in HEAD_OPS:
        raise ValueError(f"output {prediction!r} is not made by a deployment head ({', '.join(HEAD_OPS)})")
    chain.append(index)
    while (lead := producers.get(nodes[index].input[0])) is not None and nodes[lead].op_type in HEAD_LEAD_OPS:
        index = lead
        chain.append(index)
    scores = nodes[index].input[0]
    scores_model = onnx.ModelProto()
    scores_model.CopyFrom(model)
    graph = scores_model.graph
    kept_nodes = [node for i, node in enumerate(nodes) if i not in chain]  # the original's: extend() copies them
    chain = [nodes[i] for i in chain]
    used = {name for n in kept_nodes for name in n.input}
    tail_inputs = {name for n in chain for name in n.input}
    initializers = [t for t in model.graph.initializer if t.name in tail_inputs]
    graph.ClearField("node")
    graph.node.extend(kept_nodes)
    for tensor in [t for t in graph.initializer if t.name in tail_inputs and t.name not in used]:
        graph.initializer.remove(tensor)
    outputs = [o.name for o in graph.output]
    position = outputs.index(prediction)
    original = graph.output[position]
    kept = onnx.ValueInfoProto()
    kept.CopyFrom(original)
    graph.output.remove(original)
    scores_is_output = scores in outputs
    if not scores_is_output:
        graph.output.insert(position, _value_info(model, scores))
    custom = {n.domain for n in chain if n.domain not in ("", "ai.onnx")}
    if custom and not any(n.domain in custom for n in kept_nodes):
        imports = [o for o in scores_model.opset_import if o.domain not in custom]
        scores_model.ClearField("opset_import")
        scores_model.opset_import.extend(imports)
    tail = HeadTail(scores, kept, list(reversed(chain)), initializers, list(model.opset_import), scores_is_output)
    return scores_model, tail


def attach_head(model: onnx.ModelProto, tail: HeadTail) -> onnx.ModelProto:
    """``model`` (a scores graph, e.g. reduced in precision) with ``tail``'s head read from its
    scores output again, converted to the model's opset if a step changed it."""
    from onnx import helper, version_converter

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    nodes, initializers = tail.nodes, tail.initializers
    opset = default_opset(result)
    own_opset = next((o.version for o in tail.opset_imports if o.domain in ("", "ai.onnx")), opset)
    if opset != own_opset:  # e.g. an opset 12 head after quantization needed opset 13 (Squeeze's axes became an input)
        inputs = sorted({name for n in nodes for name in n.input if name} - {t.name for t in initializers}
                        - {out for n in nodes for out in n.output})  # fmt: skip
        alone = helper.make_model(
            helper.make_graph(nodes, "head", [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs],
                              [tail.prediction], initializers),
            opset_imports=tail.opset_imports,
        )  # fmt: skip
        converted = version_converter.convert_version(alone, opset).graph
        nodes, initializers = list(converted.node), list(converted.initializer)
    outputs = [o.name for o in graph.output]
    if tail.scores not in outputs:
        raise ValueError(f"the scores graph has no output {tail.scores!r} for the head to read")
    position = outputs.index(tail.scores)
    if tail.scores_is_output:
        position = len(outputs)
    else:
        graph.output.remove(graph.output[position])
    graph.output.insert(position, tail.prediction)
    graph.node.extend(nodes)
    present = {t.name: t for t in graph.initializer}
    for tensor in initializers:
        if tensor.name not in present:
            graph.initializer.append(tensor)
        elif present[tensor.name].data_type != tensor.data_type:
            raise ValueError(f"the reduced graph changed the head's constant {tensor.name!r}")
    have = {o.domain for o in result.opset_import}
    result.opset_import.extend(o for o in tail.opset_imports if o.domain not in have)
    return result


def _value_info(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """The type of tensor ``name`` as shape inference finds it (float32, shape unknown if it cannot)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom domains or graphs shape inference cannot follow
        inferred = model
    found = next((v for v in [*inferred.graph.value_info, *inferred.graph.output] if v.name == name), None)
    if found is not None and found.type.tensor_type.elem_type:
        value = onnx.ValueInfoProto()
        value.CopyFrom(found)
        return value
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
