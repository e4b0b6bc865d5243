"""The fused upsample + argmax kernel (segdeploy.head.kernel) against ONNX Runtime running the graph
it replaces: Resize(linear) then ArgMax(axis=1), built with onnx.helper. Labels must agree except at
ties: where they differ, ONNX Runtime's own resized scores of the two classes must be within 1e-5
(relative, values below 1 counted as 1)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from segdeploy.errors import BadInputError
from segdeploy.head.kernel import upsample_argmax

ort = pytest.importorskip("onnxruntime")

MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
TIE_TOLERANCE = 1e-5


def resize_argmax_session(mode: str, *, half: bool, sizes=None, scales=None, opset: int = 17):
    """An ONNX Runtime session of scores -> [Cast] -> Resize(linear, mode) -> ArgMax(axis=1), with the
    resized scores as a second output (to tell ties); the Resize gets ``sizes`` or ``scales``."""
    nodes, initializers = [], []
    source = "scores"
    if half:
        nodes.append(helper.make_node("Cast", ["scores"], ["scores32"], to=TensorProto.FLOAT))
        source = "scores32"
    if sizes is not None:
        initializers.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
        resize_inputs = [source, "", "", "sizes"]
    else:
        initializers.append(numpy_helper.from_array(np.asarray(scales, np.float32), "scales"))
        resize_inputs = [source, "", "scales"]
    nodes.append(helper.make_node("Resize", resize_inputs, ["resized"], mode="linear",
                                  coordinate_transformation_mode=mode))
    nodes.append(helper.make_node("ArgMax", ["resized"], ["labels"], axis=1, keepdims=0))
    scores_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "resize_argmax", [helper.make_tensor_value_info("scores", scores_type, None)],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, None),
         helper.make_tensor_value_info("resized", TensorProto.FLOAT, None)],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def scores_for(shape, seed: int, dtype=np.float32) -> np.ndarray:
    return (2.0 * np.random.default_rng(seed).normal(size=shape)).astype(dtype)


def expect_ort_labels(labels: np.ndarray, session, scores: np.ndarray) -> int:
    """Assert that ``labels`` equal ONNX Runtime's but at ties; returns the number of tie disagreements."""
    ort_labels, resized = session.run(None, {"scores": scores})
    assert labels.shape == ort_labels.shape
    differ = labels.astype(np.int64) != ort_labels
    if differ.any():
        n, y, x = np.nonzero(differ)
        top = resized[n, ort_labels[n, y, x], y, x].astype(np.float64)
        chosen = resized[n, labels[n, y, x].astype(np.int64), y, x].astype(np.float64)
        tolerance = TIE_TOLERANCE * np.maximum(1.0, np.abs(top))
        beyond = top - chosen >= tolerance
        assert not beyond.any(), (
            f"{int(beyond.sum())} of {labels.size} labels differ from ONNX Runtime beyond a tie, e.g. at "
            f"{(n[beyond][0], y[beyond][0], x[beyond][0])}: {top[beyond][0]} vs {chosen[beyond][0]}")
    return int(differ.sum())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,size", [
    ((1, 21, 33, 33), (100, 100)),   # non-integer scale
    ((2, 19, 16, 32), (128, 256)),   # x8, batch 2
    ((1, 5, 7, 9), (28, 36)),        # x4, odd sizes
    ((1, 2, 11, 13), (22, 26)),      # x2
    ((1, 3, 20, 30), (7, 11)),       # downsampling
    ((1, 4, 6, 7), (1, 15)),         # an output axis of length 1
])
def test_labels_equal_onnx_runtime_resize_then_argmax(mode, shape, size):
    scores = scores_for(shape, seed=sum(shape) + size[0])
    labels = upsample_argmax(scores, size, coordinates=mode)
    assert labels.dtype == np.uint8 and labels.shape == (shape[0], *size)
    session = resize_argmax_session(mode, half=False, sizes=[shape[0], shape[1], *size])
    expect_ort_labels(labels, session, scores)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_size,scales,size", [
    ((10, 12), (2.5, 3.3), (25, 39)),   # floor(10 x 2.5), floor(12 x 3.3)
    ((16, 16), (4.0, 4.0), (64, 64)),
    ((9, 10), (1.0, 8.0), (9, 80)),     # an axis ONNX Runtime leaves untransformed (scale 1)
])
def test_explicit_scales_place_the_coordinates_as_the_resize_does(mode, in_size, scales, size):
    scores = scores_for((1, 7, *in_size), seed=int(scales[1] * 10))
    labels = upsample_argmax(scores, size, coordinates=mode, scales=scales)
    session = resize_argmax_session(mode, half=False, scales=[1.0, 1.0, *scales])
    expect_ort_labels(labels, session, scores)


