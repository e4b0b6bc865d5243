"""The depthwise convolution and the separable block: the CPU kernels through the binding against torch,
and the ONNX nodes run by ONNX Runtime against ONNX's own Conv."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import conv_graph

from segdeploy.conv.kernel import HARDSWISH, RELU, RELU6, Activation, ConvGeometry, depthwise_conv, separable_conv
from segdeploy.errors import BadInputError

torch = pytest.importorskip("torch")

SHAPES = [  # (N, C, H, W), kernel, stride, dilation, pads (top, left, bottom, right)
    ((1, 5, 9, 7), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((2, 17, 13, 11), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
    ((1, 9, 16, 16), (5, 5), (1, 1), (2, 2), (4, 4, 4, 4)),
    ((1, 8, 10, 12), (5, 5), (2, 2), (1, 1), (2, 1, 2, 3)),
    ((1, 3, 1, 1), (3, 3), (1, 1), (4, 4), (4, 4, 4, 4)),
]


def torch_reference(x, weight, bias, geometry: ConvGeometry, activation: Activation):
    t = torch.from_numpy(x.astype(np.float64))
    top, left, bottom, right = geometry.pads
    t = torch.nn.functional.pad(t, (left, right, top, bottom))
    out = torch.nn.functional.conv2d(t, torch.from_numpy(weight.astype(np.float64)),
                                     None if bias is None else torch.from_numpy(bias.astype(np.float64)),
                                     stride=geometry.strides, dilation=geometry.dilations, groups=x.shape[1])
    return activation.apply(out.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape, kernel, stride, dilation, pads", SHAPES)
@pytest.mark.parametrize("activation", [Activation(), RELU, RELU6, HARDSWISH], ids=["none", "relu", "relu6", "hardswish"])
def test_depthwise_kernel_matches_torch(dtype, shape, kernel, stride, dilation, pads, activation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((shape[1], 1, *kernel)).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype)
    geometry = ConvGeometry(kernel, stride, dilation, pads)
    expected = torch_reference(x, weight, bias, geometry, activation)
    for threads in (1, 2):
        got = depthwise_conv(x, weight, bias, geometry=geometry, activation=activation, threads=threads)
        assert got.dtype == dtype and got.shape == expected.shape
        tolerance = 1e-5 if dtype == np.float32 else 2e-2
        np.testing.assert_allclose(got.astype(np.float64), expected, atol=tolerance * max(1, np.abs(expected).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_separable_kernel_matches_torch(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 12, 15, 9)).astype(dtype)
    weight, bias = rng.standard_normal((12, 1, 3, 3)).astype(dtype), rng.standard_normal(12).astype(dtype)
    pw, pb = (rng.standard_normal((20, 12, 1, 1)) * 0.3).astype(dtype), rng.standard_normal(20).astype(dtype)
    geometry = ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
    depthwise = torch_reference(x, weight, bias, geometry, RELU6)
    expected = RELU.apply(np.einsum("nchw,oc->nohw", depthwise, pw[:, :, 0, 0].astype(np.float64)) + pb[None, :, None, None])
    got = separable_conv(x, weight, bias, pw, pb, geometry=geometry, activation=RELU6, pointwise_activation=RELU)
    tolerance = 1e-5 if dtype == np.float32 else 2e-2
    np.testing.assert_allclose(got.astype(np.float64), expected, atol=tolerance * max(1, np.abs(expected).max()))
    no_bias = separable_conv(x, weight, None, pw, None, geometry=geometry)
    assert no_bias.shape == expected.shape


def test_bad_arguments_are_bad_input():
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(BadInputError, match="depthwise weight"):
        depthwise_conv(x, np.zeros((4, 1, 5, 5), np.float32), geometry=ConvGeometry((3, 3)))
    with pytest.raises(BadInputError, match="float32 or float16"):
        depthwise_conv(x.astype(np.float64), np.zeros((4, 1, 3, 3)), geometry=ConvGeometry((3, 3)))
    with pytest.raises(BadInputError, match="no output"):
        depthwise_conv(x, np.zeros((4, 1, 3, 3), np.float32), geometry=ConvGeometry((3, 3), dilations=(8, 8)))
    with pytest.raises(BadInputError, match="threads"):
        depthwise_conv(x, np.zeros((4, 1, 3, 3), np.float32), geometry=ConvGeometry((3, 3)), threads=-1)


def _run(model: onnx.ModelProto, feed: dict, tmp_path, name: str) -> np.ndarray:
    from segdeploy.backend.onnxrt.runner import SessionFromOnnx

    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return SessionFromOnnx(path, threads=2)().run(None, feed)[0]


@pytest.mark.parametrize("float16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["depthwise", "separable"])
def test_onnx_runtime_runs_the_nodes_as_the_native_convs(tmp_path, kind, float16):
    from segdeploy.conv.onnx_node import DOMAIN
    from segdeploy.conv.rewrite import apply_rewrite, find_candidates

    model = conv_graph(float16=float16)
    chosen = [c for c in find_candidates(model).candidates if c.kind == "depthwise" or c.kind == kind]
    chosen = list({c.layer: c for c in chosen}.values())  # the last option of each layer: ``kind`` where it exists
    rewritten = apply_rewrite(model, chosen)
    custom = [n.op_type for n in rewritten.graph.node if n.domain == DOMAIN]
    assert sorted(custom) == sorted({"depthwise": "DepthwiseConv", "separable": "SeparableConv"}[c.kind] for c in chosen)
    assert ("Cast" in [n.op_type for n in rewritten.graph.node if n.name.endswith("_cast_in")]) == float16
    feed = {"input": np.random.default_rng(2).standard_normal((2, 3, 30, 22)).astype(np.float32)}
    expected, got = _run(model, feed, tmp_path, "native"), _run(rewritten, feed, tmp_path, "rewritten")
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= (2e-2 if float16 else 1e-5) * scale
