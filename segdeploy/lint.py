"""What a target's ONNX parser will reject or mis-handle, found on the CPU before any build.

``lint_onnx(model, target)`` returns :class:`Finding` s naming the node at fault:

* ``opset``: the default-domain opset is above what the target's parser accepts;
* ``unsupported-op``: ops TensorRT's ONNX parser has no importer for (MaxUnpool, the
  ``*Integer``/``QLinear*`` ops, sequences, ...), MaxPool's ``Indices`` output, ops of another
  domain (ONNX Runtime's ``com.microsoft`` contrib ops);
* ``custom-op``: segdeploy's own nodes (the ``DenseCRF`` node of :mod:`segdeploy.crf`, the fused
  ``UpsampleArgmax`` of :mod:`segdeploy.head`, the ``DepthwiseConv`` of :mod:`segdeploy.conv`), which
  TensorRT runs through segdeploy's plugin library (an IPluginV3, where the release has them; never
  on DLA) and ONNX Runtime through onnxruntime-extensions; and those only ONNX Runtime runs (the
  ``SeparableConv`` block), an error on every TensorRT target;
* ``resize``: Resize attributes outside what the parser implements (coordinate mode,
  nearest mode, mode, antialias, aspect-ratio policy);
* ``int64-output``: INT64 graph outputs (an ArgMax head): older releases have no INT64 I/O and
  later ones pay for it; cast to int32 in the graph;
* ``qdq``: Q/DQ that TensorRT's explicit quantization does not take (non-zero zero points,
  INT32 DequantizeLinear, per-tensor weights) - the rules of
  :func:`segdeploy.precision.int8.tensorrt_qdq_violations`;
* ``dla-*`` (with ``dla=True``): what DLA cannot run - those layers fall back to the GPU
  (an error without GPU fallback), dynamic shapes, large pooling windows, FP32 graphs.

Severity ``error`` means the build fails or the engine computes something else; ``warning``
means it builds but slower or only on some releases; ``info`` is for the record. Which release
has what is asked of :mod:`segdeploy.backend.trt.releases`; the op tables here are the parsers'.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from .backend.trt.releases import FEATURES, Release
from .conv import onnx_node as conv_node
from .crf.onnx_node import CRF_DOMAIN, CRF_OP_TYPE
from .head import onnx_node as head_node
from .onnx_io import ONNX_DOMAINS, load_onnx, open_artifact
from .precision.int8 import tensorrt_qdq_violations
from .targets import Target, get_target

#: Domains ONNX Runtime runs besides ONNX's (its contrib ops, ONNX-ML, onnxruntime-extensions).
ORT_DOMAINS = ("com.microsoft", "ai.onnx.ml", "ai.onnx.contrib")

# Ops no TensorRT ONNX parser (8.5 .. 11) imports (onnx-tensorrt's operator matrix).
UNSUPPORTED_OPS = frozenset({
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool",
    "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit",
    "TfIdfVectorizer", "Unique",
})  # fmt: skip
# Ops the parsers gained late or not at all (missing from TensorRT 8.4's matrix): uncertain on a release
# without the "late_parser_ops" feature.
LATE_PARSER_OPS = frozenset({
    "GridSample", "GroupNormalization", "Hardmax", "IsInf", "LayerNormalization", "Mod", "NonZero", "OneHot",
    "Reciprocal", "RoiAlign", "Shrink", "Trilu", "MeanVarianceNormalization", "HardSwish",
})  # fmt: skip
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_MODES = ("nearest", "linear")
RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")

# Ops DLA (Xavier/Orin) runs; the rest fall back to the GPU. Shape-only and constant ops are
# folded away before DLA sees them.
DLA_OPS = frozenset({
    "Conv", "ConvTranspose", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "PRelu", "Selu", "HardSigmoid",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Add", "Sub", "Mul",
    "Div", "Max", "Min", "Pow", "Concat", "Resize", "Upsample", "Softmax", "Slice", "Reshape", "Flatten",
    "Transpose", "Identity", "Dropout", "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "LRN",
    "Abs", "Sin", "Cos", "Atan", "Equal", "Greater", "Less", "ReduceMax", "Gemm", "QuantizeLinear",
    "DequantizeLinear",
})  # fmt: skip
#: DLA pooling windows are 1..8 per side.
DLA_MAX_POOL_WINDOW = 8


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "info"
    rule: str
    message: str
    node: str | None = None
    op_type: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.node} ({self.op_type}): " if self.node else ""
        return f"{self.severity}: [{self.rule}] {where}{self.message}"


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def custom_ops() -> dict[tuple[str, str], str]:
    """(domain, op type) -> description of segdeploy's custom nodes: TensorRT runs them as plugins, except
    those of :func:`cpu_only_ops`."""
    return {(CRF_DOMAIN, CRF_OP_TYPE): "segdeploy's dense CRF",
            (head_node.DOMAIN, head_node.OP_TYPE): "segdeploy's fused upsample + argmax",
            (conv_node.DOMAIN, conv_node.DEPTHWISE_OP_TYPE): "segdeploy's depthwise convolution",
            (conv_node.DOMAIN, conv_node.SEPARABLE_OP_TYPE): "segdeploy's separable convolution block"}


def cpu_only_ops() -> dict[tuple[str, str], str]:
    """(domain, op type) -> why and what to do, for segdeploy's custom nodes that have no TensorRT plugin."""
    return {(conv_node.DOMAIN, conv_node.SEPARABLE_OP_TYPE): (
        "it is an ONNX Runtime CPU node (TensorRT fuses a depthwise and a 1x1 convolution itself). For a TensorRT "
        "target, rewrite the original model with `segdeploy plugins --plugins` without separable blocks "
        "(DepthwiseConv nodes only), or run this graph on ONNX Runtime's CPU")}


