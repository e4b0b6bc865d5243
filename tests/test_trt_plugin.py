"""The plugin nodes as TensorRT sees them: the DenseCRF node's float32 image (a Cast of the uint8 input),
the UpsampleArgmax node's int32 labels, and real builds through segdeploy's plugin library.

TensorRT lets no layer but a cast read a uint8 tensor (``DataType::kUINT8``; TensorRT for RTX
refuses the build with "UInt8 datatype formats are not supported"), so ``append_crf_node`` casts
the uint8 ``image`` input to float32 for the node. The build test compiles the CRF graph ahead of
time for SM86 with TensorRT for RTX (``tensorrt_rtx``, which needs no GPU to build) and
segdeploy's plugin library (kernels/trt_plugin, built where TensorRT's headers are: point
``SEGDEPLOY_TRT_PLUGIN_LIB`` at it); it skips when either is missing, as in CI. It drives
``tensorrt_rtx`` directly, to read the plugin's own messages in TensorRT's log.

TensorRT gives plugins no uint8 tensors (``DataType::kUINT8`` is "not supported" for a plugin's
output types in TensorRT 10.x and 11.x), so the UpsampleArgmax plugin writes int32 labels and a
graph that wants uint8 casts them after the node: TensorRT builds that Cast (int32 -> uint8).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphs
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import seg_graph

from segdeploy.backend.trt.plan import PLUGIN_LIB_ENV, plugin_library_path
from segdeploy.crf import CRF_DOMAIN, CRF_OP_TYPE, append_crf_node
from segdeploy.head.onnx_node import add_opset, make_upsample_argmax_node

SIZE = 64


def crf_graph(dims=("batch", 3, "height", "width")) -> onnx.ModelProto:
    return append_crf_node(seg_graph(dims=dims), iterations=3)


def test_the_crf_node_reads_a_float32_cast_of_the_uint8_image():
    model = crf_graph()
    onnx.checker.check_model(model)
    image = next(value for value in model.graph.input if value.name == "image")
    assert image.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]

    crf = next(node for node in model.graph.node if node.op_type == CRF_OP_TYPE)
    assert crf.domain == CRF_DOMAIN and crf.input[0] == "logits"
    producer = next(node for node in model.graph.node if crf.input[1] in node.output)
    assert producer.op_type == "Cast" and list(producer.input) == ["image"]
    assert onnx.helper.get_attribute_value(next(a for a in producer.attribute if a.name == "to")) == TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {value.name: value.type.tensor_type.elem_type for value in inferred.graph.value_info}
    assert types[crf.input[1]] == TensorProto.FLOAT


# Run in a child process: there TensorRT loads the plugin with the libsegdeploy_kernels beside it,
# not one that this process may have loaded already under the same soname.
_BUILD = r"""
import json, sys, time
import tensorrt_rtx as trt
from segdeploy.backend.trt import loader

loader.use_edition("rtx")
loader.import_tensorrt()  # links libtensorrt_rtx.so, which the parser opens for plugin nodes
onnx_path, plugin, shapes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])  # input -> [smallest, largest]
messages = []

class Logger(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)

    def log(self, severity, msg):
        if severity <= trt.ILogger.Severity.WARNING:
            messages.append(str(msg))

logger = Logger()
trt.get_plugin_registry().load_library(plugin)
builder = trt.Builder(logger)
network = builder.create_network(0)
parser = trt.OnnxParser(network, logger)
if not parser.parse_from_file(onnx_path):
    messages += [str(parser.get_error(i)) for i in range(parser.num_errors)]
    print(json.dumps({"parsed": False, "bytes": 0, "messages": messages}))
    sys.exit(0)
config = builder.create_builder_config()
config.num_compute_capabilities = 1
config.set_compute_capability(trt.ComputeCapability.SM86, 0)
profile = builder.create_optimization_profile()
for name, (smallest, largest) in shapes.items():
    profile.set_shape(name, smallest, largest, largest)
config.add_optimization_profile(profile)
start = time.perf_counter()
engine = builder.build_serialized_network(network, config)
outputs = {network.get_output(i).name: str(network.get_output(i).dtype) for i in range(network.num_outputs)}
print(json.dumps({"parsed": True, "bytes": engine.nbytes if engine is not None else 0,
                  "seconds": time.perf_counter() - start, "messages": messages, "outputs": outputs}))
