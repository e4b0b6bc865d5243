"""Dilated (atrous) convolutions that compute only the taps that see the image.

At a large rate most of a dilated 3×3 kernel's taps fall in the zero padding: DeepLab's ASPP at rate
12 on a 64×64 map uses 77% of its taps, at rate 36 only 39%, and at a rate ≥ the map size the
convolution *is* a 1×1 convolution. Runtimes multiply those zeros anyway. Along each axis the output
splits into a few bands where the set of in-image taps is constant (output y sees tap i iff
``0 <= y*stride + i*dilation - pad_begin < size``; that set is always a run of consecutive taps); a
band of rows × a band of columns is a region. :func:`rewrite_atrous` replaces the ``Conv`` by one
``Conv`` per region on a ``Slice`` of its input with only that region's taps (the kernel sliced, still
dilated, no padding), the regions ``Concat``-ed back (columns within a band of rows, then the bands),
each output getting the bias once (``split="columns"`` or ``"rows"`` splits one axis only, ≤ 3 Convs, the
other axis keeping its padding). The result is exact (the same sums without the zero products) and
uses standard ONNX ops only, so every runtime runs it — TensorRT and DLA included.

The regions depend on the map size, so the rewrite needs fixed spatial sizes: the caller passes
``input_hw``, the image input's (height, width), and the rewritten model's image input is fixed at that
size (a dynamic-shape artifact becomes a fixed-size one; a fixed one must be given its own size). The
batch dimension stays as it was. Whether a rewrite is faster is for the caller to measure
(:mod:`.measure`): the regions cost slices and a concat, which a kernel whose taps nearly all see the
image (a backbone's dilated 3×3) does not earn back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BadInputError
from ..onnx_io import default_opset, image_input


@dataclass(frozen=True)
class AxisBand:
    """Output positions ``start <= y < stop`` along one axis whose in-image taps are ``first_tap..last_tap``."""

    start: int
    stop: int
    first_tap: int
    last_tap: int  # inclusive
    #: Zero padding the band's Conv keeps: non-zero only for an axis left whole (``split`` leaves it to the runtime).
    pad_begin: int = 0
    pad_end: int = 0

    @property
    def taps(self) -> int:
        return self.last_tap - self.first_tap + 1


@dataclass(frozen=True)
class AtrousCandidate:
    """A dilated Conv the rewrite can split, with its cost for one image before and after."""

    node: str
    dilation: tuple[int, int]
    #: The Conv's input map (height, width) at the caller's input size.
    map_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    #: How many regions (Conv nodes) the rewrite makes: (bands of rows) × (bands of columns).
    regions: int
    macs_before: int
    macs_after: int
    #: The share of the kernel's multiply-accumulates whose input is padding: 1 - after / before.
    padding_share: float


def axis_bands(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> list[AxisBand]:
    """The output positions along one axis grouped by their set of in-image taps (empty sets raise ValueError)."""
    out = (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1
    bands: list[AxisBand] = []
    for y in range(out):
        origin = y * stride - pad_begin
        taps = [i for i in range(kernel) if 0 <= origin + i * dilation < size]
        if not taps:
            raise ValueError(f"output position {y} sees only padding")
        if bands and (bands[-1].first_tap, bands[-1].last_tap) == (taps[0], taps[-1]):
            last = bands[-1]
            bands[-1] = AxisBand(last.start, y + 1, last.first_tap, last.last_tap)
        else:
            bands.append(AxisBand(y, y + 1, taps[0], taps[-1]))
    return bands


@dataclass
class _Plan:
    """What the rewrite of one Conv needs: the node, its sliced-up axes and its shapes."""

    node: onnx.NodeProto
    weight: np.ndarray  # (out_channels, in_channels / group, kh, kw)
    map_size: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    group: int
    rows: list[AxisBand]
    cols: list[AxisBand]

    def macs(self) -> tuple[int, int]:
        """Multiply-accumulates for one image: the dense kernel, and only the in-image taps."""
        out_c, in_per_group, kh, kw = self.weight.shape
        per_tap = out_c * in_per_group
        out_h, out_w = self.rows[-1].stop, self.cols[-1].stop
        before = per_tap * out_h * out_w * kh * kw
        row_taps = sum((b.stop - b.start) * b.taps for b in self.rows)
        col_taps = sum((b.stop - b.start) * b.taps for b in self.cols)
        return before, per_tap * row_taps * col_taps

    def candidate(self) -> AtrousCandidate:
        before, after = self.macs()
        return AtrousCandidate(
            node=self.node.name, dilation=self.dilations, map_size=self.map_size, kernel=self.weight.shape[2:],
            stride=self.strides, regions=len(self.rows) * len(self.cols), macs_before=before, macs_after=after,
            padding_share=1.0 - after / before)


def fix_input_size(model: onnx.ModelProto, input_hw: tuple[int, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose image input's height and width are ``input_hw`` (batch untouched)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    image = image_input(fixed)
    if image is None:
        raise BadInputError("the model has no 4-D float32 image input, so the atrous rewrite cannot size its maps")
    height, width = (int(v) for v in input_hw)
    if height < 1 or width < 1:
        raise BadInputError(f"input size {height}x{width} is not a positive height and width")
    for dim, value in zip(image.type.tensor_type.shape.dim[2:], (height, width)):
        if dim.HasField("dim_value") and dim.dim_value != value:
            size = "x".join(str(d.dim_value) for d in image.type.tensor_type.shape.dim[2:])
            raise BadInputError(f"input '{image.name}' is fixed at {size}; the atrous rewrite cannot size it to "
                                f"{height}x{width}")
        dim.dim_value = value  # clears a symbolic dim_param
    return fixed


#: How the output is split: into regions of rows × columns, into bands of columns only (each full-height
#: band's Conv keeps the row padding: runtimes that already skip padded kernel rows, as ONNX Runtime's
#: NCHWc convolution does, only lose on the columns), or bands of rows only.
SPLITS = ("both", "columns", "rows")


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _survey(model: onnx.ModelProto, input_hw, split: str = "both") -> tuple[onnx.ModelProto, dict[str, _Plan], dict[str, str]]:
    """The model at the fixed size, a plan for each dilated Conv the rewrite can split, and the reason for
    each dilated Conv it cannot (or that has no tap in the padding)."""
    fixed = fix_input_size(model, input_hw)
    probe = onnx.ModelProto()
    probe.CopyFrom(fixed)
    del probe.graph.value_info[:]  # an exporter's symbolic sizes would stand in for the fixed ones
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception as err:  # onnx raises several types; the message is what the user needs
        raise BadInputError(f"ONNX shape inference failed on the model at {input_hw[0]}x{input_hw[1]}: {err}") from None
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {init.name: init for init in fixed.graph.initializer}
    plans: dict[str, _Plan] = {}
    skipped: dict[str, str] = {}
    for node in fixed.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = _attributes(node)
        dilations = tuple(attrs.get("dilations", ()))
        if not any(d > 1 for d in dilations):
            continue
        name = node.name or node.output[0]
        if not node.name:
            skipped[name] = "the node has no name to address it by"
        elif (reason := _why_not(node, attrs, weights, shapes)) is not None:
            skipped[name] = reason
        else:
            plan = _plan(node, attrs, numpy_helper.to_array(weights[node.input[1]]), shapes[node.input[0]], split)
            if isinstance(plan, str):
                skipped[name] = plan
            elif plan.macs()[1] == plan.macs()[0]:
                skipped[name] = "every tap sees the image (no tap falls in the padding)"
            else:
                plans[name] = plan
    return fixed, plans, skipped


def _why_not(node, attrs, weights, shapes) -> str | None:
    """Why the rewrite cannot split this dilated Conv, or None."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", ""):
        return f"auto_pad={auto_pad} (only explicit pads are rewritten)"
    if len(node.input) < 2 or node.input[1] not in weights:
        return "its weights are not a constant initializer"
    if len(weights[node.input[1]].dims) != 4:
        return f"a {len(weights[node.input[1]].dims) - 2}-D convolution (only 2-D ones are rewritten)"
    shape = shapes.get(node.input[0])
    if not shape or len(shape) != 4 or shape[2] is None or shape[3] is None:
        return "shape inference did not give its input's height and width"
    return None