def custom_nodes(model) -> list:
    """segdeploy's custom nodes in ``model`` that need the TensorRT plugin library."""
    plugins = custom_ops().keys() - cpu_only_ops().keys()
    return [n for n in model.graph.node if (n.domain, n.op_type) in plugins]


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _load(path_or_model):
    """(model without external data, path or None)."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, None
    artifact = open_artifact(path_or_model)
    return artifact.model, artifact.onnx_path


def _node_names(model) -> list[str]:
    """Each node's name, or OpType_index for unnamed nodes (as the precision tools name them)."""
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)]


def lint_onnx(path_or_model, target: str | Target, dla: bool = False, *, gpu_fallback: bool = True) -> list[Finding]:
    """Findings for ``path_or_model`` (an ONNX path, artifact folder or ``onnx.ModelProto``) on ``target``.

    Errors first, then warnings, then info; each in graph order.
    """
    profile = target if isinstance(target, Target) else get_target(target)
    model, path = _load(path_or_model)
    names = _node_names(model)
    findings: list[Finding] = []
    findings += _check_opset(model, profile)
    findings += _check_domains(model, names, profile)
    if profile.runtime == "tensorrt":
        findings += _check_ops(model, names, profile)
        findings += _check_resize(model, names)
        findings += _check_int64_outputs(model, names, profile)
        findings += _check_qdq(model, path, names)
        if dla:
            findings += _check_dla(model, names, profile, gpu_fallback)
    elif dla:
        findings.append(Finding("error", "dla", f"target {profile.name} runs on ONNX Runtime: DLA needs a TensorRT target"))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


def _check_opset(model, target: Target) -> list[Finding]:
    opset = next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), None)
    if opset is not None and opset > target.max_opset:
        runtime = target.runtime_name
        return [Finding("error", "opset", f"opset {opset} is above {target.max_opset}, the newest {runtime}'s parser "
                                          f"accepts on target {target.name}; export with --target {target.name}")]
    return []


def _check_domains(model, names, target: Target) -> list[Finding]:
    found = []
    known, cpu_only = custom_ops(), cpu_only_ops()
    for node, name in zip(model.graph.node, names):
        if node.domain in ONNX_DOMAINS:
            continue
        op = node.op_type
        if (node.domain, op) in known:
            release = Release.of_target(target)
            if release is not None and (node.domain, op) in cpu_only:
                found.append(Finding("error", "custom-op", f"{known[node.domain, op]} has no TensorRT plugin (target "
                                     f"{target.name}: {target.runtime_name}): {cpu_only[node.domain, op]}", name, op))
            elif release is None:
                found.append(Finding("info", "custom-op", f"{known[node.domain, op]}: ONNX Runtime runs it through "
                                     "onnxruntime-extensions (segdeploy's Python op, registered by its runner)", name, op))
            elif not release.has("ipluginv3"):
                found.append(Finding("error", "custom-op", f"{known[node.domain, op]} needs segdeploy's TensorRT "
                                     f"plugin, an IPluginV3 (TensorRT >= {FEATURES['ipluginv3'].first}); target "
                                     f"{target.name} has {target.runtime_name}", name, op))
            else:
                found.append(Finding("info", "custom-op", f"{known[node.domain, op]} runs as a TensorRT plugin: the "
                                     "build loads segdeploy's plugin library first", name, op))
        elif target.runtime == "tensorrt":
            found.append(Finding("error", "unsupported-op", f"{node.domain}::{op} is not an ONNX op and no segdeploy "
                                 "plugin implements it; TensorRT's parser cannot import it", name, op))
        elif node.domain not in ORT_DOMAINS:
            found.append(Finding("error", "unsupported-op", f"{node.domain}::{op} is in no domain ONNX Runtime "
                                 "knows", name, op))
    return found


