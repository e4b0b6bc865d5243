"""The fused upsample + argmax rewrite: hand-built Resize + ArgMax graphs in every coordinate mode, the
trained fixture's export, and the paths it must refuse; every graph run by ONNX Runtime (the fused
node through onnxruntime-extensions and K1's C kernel) against the unfused graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segdeploy.backend.onnxrt.runner import OnnxrtRunner, SessionFromOnnx
from segdeploy.head import onnx_node
from segdeploy.head.artifact import apply_head, count_near_ties
from segdeploy.head.fuse import NotFusable, fuse_upsample_argmax
from segdeploy.head.graph import append_head
from segdeploy.lint import lint_onnx
from segdeploy.outputs import Head

pytest.importorskip("onnxruntime_extensions")

F, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64
SHAPES = [(1, 3, 32, 48), (2, 3, 24, 40)]


def scores_graph(classes=5, mode="half_pixel", *, scales=None, softmax=False, fp16=False, opset=18, pool=4,
                 resize_attributes=None, extra_consumer=False) -> onnx.ModelProto:
    """images -> AveragePool(pool) -> 1x1 Conv (classes) -> Resize(linear, mode) to the image's size
    (or by constant ``scales``) -> [Softmax] -> logits (N, classes, H, W)."""
    rng = np.random.default_rng(classes)
    inits = [numpy_helper.from_array(rng.normal(0, 1.5, (classes, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.5, classes).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([4], np.int64), "four")]
    nodes = [helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
             helper.make_node("Conv", ["pooled", "w", "b"], ["low"])]
    low = "low"
    if fp16:
        nodes.append(helper.make_node("Cast", ["low"], ["low16"], to=F16))
        low = "low16"
    attributes = {"mode": "linear", "coordinate_transformation_mode": mode, **(resize_attributes or {})}
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        nodes.append(helper.make_node("Resize", [low, "roi", "scales"], ["resized"], name="final_resize", **attributes))
    else:  # sizes = (N, C) of the scores, (H, W) of the image: what torch's exporters write for F.interpolate(size=)
        nodes += [helper.make_node("Shape", [low], ["low_shape"]), helper.make_node("Shape", ["images"], ["image_shape"]),
                  helper.make_node("Slice", ["low_shape", "zero", "two"], ["nc"]),
                  helper.make_node("Slice", ["image_shape", "two", "four"], ["hw"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
                  helper.make_node("Resize", [low, "roi", "", "sizes"], ["resized"], name="final_resize", **attributes)]
    last = "resized"
    if fp16:
        nodes.append(helper.make_node("Cast", ["resized"], ["resized32"], to=F))
        last = "resized32"
    nodes.append(helper.make_node("Softmax" if softmax else "Identity", [last], ["logits"], **({"axis": 1} if softmax else {})))
    outputs = [helper.make_tensor_value_info("logits", F, ["N", classes, "H", "W"])]
    if extra_consumer:
        nodes.append(helper.make_node("ReduceMax", ["resized"], ["peak"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("peak", F, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", F, ["N", 3, "H", "W"])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def feeds(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [{"images": rng.normal(0, 1, shape).astype(np.float32)} for shape in shapes]


def run(model: onnx.ModelProto, feed: dict, folder) -> dict:
    path = folder / f"model-{abs(hash(model.SerializeToString())) % 10**8}.onnx"
    onnx.save(model, str(path))
    with OnnxrtRunner(SessionFromOnnx(path)) as runner:
        return runner.infer(feed)


def labels_graph(scores: onnx.ModelProto, classes: int, head: Head = Head()) -> onnx.ModelProto:
    return append_head(scores, "labels", prediction="logits", head=head, classes=classes)[0]


def check_fused(scores: onnx.ModelProto, classes: int, tmp_path, head: Head = Head(), fp16: bool = False):
    """Fuse the labels graph of ``scores``; returns (fusion, [(agreement, differing, near-ties)] per shape)."""
    unfused = labels_graph(scores, classes, head)
    fused, fusion = fuse_upsample_argmax(unfused, "labels", "images", feeds(), head=head)
    onnx.checker.check_model(fused)
    assert [n.op_type for n in fused.graph.node if n.domain == onnx_node.DOMAIN] == ["UpsampleArgmax"]
    assert not {"Resize", "ArgMax"} & {n.op_type for n in fused.graph.node}
    figures = []
    for feed in feeds(seed=1):
        logits = run(scores, feed, tmp_path)["logits"]
        expected = run(unfused, feed, tmp_path)["labels"]
        labels = run(fused, feed, tmp_path)["labels"]
        assert labels.dtype == expected.dtype and labels.shape == expected.shape
        assert len(np.unique(expected)) >= 3  # several classes predicted: agreement proves something
        differ = int((labels != expected).sum())
        figures.append((1 - differ / labels.size, differ, count_near_ties(logits, expected, labels, head,
                                                                          np.float16 if fp16 else np.float32)))
    return fusion, figures


@pytest.mark.parametrize("mode", onnx_node.COORDINATE_MODES)
@pytest.mark.parametrize("given", ["sizes", "scales"])
def test_resize_then_argmax_fuses_in_every_coordinate_mode(mode, given, tmp_path):
    scores = scores_graph(7, mode, scales=[1, 1, 4, 4] if given == "scales" else None)
    fusion, figures = check_fused(scores, 7, tmp_path)
    assert fusion.coordinate_transformation_mode == mode and fusion.labels_dtype == "uint8"
    assert (fusion.scale_height, fusion.scale_width) == ((4.0, 4.0) if given == "scales" else (0.0, 0.0))
    assert fusion.replaced == ("Resize", "Identity", "ArgMax", "Cast")
    for agreement, differ, ties in figures:
        assert agreement >= 0.9999 and ties == differ, figures  # any disagreement is a near-tie of two classes


@pytest.mark.parametrize("mode", ["half_pixel", "asymmetric"])
def test_fused_node_uses_the_scales_it_was_given(mode, tmp_path):
    """A non-integer scale (x2.5): the source coordinates come from the scale, not from out / in."""
    resize = helper.make_node("Resize", ["scores", "roi", "scales"], ["logits"], name="final_resize", mode="linear",
                              coordinate_transformation_mode=mode)
    graph = helper.make_graph([resize], "g", [helper.make_tensor_value_info("scores", F, ["N", 6, "h", "w"]),
                                              helper.make_tensor_value_info("reference", F, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("logits", F, ["N", 6, "H", "W"])],
                              [numpy_helper.from_array(np.array([], np.float32), "roi"),
                               numpy_helper.from_array(np.array([1, 1, 2.5, 2.5], np.float32), "scales")])
    scores = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    unfused = labels_graph(scores, 6)
    rng = np.random.default_rng(3)
    checks = [{"scores": rng.normal(size=(n, 6, h, w)).astype(np.float32),
               "reference": np.zeros((n, 1, h * 5 // 2, w * 5 // 2), np.float32)} for n, h, w in ((1, 8, 12), (2, 6, 10))]
    fused, fusion = fuse_upsample_argmax(unfused, "labels", "reference", checks)
    assert (fusion.scale_height, fusion.scale_width) == (2.5, 2.5)
    for feed in checks:
        logits = run(scores, feed, tmp_path)["logits"]
        expected, labels = run(unfused, feed, tmp_path)["labels"], run(fused, feed, tmp_path)["labels"]
        assert (labels != expected).sum() == count_near_ties(logits, expected, labels) and (labels == expected).mean() >= 0.9999


def test_softmax_between_and_fp16_scores_fuse(tmp_path):
    softmax = scores_graph(5, "align_corners", softmax=True)
    fusion, figures = check_fused(softmax, 5, tmp_path, head=Head("multiclass", "softmax"))
    assert fusion.replaced == ("Resize", "Softmax", "ArgMax", "Cast")
    assert all(agreement >= 0.9999 and ties == differ for agreement, differ, ties in figures), figures

    fp16 = scores_graph(5, "pytorch_half_pixel", fp16=True)
    fusion, figures = check_fused(fp16, 5, tmp_path, fp16=True)
    assert fusion.replaced == ("Resize", "Cast", "Identity", "ArgMax", "Cast")
    # The unfused graph rounds the upsampled scores to float16 (ties the fused kernel breaks by the true maximum).
    assert all(agreement >= 0.999 and ties == differ for agreement, differ, ties in figures), figures
    fused, _ = fuse_upsample_argmax(labels_graph(fp16, 5), "labels", "images", feeds())
    node = next(n for n in fused.graph.node if n.op_type == onnx_node.OP_TYPE)
    cast = next(n for n in fused.graph.node if n.op_type == "Cast" and n.output[0] == node.input[0])
    assert cast.attribute[0].i == F  # the node reads float32: onnxruntime-extensions takes no float16


def test_the_node_writes_int32_and_a_cast_makes_the_uint8_output():
    """TensorRT gives a plugin no uint8 output: the node's own output is int32 in every graph, and a
    uint8 graph output (classes <= 255) comes from a Cast after it."""
    fused, _ = fuse_upsample_argmax(labels_graph(scores_graph(5, "half_pixel"), 5), "labels", "images", feeds())
    node = next(n for n in fused.graph.node if n.op_type == onnx_node.OP_TYPE)
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "labels_dtype")) == b"int32"
    cast = fused.graph.node[-1]
    assert cast.op_type == "Cast" and list(cast.input) == list(node.output) and cast.output[0] == "labels"
    assert cast.attribute[0].i == TensorProto.UINT8
    assert fused.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8


def test_int32_labels_for_more_than_255_classes(tmp_path):
    scores = scores_graph(300, "half_pixel")
    fusion, figures = check_fused(scores, 300, tmp_path)
    assert fusion.labels_dtype == "int32"
    assert all(agreement >= 0.9999 and ties == differ for agreement, differ, ties in figures), figures


@pytest.mark.parametrize(("change", "reason"), [
    ({"resize_attributes": {"mode": "nearest"}}, "mode 'nearest'"),
    ({"resize_attributes": {"mode": "cubic"}}, "mode 'cubic'"),
    ({"mode": "tf_crop_and_resize"}, "'tf_crop_and_resize'"),
    ({"mode": "half_pixel_symmetric", "opset": 19}, "'half_pixel_symmetric'"),
    ({"resize_attributes": {"antialias": 1}}, "antialias"),
    ({"resize_attributes": {"exclude_outside": 1}}, "exclude_outside"),
    ({"resize_attributes": {"keep_aspect_ratio_policy": "not_larger"}}, "keep_aspect_ratio_policy"),
    ({"scales": [1, 1, 2, 2]}, "not the image's"),
    ({"scales": [1, 2, 4, 4]}, "scales the batch or the classes"),
    ({"extra_consumer": True}, "feeds more than the argmax"),
    ({"opset": 10, "scales": [1, 1, 4, 4]}, "opset-10"),
])  # fmt: skip
def test_paths_the_kernel_cannot_reproduce_are_refused_with_the_reason(change, reason):
    options = dict(change)
    mode = options.pop("mode", "half_pixel")
    scores = scores_graph(4, mode, **options)
    if mode == "tf_crop_and_resize":  # needs an roi to be valid at all
        scores.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32), "roi"))
    unfused = labels_graph(scores, 4)
    with pytest.raises(NotFusable, match=reason):
        fuse_upsample_argmax(unfused, "labels", "images", feeds())


def test_graphs_without_an_upsample_or_argmax_are_refused():
    from onnx_graphs import seg_graph

    conv_only = labels_graph(seg_graph(classes=4), 4)
    with pytest.raises(NotFusable, match="not from a bilinear Resize"):
        fuse_upsample_argmax(conv_only, "labels", "images", feeds())
    binary = append_head(scores_graph(1), "labels", prediction="logits", head=Head.detect(1), classes=2)[0]
    with pytest.raises(NotFusable, match="binary"):
        fuse_upsample_argmax(binary, "labels", "images", feeds(), head=Head.detect(1))
    with pytest.raises(NotFusable, match="not a Cast of an ArgMax"):
        fuse_upsample_argmax(scores_graph(4), "logits", "images", feeds())


def test_the_trained_fixture_export_fuses_and_reads_like_its_scores(fixture_artifact, tmp_path):
    from segdeploy.manifest import read_manifest
    from segdeploy.parity import sample_feed

    result = apply_head(fixture_artifact, "labels", fused=True, output_dir=tmp_path / "fused")
    manifest = result.manifest
    assert manifest["head"]["fused"] is True and manifest["head"]["coordinate_transformation_mode"] == "half_pixel"
    assert manifest["output"]["fused"] is True and Head.from_manifest(manifest).fused
    assert all(p.label_agreement >= 0.9999 and p.near_ties == p.disagreeing_pixels for p in result.parity)
    model = onnx.load(str(tmp_path / "fused" / "model.onnx"))
    node = model.graph.node[-2]  # the last node casts its int32 labels to uint8
    assert node.op_type == "UpsampleArgmax" and node.input[1] == manifest["input"]["name"]
    assert model.graph.node[-1].op_type == "Cast" and list(model.graph.node[-1].input) == list(node.output)
    feed = sample_feed((3, 3, 64, 96), read_manifest(fixture_artifact / "manifest.json"), seed=4)
    with OnnxrtRunner.from_artifact(fixture_artifact / "model.onnx") as scores_runner:
        logits = scores_runner.infer(feed)["logits"]
    with OnnxrtRunner.from_artifact(tmp_path / "fused" / "model.onnx", manifest) as runner:
        labels = runner.infer(feed)["labels"]
    expected = logits.argmax(1)
    assert labels.dtype == np.uint8 and (labels != expected).sum() == count_near_ties(logits, expected, labels)
    assert (labels == expected).mean() >= 0.9999 and len(np.unique(expected)) >= 3


def test_lint_knows_the_fused_node_per_target():
    model, _ = fuse_upsample_argmax(labels_graph(scores_graph(4), 4), "labels", "images", feeds())
    [finding] = [f for f in lint_onnx(model, "trt10") if f.rule == "custom-op"]
    assert finding.severity == "info" and "fused upsample + argmax" in finding.message and "plugin" in finding.message
    [old] = [f for f in lint_onnx(model, "jetpack6.0") if f.rule == "custom-op"]
    assert old.severity == "error" and "IPluginV3" in old.message and "TensorRT 8.6" in old.message
    assert [f.severity for f in lint_onnx(model, "cpu") if f.rule == "custom-op"] == ["info"]
    dla = [f for f in lint_onnx(model, "jetpack6.2", dla=True) if f.op_type == "UpsampleArgmax" and f.rule == "dla-op"]
    assert len(dla) == 1 and "DLA runs no plugins" in dla[0].message and dla[0].severity == "warning"
    no_fallback = lint_onnx(model, "jetpack6.2", dla=True, gpu_fallback=False)
    assert any(f.op_type == "UpsampleArgmax" and f.severity == "error" for f in no_fallback)
