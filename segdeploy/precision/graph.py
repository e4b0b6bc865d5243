"""Small graph utilities shared by the precision tools."""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import onnx

from ..onnx_io import load_onnx

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