def _check_ops(model, names, target: Target) -> list[Finding]:
    found = []
    release = Release.of_target(target)
    for node, name in zip(model.graph.node, names):
        if node.domain not in ONNX_DOMAINS:
            continue
        op = node.op_type
        if op in UNSUPPORTED_OPS:
            hint = " (keep MaxPool indices out of the graph: upsample with Resize or ConvTranspose)" if op == "MaxUnpool" else ""
            found.append(Finding("error", "unsupported-op", f"TensorRT's ONNX parser has no importer for {op}{hint}", name, op))
        elif op in LATE_PARSER_OPS and not release.has("late_parser_ops"):
            found.append(Finding("warning", "unsupported-op", f"{op} is not in every TensorRT {release.major}.x parser (target "
                                 f"{target.name}: {target.runtime_name}); check the release's operator list", name, op))
        elif op == "MaxPool" and len([o for o in node.output if o]) > 1:
            found.append(Finding("error", "unsupported-op", "MaxPool's Indices output is not supported by TensorRT", name, op))
    return found


def _check_resize(model, names) -> list[Finding]:
    found = []
    for node, name in zip(model.graph.node, names):
        if node.op_type not in ("Resize", "Upsample") or node.domain not in ONNX_DOMAINS:
            continue

        def add(severity, message, name=name, op_type=node.op_type):
            found.append(Finding(severity, "resize", message, name, op_type))

        mode = _attr(node, "mode", "nearest")
        coordinate = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in RESIZE_MODES:
            add("warning" if mode == "cubic" else "error",
                f"mode {mode!r}: TensorRT's parser documents only {', '.join(RESIZE_MODES)}")
        if node.op_type == "Resize" and coordinate not in RESIZE_COORDINATE_MODES:
            add("error", f"coordinate_transformation_mode {coordinate!r} is not supported "
                         f"(supported: {', '.join(RESIZE_COORDINATE_MODES)})")
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if mode == "nearest" and nearest not in RESIZE_NEAREST_MODES:
            add("error", f"nearest_mode {nearest!r} is not supported (supported: {', '.join(RESIZE_NEAREST_MODES)})")
        elif coordinate == "tf_half_pixel_for_nn" and nearest != "round_prefer_floor":
            # The parser's own check, whatever the mode (onnx-tensorrt's Resize checker).
            add("error", f"tf_half_pixel_for_nn with nearest_mode {nearest!r}: TensorRT's parser takes it with "
                         "round_prefer_floor only")
        elif coordinate == "tf_half_pixel_for_nn" and mode != "nearest":
            add("warning", f"tf_half_pixel_for_nn is TensorFlow's nearest-neighbour convention, here with {mode!r} "
                           "resizing: it builds; check the result against ONNX Runtime")
        if _attr(node, "antialias", 0):
            add("error", "antialias=1: TensorRT's Resize does not antialias, so downscaling would not match ONNX "
                         "Runtime; resize without antialiasing in the model")
        policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            add("error", f"keep_aspect_ratio_policy {policy!r} is not supported (only 'stretch')")
        if mode == "cubic" and _attr(node, "exclude_outside", 0):
            add("warning", "exclude_outside=1 with cubic mode: results differ from ONNX Runtime at the borders")
    return found