def _plan(node, attrs, weight: np.ndarray, input_shape, split: str) -> _Plan | str:
    kernel = weight.shape[2:]
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    map_size = (int(input_shape[2]), int(input_shape[3]))
    try:
        rows = axis_bands(map_size[0], kernel[0], strides[0], dilations[0], pads[0], pads[2])
        cols = axis_bands(map_size[1], kernel[1], strides[1], dilations[1], pads[1], pads[3])
    except ValueError as err:
        return f"some outputs see only padding ({err}); not rewritten"
    if split not in SPLITS:
        raise BadInputError(f"atrous split '{split}' is not one of {', '.join(SPLITS)}")
    if split == "columns":
        rows = [AxisBand(0, rows[-1].stop, 0, kernel[0] - 1, pads[0], pads[2])]
    elif split == "rows":
        cols = [AxisBand(0, cols[-1].stop, 0, kernel[1] - 1, pads[1], pads[3])]
    return _Plan(node, weight, map_size, strides, dilations, pads, int(attrs.get("group", 1)), rows, cols)


def atrous_candidates(model: onnx.ModelProto, input_hw: tuple[int, int], split: str = "both") -> list[AtrousCandidate]:
    """The dilated 2-D Convs of ``model`` at image size ``input_hw`` (height, width) that have taps in the
    padding and that :func:`rewrite_atrous` can split, in graph order, with their MACs before and after.

    ``input_hw`` fixes the image input's spatial size (a dynamic-shape model is sized to it; a fixed-size
    model must be given its own size)."""
    _, plans, _ = _survey(model, input_hw, split)
    return [plan.candidate() for plan in plans.values()]


