"""The DenseCRF node as TensorRT sees it: a float32 image (a Cast of the uint8 input) and a real build.

TensorRT lets no layer but a cast read a uint8 tensor (``DataType::kUINT8``; TensorRT for RTX
refuses the build with "UInt8 datatype formats are not supported"), so ``append_crf_node`` casts
the uint8 ``image`` input to float32 for the node. The build test compiles the CRF graph ahead of
time for SM86 with TensorRT for RTX (``tensorrt_rtx``, which needs no GPU to build) and
segdeploy's plugin library (kernels/trt_plugin, built where TensorRT's headers are: point
``SEGDEPLOY_TRT_PLUGIN_LIB`` at it); it skips when either is missing, as in CI. It drives
``tensorrt_rtx`` directly, to read the plugin's own messages in TensorRT's log.
"""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto
from onnx_graphs import seg_graph

from segdeploy.backend.trt.plan import PLUGIN_LIB_ENV, plugin_library_path
from segdeploy.crf import CRF_DOMAIN, CRF_OP_TYPE, append_crf_node

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
onnx_path, plugin, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
shapes = {"images": ([1, 3, size, size], [2, 3, size, size]), "image": ([1, size, size, 3], [2, size, size, 3])}
for name, (smallest, largest) in shapes.items():
    profile.set_shape(name, smallest, largest, largest)
config.add_optimization_profile(profile)
start = time.perf_counter()
engine = builder.build_serialized_network(network, config)
print(json.dumps({"parsed": True, "bytes": engine.nbytes if engine is not None else 0,
                  "seconds": time.perf_counter() - start, "messages": messages}))
"""

# sd_crf_cuda_workspace_bytes sizes CUB's scratch through the CUDA runtime, which needs a device:
# without one the plugin fails the build rather than give TensorRT a workspace size it cannot know.
_NO_DEVICE = ("cudaErrorNoDevice", "cudaErrorInvalidDevice", "cudaErrorInsufficientDriver")


def test_tensorrt_rtx_builds_the_crf_graph_for_sm86(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (pip install tensorrt-rtx-cu13) is not installed")
    plugin = plugin_library_path()
    if not plugin.is_file():
        pytest.skip(f"segdeploy's TensorRT plugin library {plugin} does not exist: build kernels/ with TensorRT's "
                    f"headers (TENSORRT_ROOT) and point {PLUGIN_LIB_ENV} at libsegdeploy_trt_plugin.so")
    onnx_path = tmp_path / "crf.onnx"
    onnx.save(crf_graph(), str(onnx_path))
    proc = subprocess.run([sys.executable, "-c", _BUILD, str(onnx_path), str(plugin), str(SIZE)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log = "\n".join([*result["messages"], proc.stderr])  # the plugin logs to stderr when TensorRT gives it no logger
    assert result["parsed"], log
    if not result["bytes"] and "DenseCRF plugin: cannot size the workspace" in log and any(e in log for e in _NO_DEVICE):
        pytest.xfail(f"no CUDA device: the plugin cannot size the CRF's workspace without one ({log})")
    assert result["bytes"] > 0, log
    assert "UInt8" not in log, log
