"""Small ONNX graphs with depthwise, separable, grouped and dilated convolutions (the conv rewrite's tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 4


def conv_graph(dynamic: bool = True, float16: bool = False, seed: int = 0) -> onnx.ModelProto:
    """input (N,3,H,W) -> 1x1 stem (8) -> depthwise 3x3 + Relu -> 1x1 (16) + Clip(0, 6) -> depthwise 5x5
    stride 2 dilation 2 + HardSwish -> grouped 3x3 (2 channels per group) -> dense 3x3 dilation 2 -> 1x1 (4
    classes) -> logits. Matches: two depthwise layers, one of them also a separable block; unmatched:
    the grouped and the dilated dense Conv."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if float16 else np.float32

    def tensor(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)

    inits = [tensor("stem_w", 8, 3, 1, 1), tensor("stem_b", 8), tensor("dw1_w", 8, 1, 3, 3), tensor("dw1_b", 8),
             tensor("pw1_w", 16, 8, 1, 1), tensor("pw1_b", 16), tensor("dw2_w", 16, 1, 5, 5),
             tensor("grp_w", 16, 2, 3, 3), tensor("dil_w", 16, 16, 3, 3, scale=0.1), tensor("cls_w", CLASSES, 16, 1, 1),
             tensor("cls_b", CLASSES),
             numpy_helper.from_array(np.array(0, dtype), "six_lo"), numpy_helper.from_array(np.array(6, dtype), "six_hi")]
    x_in = "input_f16" if float16 else "input"
    nodes = ([helper.make_node("Cast", ["input"], ["input_f16"], name="to_f16", to=TensorProto.FLOAT16)] if float16 else []) + [
        helper.make_node("Conv", [x_in, "stem_w", "stem_b"], ["stem"], name="stem"),
        helper.make_node("Conv", ["stem", "dw1_w", "dw1_b"], ["dw1"], name="dw1", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["dw1"], ["dw1_relu"], name="dw1_relu"),
        helper.make_node("Conv", ["dw1_relu", "pw1_w", "pw1_b"], ["pw1"], name="pw1"),
        helper.make_node("Clip", ["pw1", "six_lo", "six_hi"], ["pw1_relu6"], name="pw1_relu6"),
        helper.make_node("Conv", ["pw1_relu6", "dw2_w"], ["dw2"], name="dw2", group=16, pads=[4, 4, 4, 4],
                         strides=[2, 2], dilations=[2, 2]),
        helper.make_node("HardSwish", ["dw2"], ["dw2_hs"], name="dw2_hs"),
        helper.make_node("Conv", ["dw2_hs", "grp_w"], ["grp"], name="grouped", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["grp", "dil_w"], ["dil"], name="dilated", pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Conv", ["dil", "cls_w", "cls_b"], ["cls"], name="classifier"),
    ]
    out_elem = TensorProto.FLOAT
    if float16:
        nodes.append(helper.make_node("Cast", ["cls"], ["logits"], name="to_f32", to=TensorProto.FLOAT))
    else:
        nodes[-1].output[0] = "logits"
    dims = ["batch", 3, "height", "width"] if dynamic else [1, 3, 64, 64]
    graph = helper.make_graph(nodes, "conv_graph", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", out_elem, ["batch", CLASSES, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def save_conv_graph(folder: Path, **kwargs) -> Path:
    path = Path(folder) / "convs.onnx"
    onnx.save(conv_graph(**kwargs), str(path))
    return path


NORMALISATION = ("--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")


def depthwise_net(num_classes: int = 3):
    """A PyTorch net with a separable block (depthwise + ReLU6, 1x1 + ReLU) and a dilated depthwise + HardSwish,
    for ``segdeploy export --model conv_graphs:depthwise_net --plugins ...``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16), nn.Hardswish(), nn.Conv2d(16, num_classes, 1),
    ).eval()
