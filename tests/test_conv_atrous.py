"""The atrous rewrite (segdeploy.conv.atrous): dilated Convs split into regions of constant in-image taps,
checked against ONNX Runtime on the original graph — hand-built Convs over a grid of rates and map sizes,
strides and groups, and a real DeepLabv3 export whose ASPP and dilated backbone are rewritten."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import make_model

from segdeploy.conv.atrous import atrous_candidates, atrous_unmatched, axis_bands, rewrite_atrous
from segdeploy.errors import BadInputError

F = TensorProto.FLOAT
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False)


def dilated_conv(cin=6, cout=5, rate=6, stride=1, group=1, kernel=3, pads=None, dims=("n", None, "h", "w"), **attrs):
    """x -> Conv(kernel, dilation ``rate``, 'same' padding unless ``pads``) -> Relu -> y."""
    rng = np.random.default_rng(rate * 100 + stride * 10 + group)
    weight = rng.normal(0, 0.5, (cout, cin // group, kernel, kernel)).astype(np.float32)
    bias = rng.normal(0, 0.5, cout).astype(np.float32)
    pad = rate * (kernel - 1) // 2
    conv_attrs = {"dilations": [rate, rate], "strides": [stride, stride], "group": group, **attrs}
    if "auto_pad" not in attrs:
        conv_attrs["pads"] = list(pads or [pad] * 4)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="aspp", **conv_attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    in_dims = [dims[0], cin, dims[2], dims[3]]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, in_dims)],
                      [helper.make_tensor_value_info("y", F, ["n", cout, "oh", "ow"])],
                      [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def assert_same_outputs(original, rewritten, x):
    expected, got = run(original, x), run(rewritten, x)
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(got - expected).max()) <= 1e-5 * scale


def op_types(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("size", [(16, 16), (32, 32), (33, 31), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("rate", [2, 6, 12, 18, 24, 36])
def test_the_rewrite_is_exact_over_rates_and_map_sizes(rate, size):
    model = dilated_conv(rate=rate)
    (candidate,) = atrous_candidates(model, size)
    assert candidate.node == "aspp" and candidate.dilation == (rate, rate) and candidate.map_size == size
    assert 0 < candidate.macs_after < candidate.macs_before
    rewritten = rewrite_atrous(model, size, ["aspp"])
    onnx.checker.check_model(rewritten, full_check=True)
    assert op_types(rewritten).count("Conv") == candidate.regions
    assert op_types(rewritten)[-1] == "Relu"  # the activation stays where it was
    x = np.random.default_rng(1).normal(size=(2, 6, *size)).astype(np.float32)
    assert_same_outputs(model, rewritten, x)


@pytest.mark.parametrize("size,rate", [((16, 16), 16), ((16, 16), 36), ((33, 31), 33), ((64, 64), 64)])
def test_a_rate_at_least_the_map_size_is_one_1x1_conv(size, rate):
    model = dilated_conv(rate=rate)
    rewritten = rewrite_atrous(model, size, ["aspp"])
    assert op_types(rewritten) == ["Conv", "Relu"]
    conv = rewritten.graph.node[0]
    weight = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}[conv.input[1]]
    original = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(weight, original[:, :, 1:2, 1:2])  # the centre tap alone
    x = np.random.default_rng(2).normal(size=(1, 6, *size)).astype(np.float32)
    assert_same_outputs(model, rewritten, x)


@pytest.mark.parametrize("stride,group,size,rate", [
    (2, 1, (33, 31), 6), (2, 1, (64, 64), 12), (2, 1, (32, 32), 24), (1, 2, (33, 31), 12), (1, 6, (32, 32), 6),
    (2, 3, (16, 16), 12),
])
def test_strides_and_groups(stride, group, size, rate):
    model = dilated_conv(cout=6, rate=rate, stride=stride, group=group)
    rewritten = rewrite_atrous(model, size, ["aspp"])
    assert all(a.i == group for n in rewritten.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    x = np.random.default_rng(3).normal(size=(1, 6, *size)).astype(np.float32)
    assert_same_outputs(model, rewritten, x)


@pytest.mark.parametrize("split", ["columns", "rows"])
@pytest.mark.parametrize("size,rate,stride", [((33, 31), 12, 1), ((64, 64), 36, 2), ((16, 16), 24, 1)])
def test_splitting_one_axis_only_keeps_the_other_axis_padding(split, size, rate, stride):
    model = dilated_conv(rate=rate, stride=stride)
    (both,) = atrous_candidates(model, size)
    (one_axis,) = atrous_candidates(model, size, split=split)
    assert both.macs_after <= one_axis.macs_after < one_axis.macs_before == both.macs_before
    rewritten = rewrite_atrous(model, size, ["aspp"], split=split)
    assert op_types(rewritten).count("Conv") == one_axis.regions <= 3
    x = np.random.default_rng(6).normal(size=(1, 6, *size)).astype(np.float32)
    assert_same_outputs(model, rewritten, x)
    with pytest.raises(BadInputError, match="split 'diagonal'"):
        atrous_candidates(model, size, split="diagonal")


def test_asymmetric_pads_and_a_5x5_kernel():
    model = dilated_conv(rate=5, kernel=5, pads=[3, 9, 12, 1])
    rewritten = rewrite_atrous(model, (21, 19), ["aspp"])
    x = np.random.default_rng(4).normal(size=(1, 6, 21, 19)).astype(np.float32)
    assert_same_outputs(model, rewritten, x)


def test_macs_counted_by_hand():
    """16x16, rate 6, pads 6: along each axis rows 0-5 see taps 1-2, rows 6-9 all three, rows 10-15 taps 0-1,
    so 6*2 + 4*3 + 6*2 = 36 of the 16*3 = 48 tap positions see the image, in both axes."""
    bands = axis_bands(16, 3, 1, 6, 6, 6)
    assert [(b.start, b.stop, b.first_tap, b.last_tap) for b in bands] == [(0, 6, 1, 2), (6, 10, 0, 2), (10, 16, 0, 1)]
    (candidate,) = atrous_candidates(dilated_conv(cin=6, cout=5, rate=6), (16, 16))
    assert candidate.regions == 9
    assert candidate.macs_before == 5 * 6 * 16 * 16 * 9
    assert candidate.macs_after == 5 * 6 * 36 * 36
    assert candidate.padding_share == pytest.approx(1 - 36 * 36 / (48 * 48))


def test_the_rewritten_model_is_fixed_at_the_given_size():
    rewritten = rewrite_atrous(dilated_conv(rate=12), (32, 32), ["aspp"])
    dims = rewritten.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "n" and [d.dim_value for d in dims[2:]] == [32, 32]


def test_refusals_name_the_node():
    with pytest.raises(BadInputError, match="aspp.*auto_pad=SAME_UPPER"):
        rewrite_atrous(dilated_conv(rate=6, auto_pad="SAME_UPPER"), (16, 16), ["aspp"])
    with pytest.raises(BadInputError, match="'nope' is not a node"):
        rewrite_atrous(dilated_conv(rate=6), (16, 16), ["nope"])
    with pytest.raises(BadInputError, match="'relu' is not a dilated Conv"):
        rewrite_atrous(dilated_conv(rate=6), (16, 16), ["relu"])
    with pytest.raises(BadInputError, match="fixed at 16x16"):
        rewrite_atrous(dilated_conv(rate=6, dims=(1, None, 16, 16)), (32, 32), ["aspp"])
    no_padding = dilated_conv(rate=2, pads=[0, 0, 0, 0])
    assert atrous_candidates(no_padding, (16, 16)) == []
    with pytest.raises(BadInputError, match="aspp.*every tap sees the image"):
        rewrite_atrous(no_padding, (16, 16), ["aspp"])


def test_refuses_weights_that_are_not_constant_and_convs_that_are_not_2d():
    weight_input = dilated_conv(rate=6)
    weight_input.graph.input.append(helper.make_tensor_value_info("w", F, [5, 6, 3, 3]))
    del weight_input.graph.initializer[0]
    assert "not a constant" in atrous_unmatched(weight_input, (16, 16))["aspp"]
    with pytest.raises(BadInputError, match="'aspp' cannot be split: its weights are not a constant"):
        rewrite_atrous(weight_input, (16, 16), ["aspp"])

    rng = np.random.default_rng(0)
    conv1d = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1d", dilations=[4], pads=[4, 4]),
         helper.make_node("Conv", ["img", "w2"], ["z"], name="conv2d", dilations=[4, 4], pads=[4, 4, 4, 4])],
        [helper.make_tensor_value_info("img", F, [1, 2, 16, 16]), helper.make_tensor_value_info("x", F, [1, 2, 16])],
        [helper.make_tensor_value_info("y", F, [1, 3, 16]), helper.make_tensor_value_info("z", F, [1, 3, 16, 16])],
        [numpy_helper.from_array(rng.normal(size=(3, 2, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w2")])
    with pytest.raises(BadInputError, match="'conv1d' cannot be split: a 1-D convolution"):
        rewrite_atrous(conv1d, (16, 16), ["conv1d"])
    assert [c.node for c in atrous_candidates(conv1d, (16, 16))] == ["conv2d"]


@pytest.mark.slow
def test_deeplabv3_resnet50_aspp_is_rewritten_and_matches(tmp_path):
    torch = pytest.importorskip("torch")
    from segdeploy.models.registry import create_model

    torch.manual_seed(0)
    net = create_model("deeplabv3_resnet50", num_classes=21).eval()
    path = tmp_path / "deeplabv3.onnx"
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, 128, 128), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    model = onnx.load(str(path))
    candidates = atrous_candidates(model, (128, 128))
    aspp = [c for c in candidates if c.dilation in ((12, 12), (24, 24), (36, 36))]
    assert len(aspp) == 3 and all(c.map_size == (16, 16) for c in aspp)  # output stride 8
    assert [c.regions for c in aspp] == [9, 1, 1]  # rates 24 and 36 ≥ 16: 1x1 convs
    assert any(c.dilation in ((2, 2), (4, 4)) for c in candidates)  # the dilated backbone's 3x3s too
    rewritten = rewrite_atrous(model, (128, 128), [c.node for c in candidates])
    assert not {c.node for c in aspp} & {n.name for n in rewritten.graph.node if n.op_type == "Conv" and
                                          any(a.name == "kernel_shape" and list(a.ints) == [3, 3] for a in n.attribute)}
    x = np.random.default_rng(5).normal(size=(1, 3, 128, 128)).astype(np.float32)
    assert_same_outputs(model, rewritten, x)