"""


def build_for_sm86(tmp_path, model: onnx.ModelProto, shapes: dict) -> tuple[dict, str]:
    """Build ``model`` with TensorRT for RTX and segdeploy's plugin library (skips without either):
    the child's report and TensorRT's log (with the plugin's messages)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (pip install tensorrt-rtx-cu13) is not installed")
    plugin = plugin_library_path()
    if not plugin.is_file():
        pytest.skip(f"segdeploy's TensorRT plugin library {plugin} does not exist: build kernels/ with TensorRT's "
                    f"headers (TENSORRT_ROOT) and point {PLUGIN_LIB_ENV} at libsegdeploy_trt_plugin.so")
    onnx_path = tmp_path / "model.onnx"
    onnx.save(model, str(onnx_path))
    proc = subprocess.run([sys.executable, "-c", _BUILD, str(onnx_path), str(plugin), json.dumps(shapes)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log = "\n".join([*result["messages"], proc.stderr])  # the plugin logs to stderr when TensorRT gives it no logger
    return result, log

# sd_crf_cuda_workspace_bytes sizes CUB's scratch through the CUDA runtime, which needs a device:
# without one the plugin fails the build rather than give TensorRT a workspace size it cannot know.
_NO_DEVICE = ("cudaErrorNoDevice", "cudaErrorInvalidDevice", "cudaErrorInsufficientDriver")


def test_tensorrt_rtx_builds_the_crf_graph_for_sm86(tmp_path):
    shapes = {"images": [[1, 3, SIZE, SIZE], [2, 3, SIZE, SIZE]], "image": [[1, SIZE, SIZE, 3], [2, SIZE, SIZE, 3]]}
    result, log = build_for_sm86(tmp_path, crf_graph(), shapes)
    assert result["parsed"], log
    if not result["bytes"] and "DenseCRF plugin: cannot size the workspace" in log and any(e in log for e in _NO_DEVICE):
        pytest.xfail(f"no CUDA device: the plugin cannot size the CRF's workspace without one ({log})")
    assert result["bytes"] > 0, log
    assert "UInt8" not in log, log


def upsample_argmax_graph(classes=4, *, scores_dtype=TensorProto.FLOAT, labels_dtype="int32", cast_to_uint8=False,
                          **attributes) -> onnx.ModelProto:
    """images (N, 3, H, W) -> AveragePool /4 -> Conv 1x1 -> scores (N, classes, H/4, W/4) [-> Cast float16]
    -> UpsampleArgmax(scores, images) -> labels (N, H, W) int32 [-> Cast uint8]: dynamic batch and size."""
    dims = ["batch", 3, "height", "width"]
    nodes = [helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Conv", ["pooled", "w"], ["scores"])]
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(classes, 3, 1, 1)).astype(np.float32), "w")
    scores = "scores"
    if scores_dtype == TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", ["scores"], ["scores_half"], to=TensorProto.FLOAT16))
        scores = "scores_half"
    if "node" in attributes:  # a node as given (attributes the kernels do not implement)
        node = attributes.pop("node")
    else:
        node = make_upsample_argmax_node(scores, "images", "labels", labels_dtype=labels_dtype,
                                         coordinate_transformation_mode=attributes.pop("mode", "half_pixel"),
                                         **attributes)
    nodes.append(node)
    output, output_type = "labels", TensorProto.INT32
    if cast_to_uint8:
        nodes.append(helper.make_node("Cast", ["labels"], ["labels_uint8"], to=TensorProto.UINT8))
        output, output_type = "labels_uint8", TensorProto.UINT8
    model = onnx_graphs.make_model(nodes, [onnx_graphs.image_input(dims=dims)],
                                   [helper.make_tensor_value_info(output, output_type, ["batch", "height", "width"])],
                                   [weights])
    add_opset(model)
    return model


HEAD_SHAPES = {"images": [[1, 3, 32, 32], [2, 3, 64, 96]]}


@pytest.mark.parametrize("scores_dtype, cast_to_uint8", [(TensorProto.FLOAT, False), (TensorProto.FLOAT16, True)],
                         ids=["float32-int32", "float16-uint8"])
def test_tensorrt_rtx_builds_the_upsample_argmax_graph_for_sm86(tmp_path, scores_dtype, cast_to_uint8):
    """The fused head's node through the plugin, with dynamic batch and size (the output's H, W
    follow the reference input's), float32 or float16 scores, int32 labels or a uint8 Cast of
    them. It needs no GPU to build (no workspace to size)."""
    model = upsample_argmax_graph(scores_dtype=scores_dtype, cast_to_uint8=cast_to_uint8, mode="align_corners",
                                  labels_dtype="uint8" if cast_to_uint8 else "int32")
    result, log = build_for_sm86(tmp_path, model, HEAD_SHAPES)
    assert result["parsed"], log
    assert result["bytes"] > 0, log
    assert "UpsampleArgmax plugin" not in log, log
    assert result["outputs"] == ({"labels_uint8": "DataType.UINT8"} if cast_to_uint8 else {"labels": "DataType.INT32"})


@pytest.mark.parametrize("case, message", [
    ("mode", 'attribute coordinate_transformation_mode: "nearest" is not half_pixel'),
    ("uint8", "labels_dtype uint8 holds at most 256 classes, the scores have 300"),
    ("scale", "scale_height must be a finite number"),
])
def test_the_upsample_argmax_plugin_refuses_what_the_kernel_cannot_run(tmp_path, case, message):
    """The plugin's checks fail the build with its own message in TensorRT's log."""
    if case == "mode":
        node = helper.make_node("UpsampleArgmax", ["scores", "images"], ["labels"], domain="ai.onnx.contrib",
                                coordinate_transformation_mode="nearest", labels_dtype="int32")
        model = upsample_argmax_graph(node=node)
    elif case == "uint8":
        model = upsample_argmax_graph(classes=300, labels_dtype="uint8", cast_to_uint8=True)
    else:
        model = upsample_argmax_graph(scale_height=-2.0, scale_width=4.0)
    result, log = build_for_sm86(tmp_path, model, HEAD_SHAPES)
    assert not result["bytes"], log
    assert f"UpsampleArgmax plugin: {message}" in log, log