def atrous_unmatched(model: onnx.ModelProto, input_hw: tuple[int, int], split: str = "both") -> dict[str, str]:
    """The dilated Convs that are not candidates, each with the reason (node name -> reason)."""
    return _survey(model, input_hw, split)[2]


def rewrite_atrous(model: onnx.ModelProto, input_hw: tuple[int, int], node_names, split: str = "both") -> onnx.ModelProto:
    """A copy of ``model`` with each named dilated Conv split into the regions of constant in-image taps,
    exactly (see the module's docstring), and its image input fixed at ``input_hw`` (height, width).

    The rewritten model is fixed-size: the regions are computed for this size only. A dynamic-shape model
    becomes a fixed-size one; record the size with the artifact. Raises BadInputError naming the node for a
    name that is not a Conv of the model or a Conv that cannot be split (weights that are not constant,
    auto_pad other than NOTSET, 1-D/3-D convolutions, no tap in the padding). ``split`` is one of
    :data:`SPLITS`."""
    names = list(dict.fromkeys(node_names))
    fixed, plans, skipped = _survey(model, input_hw, split)
    for name in names:
        if name in skipped:
            raise BadInputError(f"atrous rewrite: Conv '{name}' cannot be split: {skipped[name]}")
        if name not in plans:
            conv = next((n for n in fixed.graph.node if n.name == name), None)
            why = "is not a dilated Conv" if conv is not None else "is not a node of the model"
            raise BadInputError(f"atrous rewrite: '{name}' {why}")
    if not names:
        return fixed
    graph = fixed.graph
    taken = {init.name for init in graph.initializer} | {n.name for n in graph.node}
    taken |= {t for n in graph.node for t in [*n.input, *n.output]} | {v.name for v in graph.input}

    def unique(name: str) -> str:
        candidate, suffix = name, 1
        while candidate in taken:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        taken.add(candidate)
        return candidate

    use_slice_inputs = (default_opset(fixed) or 1) >= 10
    new_nodes = []
    replaced_weights = set()
    for node in graph.node:
        plan = plans.get(node.name) if node.name in names else None
        if plan is None:
            new_nodes.append(node)
            continue
        nodes, inits = _split(plan, unique, use_slice_inputs)
        new_nodes.extend(nodes)
        graph.initializer.extend(inits)
        replaced_weights.add(node.input[1])
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {t for n in graph.node for t in n.input}
    unused = replaced_weights - still_used
    kept = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    kept_inputs = [v for v in graph.input if v.name not in unused]  # old exporters list weights as inputs
    del graph.input[:]
    graph.input.extend(kept_inputs)
    return fixed