def _check_int64_outputs(model, names, target: Target) -> list[Finding]:
    producers = {out: (node, name) for node, name in zip(model.graph.node, names) for out in node.output}
    release = Release.of_target(target)
    found = []
    for output in model.graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.INT64:
            continue
        node, name = producers.get(output.name, (None, None))
        source = f" from {node.op_type}" if node is not None else ""
        argmax = node is not None and node.op_type in ("ArgMax", "ArgMin")
        fix = "add Cast(to=INT32) after it" if argmax else "cast it to int32 in the graph"
        if not release.has("int64_io"):
            found.append(Finding("error", "int64-output", f"output {output.name!r} is INT64{source}: TensorRT "
                                 f"{target.tensorrt} has no INT64 inputs/outputs; {fix}", name, node.op_type if node else None))
        else:
            found.append(Finding("warning", "int64-output", f"output {output.name!r} is INT64{source}: TensorRT "
                                 f"computes indices in int32 and converts; {fix}", name, node.op_type if node else None))
    return found


def _check_qdq(model, path: Path | None, names) -> list[Finding]:
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return []
    op_of = {name: node.op_type for node, name in zip(model.graph.node, names)}
    unnamed = any(not n.name for n in model.graph.node)
    if path is not None and not unnamed:
        problems = tensorrt_qdq_violations(path)
    else:
        # tensorrt_qdq_violations reads a file and reports nodes by name: give it a named copy.
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if path is not None:
            copy = load_onnx(path)  # with its external data, so the copy stands alone
        for node, name in zip(copy.graph.node, names):
            node.name = name
        fd, tmp = tempfile.mkstemp(prefix="segdeploy-lint-", suffix=".onnx")
        os.close(fd)
        try:
            onnx.save(copy, tmp)
            problems = tensorrt_qdq_violations(Path(tmp))
        finally:
            os.unlink(tmp)
    found = []
    for problem in problems:
        node, _, message = problem.partition(": ")
        found.append(Finding("error", "qdq", f"{message}; TensorRT's explicit quantization needs symmetric int8 Q/DQ "
                             "(zero point 0), float bias, per-channel weights", node, op_of.get(node)))
    return found


def _check_dla(model, names, target: Target, gpu_fallback: bool) -> list[Finding]:
    found = []
    if not Release.of_target(target).has("dla"):
        found.append(Finding("warning", "dla", f"target {target.name} is a desktop/server GPU: DLA exists on Jetson "
                                               "(Xavier, Orin) only"))
    fallback = "error" if not gpu_fallback else "warning"
    plugins, cpu_only = custom_ops(), cpu_only_ops()
    for node, name in zip(model.graph.node, names):
        if (node.domain, node.op_type) in cpu_only:
            continue  # no TensorRT at all: _check_domains reports it
        if (node.domain, node.op_type) in plugins:
            found.append(Finding(fallback, "dla-op", f"{plugins[node.domain, node.op_type]} is a TensorRT plugin: DLA "
                                 "runs no plugins, so it " + ("runs on the GPU (GPU fallback)" if gpu_fallback else
                                                              "fails the build without --gpu-fallback"), name, node.op_type))
        elif node.domain not in ONNX_DOMAINS or node.op_type not in DLA_OPS:
            found.append(Finding(fallback, "dla-op", "DLA cannot run this op: it " + (
                "runs on the GPU (GPU fallback)" if gpu_fallback else "fails the build without --gpu-fallback"),
                name, node.op_type))
        elif node.op_type in ("MaxPool", "AveragePool"):
            window = _attr(node, "kernel_shape", [])
            if any(k > DLA_MAX_POOL_WINDOW for k in window):
                found.append(Finding(fallback, "dla-pooling", f"pooling window {list(window)} is larger than DLA's "
                                     f"{DLA_MAX_POOL_WINDOW}x{DLA_MAX_POOL_WINDOW}", name, node.op_type))
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if any(not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim):
            found.append(Finding("warning", "dla-dynamic-shape", f"input {value.name!r} has dynamic dimensions: DLA "
                                 "runs fixed shapes only; build with --min = --opt = --max"))
    typed = {i.data_type for i in model.graph.initializer} | {
        v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    if onnx.TensorProto.FLOAT16 not in typed and not has_qdq:
        found.append(Finding("warning", "dla-precision", "the graph is FP32: DLA computes in FP16 or INT8 only; build "
                                                         "the fp16 or int8 artifact for DLA"))
    return found


def format_findings(findings: list[Finding]) -> str:
    return "\n".join(str(f) for f in findings)


def lint_report(findings: list[Finding], target: str) -> dict:
    """The manifest/JSON form: counts and the findings."""
    return {
        "target": target,
        "errors": sum(f.severity == "error" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
        "findings": [f.to_json() for f in findings],
    }
