"""The convolution nodes on TensorRT targets: what lint says of DepthwiseConv and SeparableConv per
target, the plugin library on ``segdeploy build``'s trtexec line, and real TensorRT for RTX engines
(SM86, built ahead of time without a GPU) of graphs with a DepthwiseConv node, FP32 and FP16.

DepthwiseConv is an IPluginV3 of segdeploy's plugin library (kernels/trt_plugin): TensorRT >= 10,
never on DLA (GPU fallback). SeparableConv has no TensorRT plugin: an ONNX Runtime CPU node, an
error on every TensorRT target. The engine builds go through the CLI as a user's would, which loads
the plugin library (``SEGDEPLOY_TRT_PLUGIN_LIB``, built where TensorRT's headers are) before
parsing: that the parser finds the creator, that the format negotiation gives the plugin X's type
for W, B and Y, and that getOutputShapes computes the convolution's output size are what a build
proves (the engine's output shape is the plugin's). They skip without TensorRT for RTX or the
library, as in CI.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphs
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from rtx import NO_RTX, build_rtx, rtx_installed

from segdeploy.backend.trt.plan import PLUGIN_LIB_ENV, plugin_library_path
from segdeploy.conv.kernel import FLT_MAX, Activation, ConvGeometry
from segdeploy.conv.onnx_node import DEPTHWISE_OP_TYPE, DOMAIN, SEPARABLE_OP_TYPE, add_opset, make_depthwise_node, make_separable_node
from segdeploy.lint import custom_nodes, errors, lint_onnx
from segdeploy.targets import TARGETS

CHANNELS, CLASSES = 8, 4
#: Asymmetric pads, stride 2 and dilation 2: every term of the output-size formula counts.
GEOMETRY = ConvGeometry(kernel=(3, 3), strides=(2, 2), dilations=(2, 2), pads=(2, 1, 2, 1))
RELU6 = Activation("clip", 0.0, 6.0)


def conv_graph(kind=DEPTHWISE_OP_TYPE, *, half=False, dims=("batch", 3, "height", "width"), bias=True,
               kernel_shape=None) -> onnx.ModelProto:
    """images (N, 3, H, W) -> Conv 1x1 (8 channels) -> DepthwiseConv (GEOMETRY, ReLU6) or SeparableConv (+ 1x1
    to 8 channels) -> Conv 1x1 -> logits (N, 4, H', W'). ``half``: FP16 from a Cast of the input to a Cast of
    the logits (weights FP16), as TensorRT builds it strongly typed. ``kernel_shape`` overrides the node's
    attribute (a node whose weight does not fit it)."""
    dtype, onnx_type = (np.float16, TensorProto.FLOAT16) if half else (np.float32, TensorProto.FLOAT)
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(dtype), name)

    initializers = [weight("w_in", CHANNELS, 3, 1, 1), weight("dw_w", CHANNELS, 1, 3, 3), weight("dw_b", CHANNELS),
                    weight("w_out", CLASSES, CHANNELS, 1, 1)]
    nodes = [helper.make_node("Cast", ["images"], ["x"], to=onnx_type, name="cast_in"),
             helper.make_node("Conv", ["x", "w_in"], ["features"], name="conv_in")]
    if kind == DEPTHWISE_OP_TYPE:
        nodes.append(make_depthwise_node("features", "dw_w", "dw_b" if bias else "", "mixed", geometry=GEOMETRY,
                                         activation=RELU6, name="dw"))
    else:
        initializers += [weight("pw_w", CHANNELS, CHANNELS, 1, 1), weight("pw_b", CHANNELS)]
        nodes.append(make_separable_node("features", "dw_w", "dw_b", "pw_w", "pw_b", "mixed", geometry=GEOMETRY,
                                         activation=RELU6, pointwise_activation=Activation("clip", 0.0, FLT_MAX),
                                         name="sep"))
    if kernel_shape is not None:
        (attribute,) = [a for a in nodes[-1].attribute if a.name == "kernel_shape"]
        attribute.ints[:] = kernel_shape
    nodes += [helper.make_node("Conv", ["mixed", "w_out"], ["scores"], name="conv_out"),
              helper.make_node("Cast", ["scores"], ["logits"], to=TensorProto.FLOAT, name="cast_out")]
    out_dims = [dims[0], CLASSES, *(GEOMETRY.output_size(*dims[2:]) if isinstance(dims[2], int) else dims[2:])]
    model = onnx_graphs.make_model(nodes, [onnx_graphs.image_input(dims=dims)],
                                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)], initializers)
    add_opset(model)
    onnx.checker.check_model(model)
    return model


def findings_of(model, target, **options):
    return [(f.severity, f.rule, f.node) for f in lint_onnx(model, target, **options)]


# --------------------------------------------------------------------------- lint, per target

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_lint_says_where_the_depthwise_node_runs(target):
    model = conv_graph()
    (finding,) = lint_onnx(model, target)
    assert (finding.node, finding.op_type, finding.rule) == ("dw", DEPTHWISE_OP_TYPE, "custom-op")
    profile = TARGETS[target]
    if profile.runtime != "tensorrt":
        assert finding.severity == "info" and "onnxruntime-extensions" in finding.message
    elif profile.name in ("jetpack5", "jetpack6.0"):  # TensorRT 8.x: no IPluginV3
        assert finding.severity == "error", finding
        assert "IPluginV3 (TensorRT >= 10)" in finding.message and profile.runtime_name in finding.message
    else:
        assert finding.severity == "info" and "plugin library" in finding.message


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_lint_refuses_the_separable_block_on_every_tensorrt_target(target):
    (finding,) = lint_onnx(conv_graph(SEPARABLE_OP_TYPE), target)
    assert (finding.node, finding.op_type, finding.rule) == ("sep", SEPARABLE_OP_TYPE, "custom-op")
    if TARGETS[target].runtime == "tensorrt":
        assert finding.severity == "error", finding
        assert "no TensorRT plugin" in finding.message and "ONNX Runtime CPU node" in finding.message
        assert "segdeploy plugins --plugins" in finding.message and TARGETS[target].runtime_name in finding.message
    else:
        assert finding.severity == "info"


def test_dla_runs_no_plugin_and_the_separable_block_is_not_a_dla_question():
    model = conv_graph(half=True, dims=(1, 3, 64, 64))
    fallback = findings_of(model, "jetpack6.2", dla=True, gpu_fallback=True)
    assert ("warning", "dla-op", "dw") in fallback
    (dla,) = [f for f in lint_onnx(model, "jetpack6.2", dla=True) if f.node == "dw" and f.rule == "dla-op"]
    assert "DLA runs no plugins" in dla.message and "runs on the GPU" in dla.message
    assert ("error", "dla-op", "dw") in findings_of(model, "jetpack6.2", dla=True, gpu_fallback=False)
    separable = lint_onnx(conv_graph(SEPARABLE_OP_TYPE, half=True, dims=(1, 3, 64, 64)), "jetpack6.2", dla=True)
    assert [(f.rule, f.severity) for f in separable if f.node == "sep"] == [("custom-op", "error")]


def test_only_the_depthwise_node_needs_the_plugin_library():
    assert [n.name for n in custom_nodes(conv_graph())] == ["dw"]
    assert custom_nodes(conv_graph(SEPARABLE_OP_TYPE)) == []
    assert errors(lint_onnx(conv_graph(bias=False), "trt10")) == []


# --------------------------------------------------------------------------- build's trtexec line

def test_the_trtexec_line_loads_the_plugin_library(tmp_path, monkeypatch):
    onnx_path = tmp_path / "model.onnx"
    onnx.save(conv_graph(), onnx_path)
    library = tmp_path / "lib" / "libsegdeploy_trt_plugin.so"  # named, not read: --print-trtexec builds nothing
    monkeypatch.setenv(PLUGIN_LIB_ENV, str(library))
    proc = run_cli("build", onnx_path, "--target", "jetpack6.2", "--opt", "64x48", "--print-trtexec", "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert f"--dynamicPlugins={library}" in printed["trtexec"]
    assert printed["trtexec"][0].endswith("trtexec") and f"--onnx={onnx_path}" in printed["trtexec"]

    # Where TensorRT has no IPluginV3, or the node has no plugin at all, build says why and writes nothing.
    old = run_cli("build", onnx_path, "--target", "jetpack6.0", "--opt", "64x48", "--print-trtexec")
    assert_clean_error(old, 2, "dw (DepthwiseConv)", "IPluginV3")
    onnx.save(conv_graph(SEPARABLE_OP_TYPE), onnx_path)
    separable = run_cli("build", onnx_path, "--target", "trt11", "--opt", "64x48", "--print-trtexec")
    assert_clean_error(separable, 2, "sep (SeparableConv)", "no TensorRT plugin")


# --------------------------------------------------------------------------- TensorRT for RTX engines

def skip_without_rtx_or_plugins():
    if not rtx_installed():
        pytest.skip(NO_RTX)
    library = plugin_library_path()
    if not library.is_file():
        pytest.skip(f"segdeploy's TensorRT plugin library {library} does not exist: build kernels/ with TensorRT's "
                    f"headers (TENSORRT_ROOT, or kernels/tests/check_trt_headers.sh) and point {PLUGIN_LIB_ENV} at "
                    "libsegdeploy_trt_plugin.so")


def output_of(manifest: dict) -> dict:
    (output,) = [t for t in manifest["io"] if t["mode"] == "output"]
    return output


@pytest.mark.slow
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_rtx_builds_the_depthwise_node_for_sm86(tmp_path, half):
    """A fixed 64x48 input: the engine's output shape is what the plugin's getOutputShapes computed
    (stride 2, dilation 2, pads 2/1: 32x23); then dynamic batch and size through the same plugin."""
    skip_without_rtx_or_plugins()
    precision = "fp16" if half else "fp32"
    fixed = tmp_path / "fixed.onnx"
    onnx.save(conv_graph(half=half, dims=(1, 3, 64, 48)), fixed)
    manifest = build_rtx(fixed, tmp_path / "fixed_engine", f"DepthwiseConv {precision} 64x48")
    assert manifest["precision"] == precision
    assert manifest["tensorrt"]["custom_ops"] == [f"{DOMAIN}::{DEPTHWISE_OP_TYPE}"]
    assert output_of(manifest)["shape"] == [1, CLASSES, 32, 23] == [1, CLASSES, *GEOMETRY.output_size(64, 48)]

    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(conv_graph(half=half, bias=False), dynamic)
    manifest = build_rtx(dynamic, tmp_path / "dynamic_engine", f"DepthwiseConv {precision} dynamic, no bias",
                         "--batch", "2", "--min", "24x24", "--opt", "64x48", "--max", "96x128")
    assert output_of(manifest)["shape"] == [-1, CLASSES, -1, -1]


@pytest.mark.parametrize("kernel_shape, message", [
    ([5, 5], "DepthwiseConv plugin: X must be (N, C, H, W) and W (C, 1, kh, kw) with kernel_shape's kh, kw"),
    ([9, 9], "DepthwiseConv plugin: kernel_height must be 1..7, got 9"),  # the kernel's own check, at creation
], ids=["weight-mismatch", "kernel-too-large"])
def test_the_depthwise_plugin_refuses_what_the_kernel_cannot_run(tmp_path, kernel_shape, message):
    """The plugin's checks fail the build, with its own message in TensorRT's log, and nothing is written."""
    skip_without_rtx_or_plugins()
    onnx_path = tmp_path / "model.onnx"
    onnx.save(conv_graph(dims=(1, 3, 64, 48), kernel_shape=kernel_shape), onnx_path)
    proc = run_cli("build", onnx_path, "--target", "rtx", "--compute-capability", "86", "-o", tmp_path / "engine")
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "engine" / "model.engine").exists()