@pytest.mark.parametrize("mode", MODES)
def test_float16_scores(mode):
    scores = scores_for((2, 21, 32, 32), seed=3, dtype=np.float16)
    labels = upsample_argmax(scores, (128, 128), coordinates=mode)
    expect_ort_labels(labels, resize_argmax_session(mode, half=True, sizes=[2, 21, 128, 128]), scores)
    assert np.array_equal(labels, upsample_argmax(scores.astype(np.float32), (128, 128), coordinates=mode))


def test_300_classes_give_int32_labels():
    scores = scores_for((1, 300, 12, 10), seed=5)
    labels = upsample_argmax(scores, (96, 80))
    assert labels.dtype == np.int32 and labels.max() >= 256
    expect_ort_labels(labels, resize_argmax_session("half_pixel", half=False, sizes=[1, 300, 96, 80]), scores)


def test_labels_dtype_default_and_choice():
    scores = scores_for((1, 255, 4, 4), seed=6)
    assert upsample_argmax(scores, (8, 8)).dtype == np.uint8
    assert upsample_argmax(scores, (8, 8), labels_dtype="int32").dtype == np.int32
    assert upsample_argmax(scores_for((1, 256, 4, 4), seed=6), (8, 8)).dtype == np.int32
    wide = upsample_argmax(scores_for((1, 256, 4, 4), seed=6), (8, 8), labels_dtype=np.uint8)
    assert wide.dtype == np.uint8


def test_thread_counts_give_identical_labels():
    scores = scores_for((2, 19, 33, 65), seed=9)
    one = upsample_argmax(scores, (263, 517), threads=1)
    for threads in (2, 3, 0):
        assert np.array_equal(one, upsample_argmax(scores, (263, 517), threads=threads))


def test_non_contiguous_scores_are_read_as_their_values():
    scores = scores_for((1, 6, 16, 20), seed=10)
    view = scores[:, :, :, ::2]
    assert np.array_equal(upsample_argmax(view, (64, 40)), upsample_argmax(np.ascontiguousarray(view), (64, 40)))


@pytest.mark.parametrize("call,message", [
    (lambda s: upsample_argmax(s[0], (8, 8)), "scores must be (N, C, H, W)"),
    (lambda s: upsample_argmax(s.astype(np.float64), (8, 8)), "float32 or float16, got float64"),
    (lambda s: upsample_argmax(s.astype(np.int32), (8, 8)), "float32 or float16, got int32"),
    (lambda s: upsample_argmax(s[:, :0], (8, 8)), "scores dimension 1 (C)"),
    (lambda s: upsample_argmax(s, (0, 8)), "size[0] must be an integer >= 1"),
    (lambda s: upsample_argmax(s, (8, -2)), "size[1] must be an integer >= 1"),
    (lambda s: upsample_argmax(s, (8.5, 8)), "size[0]"),
    (lambda s: upsample_argmax(s, 8), "size must be a pair"),
    (lambda s: upsample_argmax(s, (8, 8, 8)), "size must be a pair"),
    (lambda s: upsample_argmax(s, (8, 8), coordinates="tf_crop_and_resize"), "coordinates must be one of"),
    (lambda s: upsample_argmax(s, (8, 8), scales=(2.0, -1.0)), "scales must be two finite numbers > 0"),
    (lambda s: upsample_argmax(s, (8, 8), scales=(2.0, float("nan"))), "scales must be two finite numbers"),
    (lambda s: upsample_argmax(s, (8, 8), scales=(2.0,)), "scales must be a pair"),
    (lambda s: upsample_argmax(s, (8, 8), labels_dtype="int64"), "labels_dtype must be uint8 or int32"),
    (lambda s: upsample_argmax(s, (8, 8), threads=-1), "threads must be an integer >= 0"),
    (lambda s: upsample_argmax(np.zeros((1, 300, 4, 4), np.float32), (8, 8), labels_dtype="uint8"),
     "uint8 labels hold at most 256 classes"),
])
def test_bad_input_is_refused_with_a_message(call, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        call(scores_for((1, 3, 4, 4), seed=1))