def _split(plan: _Plan, unique, use_slice_inputs: bool) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that compute ``plan.node``'s output region by region."""
    node = plan.node
    source = node.input[0]
    bias = node.input[2:3]
    height, width = plan.map_size
    stride_h, stride_w = plan.strides
    dil_h, dil_w = plan.dilations
    top, left = plan.pads[0], plan.pads[1]
    nodes, inits = [], []
    single = len(plan.rows) == 1 and len(plan.cols) == 1

    def window(band: AxisBand, size: int, stride: int, dilation: int, pad: int) -> tuple[int, int]:
        """The input positions [begin, end) the band's outputs read through its taps."""
        if band.pad_begin or band.pad_end:  # an axis left whole, padding and all
            return 0, size
        begin = band.start * stride + band.first_tap * dilation - pad
        return begin, (band.stop - 1) * stride + band.last_tap * dilation - pad + 1

    row_outputs = []
    for r, row in enumerate(plan.rows):
        pieces = []
        for c, col in enumerate(plan.cols):
            prefix = f"{node.name}/atrous_r{r}c{c}"
            (r0, r1), (c0, c1) = window(row, height, stride_h, dil_h, top), window(col, width, stride_w, dil_w, left)
            axes, starts, ends = [], [], []
            if (r0, r1) != (0, height):
                axes, starts, ends = [2], [r0], [r1]
            if (c0, c1) != (0, width):
                axes, starts, ends = [*axes, 3], [*starts, c0], [*ends, c1]
            region_input = source
            if axes:
                region_input = unique(f"{prefix}/input")
                if use_slice_inputs:
                    names = [unique(f"{prefix}/{what}") for what in ("starts", "ends", "axes")]
                    for name, values in zip(names, (starts, ends, axes)):
                        inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
                    nodes.append(helper.make_node("Slice", [source, *names], [region_input], name=unique(f"{prefix}/Slice")))
                else:
                    nodes.append(helper.make_node("Slice", [source], [region_input], name=unique(f"{prefix}/Slice"),
                                                  starts=starts, ends=ends, axes=axes))
            weight = plan.weight[:, :, row.first_tap:row.last_tap + 1, col.first_tap:col.last_tap + 1]
            weight_name = unique(f"{prefix}/weight")
            inits.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
            output = node.output[0] if single else unique(f"{prefix}/output")
            nodes.append(helper.make_node(
                "Conv", [region_input, weight_name, *bias], [output], name=node.name if single else unique(f"{prefix}/Conv"),
                kernel_shape=[row.taps, col.taps], strides=list(plan.strides), dilations=list(plan.dilations),
                pads=[row.pad_begin, col.pad_begin, row.pad_end, col.pad_end], group=plan.group))
            pieces.append(output)
        if len(pieces) == 1:
            row_outputs.append(pieces[0])
        else:
            output = node.output[0] if len(plan.rows) == 1 else unique(f"{node.name}/atrous_r{r}/output")
            nodes.append(helper.make_node("Concat", pieces, [output], name=unique(f"{node.name}/atrous_r{r}/Concat"), axis=3))
            row_outputs.append(output)
    if len(row_outputs) > 1:
        nodes.append(helper.make_node("Concat", row_outputs, [node.output[0]], name=unique(f"{node.name}/atrous/Concat"),
                                      axis=2))
    return nodes, inits
