"""bench, inspect, lint, build, verify and crf on ONNX files a user brings, without a manifest:
the graph's own input name, channel count and fixed dims are used, the prediction output is read as
its head says (binary threshold or argmax), and what segdeploy assumes is shown. Real CLI, real ONNX
Runtime, real TensorRT for RTX builds (skipped where it is not installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from rtx import NO_RTX, build_rtx, rtx_installed

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False)
nn = torch.nn


class SegNet(nn.Module):
    """conv-relu-conv to ``classes`` channels at input resolution, optionally a sigmoid and a side output."""

    def __init__(self, channels=3, classes=6, sigmoid=False, side=False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1))
        self.sigmoid, self.side = sigmoid, side
        self.aux = nn.Conv2d(channels, 4, 3, padding=1) if side else None

    def forward(self, x):
        y = self.body(x)
        if self.sigmoid:
            y = torch.sigmoid(y)
        return (y, torch.sigmoid(self.aux(x))) if self.side else y


def _export(net, path: Path, shape, opset, input_name="input.1", outputs=("out",), dynamic=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {input_name: {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    if axes:
        axes.update({o: {0: "batch", 2: "height", 3: "width"} for o in outputs})
    torch.onnx.export(net.eval(), torch.zeros(shape), str(path), dynamo=False, opset_version=opset,
                      input_names=[input_name], output_names=list(outputs), dynamic_axes=axes)
    return path


def _fp16_weights_behind_casts(src: Path, dst: Path) -> Path:
    """The graph with every float32 weight stored as float16 and a Cast(to=FLOAT) after it (as some exporters write)."""
    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=init.name + "_cast"))
    for i, node in enumerate(casts):
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One bare ONNX file per kind, each in a folder of its own (no manifest.json)."""
    root = tmp_path_factory.mktemp("foreign")
    made = {
        # 6 classes, input `input.1` fixed 1x3x64x64, opset 11
        "fixed6": _export(SegNet(), root / "fixed6" / "tiny.onnx", (1, 3, 64, 64), 11),
        # binary sigmoid head, dynamic batch/H/W, output `mask`, opset 13
        "binary": _export(SegNet(classes=1, sigmoid=True), root / "binary" / "matting.onnx", (1, 3, 32, 32), 13,
                          outputs=("mask",), dynamic=True),
        # two outputs: the prediction first, a sigmoid side output; fixed 1x3x32x32, opset 17
        "two_outputs": _export(SegNet(classes=4, side=True), root / "two" / "u2net.onnx", (1, 3, 32, 32), 17,
                               outputs=("d0", "side"),),
        # 4- and 6-channel tensor inputs (RGB-D, multispectral), fixed
        "rgbd": _export(SegNet(channels=4, classes=3), root / "rgbd" / "rgbd.onnx", (1, 4, 32, 32), 13, input_name="x"),
        "bands6": _export(SegNet(channels=6, classes=5), root / "bands" / "bands.onnx", (2, 6, 32, 32), 17,
                          input_name="bands"),
    }
    made["fp16casts"] = _fp16_weights_behind_casts(made["fixed6"], root / "fp16casts" / "unet_fp16w.onnx")
    return made


KINDS = {  # kind -> (input name, channels, color, fixed size or None, num_classes, head kind, prediction)
    "fixed6": ("input.1", 3, "RGB", (64, 64), 6, "multiclass", "out"),
    "binary": ("input.1", 3, "RGB", None, 2, "binary", "mask"),
    "two_outputs": ("input.1", 3, "RGB", (32, 32), 4, "multiclass", "d0"),
    "rgbd": ("x", 4, "tensor", (32, 32), 3, "multiclass", "out"),
    "bands6": ("bands", 6, "tensor", (32, 32), 5, "multiclass", "out"),
    "fp16casts": ("input.1", 3, "RGB", (64, 64), 6, "multiclass", "out"),
}


def _cli_json(*args, timeout=300):
    proc = run_cli(*args, "--json", timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- bench


@pytest.mark.parametrize("kind", ["fixed6", "binary", "two_outputs", "rgbd", "bands6", "fp16casts"])
def test_bench_feeds_the_graphs_own_input_and_reads_its_prediction(models, kind):
    name, channels, color, size, classes, head, prediction = KINDS[kind]
    # fixed graphs need no --input-size; a dynamic one is timed at the size given
    extra = () if size else ("--input-size", "32", "48")
    report = _cli_json("bench", models[kind], "--iterations", "2", "--warmup", "0", *extra)
    rows = report["results"]
    assert {r["num_classes"] for r in rows} == {classes}
    assert {r["kind"] for r in rows} == {head} and {r["prediction"] for r in rows} == {prediction}
    assert (report["settings"]["height"], report["settings"]["width"]) == (size or (32, 48))
    about = report["predictions"][str(models[kind])]
    assert about["output"] == prediction and about["kind"] == head
    post = report["processing"]["postprocess"]["what"]
    assert ("one channel > 0.5" in post) if head == "binary" else (f"argmax over {classes} classes" in post)
    if color == "tensor":
        assert "tensor input" in report["processing"]["preprocess"]["what"]
    if kind == "two_outputs":  # timed as the graph is: both outputs computed; the prediction named
        assert rows[0]["outputs"] == ["d0", "side"] and about["side_outputs"] == ["side"]
    if kind == "bands6":  # the graph's fixed batch of 2 is taken without --batch
        assert report["settings"]["batches"] == [2] and rows[0]["batch"] == 2


def test_bench_text_names_the_prediction_and_its_reading(models):
    proc = run_cli("bench", models["two_outputs"], "--iterations", "2", "--warmup", "0")
    assert proc.returncode == 0, proc.stderr
    assert "prediction output 'd0' (multi-class logits: argmax over channels)" in proc.stdout
    assert "side outputs side are computed and timed with it" in proc.stdout


def test_bench_refuses_what_a_fixed_graph_cannot_take(models):
    assert_clean_error(run_cli("bench", models["fixed6"], "--batch", "1,2", "--iterations", "1"), 2,
                       "fixed batch size of 1", "--batch 1,2 cannot be fed")
    assert_clean_error(run_cli("bench", models["fixed6"], "--input-size", "32", "32", "--iterations", "1"), 2,
                       "fixed at 64x64")
    proc = run_cli("bench", models["binary"], "--iterations", "1")
    assert proc.returncode == 2 and "has dynamic dimensions" in proc.stderr and "--input-size H W" in proc.stderr


# ---------------------------------------------------------------- inspect


@pytest.mark.parametrize("kind", ["fixed6", "binary", "two_outputs", "rgbd", "fp16casts"])
def test_inspect_says_what_segdeploy_assumes(models, kind):
    name, channels, color, size, classes, head, prediction = KINDS[kind]
    a = _cli_json("inspect", models[kind])["assumptions"]
    assert a["usable"] and a["from"] == "graph"
    assert (a["input"]["name"], a["input"]["channels"], a["input"]["color"]) == (name, channels, color)
    assert a["input"]["size"] == (list(size) if size else None)
    assert a["prediction"]["output"] == prediction and a["prediction"]["kind"] == head
    assert a["input"]["normalisation_known"] is (color == "tensor")
    text = run_cli("inspect", models[kind]).stdout
    assert f"input:      {name!r}, {channels} channel(s), {color}" in text
    assert ("dynamic (give --size" in text) if size is None else (f"fixed {size[0]}x{size[1]}" in text)
    if color != "tensor":
        assert "normalise:  unknown: give --mean and --std, or record them once with `segdeploy adopt`" in text
    if kind == "binary":
        assert "prediction: output 'mask': binary: one sigmoid probability channel, foreground where > 0.5" in text
    if kind == "two_outputs":
        assert a["side_outputs"] == ["side"] and "side outputs: side" in text
    if kind in ("fixed6", "fp16casts"):  # opset 11: quantize converts it; the parsers take it as is
        assert a["opset"] == 11 and "quantize converts opset 11 to 13 with ONNX's version converter" in text
    if kind == "fp16casts":
        assert a["fp16_weight_casts"] == 4
        assert "4 FP16 weights behind Casts: the graph computes in FP32; fp16/quantize fold them" in text


def test_inspect_an_adopted_file_uses_its_manifest(models, tmp_path):
    path = tmp_path / "adopted.onnx"
    path.write_bytes(models["binary"].read_bytes())
    assert run_cli("adopt", path, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25").returncode == 0
    a = _cli_json("inspect", path)["assumptions"]
    assert a["from"] == "manifest.json" and a["input"]["normalisation_known"] and a["input"]["mean"] == [0.5] * 3


def _save(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_inspect_explains_graphs_segdeploy_cannot_feed(models, tmp_path):
    F = TensorProto.FLOAT
    conv_w = numpy_helper.from_array(np.zeros((2, 3, 1, 1), np.float32), "w")
    # channels-last (NHWC) input
    nhwc = helper.make_model(helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), helper.make_node("Conv", ["t", "w"], ["y"])],
        "nhwc", [helper.make_tensor_value_info("x", F, [1, 64, 64, 3])], [helper.make_tensor_value_info("y", F, None)],
        [conv_w]), opset_imports=[helper.make_opsetid("", 13)])
    # uint8 input
    u8 = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["x"], ["f"], to=F), helper.make_node("Conv", ["f", "w"], ["y"])],
        "u8", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, None)], [conv_w]), opset_imports=[helper.make_opsetid("", 13)])
    for model, fragment in ((nhwc, "looks channels-last (NHWC)"), (u8, "is uint8")):
        path = _save(model, tmp_path / f"{model.graph.name}.onnx")
        a = _cli_json("inspect", path)["assumptions"]
        assert not a["usable"] and fragment in a["problem"]
        assert "cannot run this graph as is" in run_cli("inspect", path).stdout
    # no shape information on the outputs: read by running the graph once
    bare = onnx.load(str(models["rgbd"]))
    del bare.graph.value_info[:]
    for out in bare.graph.output:
        out.type.tensor_type.ClearField("shape")
    a = _cli_json("inspect", _save(bare, tmp_path / "noshape" / "m.onnx"))["assumptions"]
    assert a["usable"] and a["prediction"]["channels"] == 3
    # weights in an external data file beside it
    ext = onnx.load(str(models["fixed6"]))
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save(ext, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    a = _cli_json("inspect", path)["assumptions"]
    assert a["usable"] and a["external_data"] and a["input"]["name"] == "input.1"


# ---------------------------------------------------------------- lint, build, verify


@pytest.mark.parametrize("kind", ["fixed6", "binary", "two_outputs", "rgbd", "bands6", "fp16casts"])
def test_lint_and_rtx_build_of_a_bare_file(models, kind, tmp_path):
    name, channels, color, size, classes, head, prediction = KINDS[kind]
    report = _cli_json("lint", models[kind], "--target", "rtx")
    assert report["errors"] == 0, report  # opset 11, FP16 weights behind Casts: the parser takes them
    if not rtx_installed():
        pytest.skip(NO_RTX)
    options = () if size else ("--opt", "1x3x32x32", "--min", "1x3x16x16", "--max", "2x3x64x64")
    manifest = build_rtx(models[kind], tmp_path / "engine", f"foreign {kind}", *options)
    batch = 2 if kind == "bands6" else 1
    expected = (batch, channels, *size) if size else None
    profile = manifest["profiles"][0][name]
    if expected:  # fixed dims: a fixed profile of the graph's own input
        assert profile == {"min": list(expected), "opt": list(expected), "max": list(expected)}
    else:
        assert profile == {"min": [1, 3, 16, 16], "opt": [1, 3, 32, 32], "max": [2, 3, 64, 64]}
    assert [t["name"] for t in manifest["io"] if t["mode"] == "input"] == [name]
    assert manifest["onnx"]["described_from"] == "graph" and manifest["input"]["name"] == name
    assert manifest["input"]["channels"] == channels and manifest["input"].get("normalisation_known") is (
        None if color == "tensor" else False)
    assert manifest["output"]["name"] == prediction and manifest["output"]["kind"] == head
    assert manifest["precision"] == "fp32"


def test_build_of_a_dynamic_bare_file_asks_for_a_size(models, tmp_path):
    proc = run_cli("build", models["binary"], "--target", "rtx", "--compute-capability", "86", "-o", tmp_path, "--print-trtexec")
    assert_clean_error(proc, 2, str(models["binary"]), "'input.1'", "pass --opt HxW")


def test_rtx_build_of_an_adopted_file_records_its_manifest(models, tmp_path):
    path = tmp_path / "adopted" / "matting.onnx"
    path.parent.mkdir()
    path.write_bytes(models["binary"].read_bytes())
    proc = run_cli("adopt", path, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--size", "32", "32")
    assert proc.returncode == 0, proc.stderr
    manifest = build_rtx(path, tmp_path / "engine", "adopted binary")
    assert manifest["onnx"]["described_from"] == "manifest.json" and manifest["input"]["mean"] == [0.5] * 3
    assert manifest["profiles"][0]["input.1"]["opt"] == [1, 3, 32, 32]
    assert manifest["output"] == json.loads((path.parent / "manifest.json").read_text())["output"]


def test_verify_of_a_bare_file_engine_needs_an_rtx_gpu(models, tmp_path):
    if not rtx_installed():
        pytest.skip(NO_RTX)
    if not torch.cuda.is_available():
        pytest.skip("verify runs the engine: it needs an RTX GPU (compute capability 7.5..12.x) and none is here")
    if torch.cuda.get_device_capability() not in ((7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1)):
        pytest.skip(f"verify runs the engine: {torch.cuda.get_device_name()} is no RTX GPU TensorRT for RTX runs on")
    cc = "".join(map(str, torch.cuda.get_device_capability()))
    out = tmp_path / "engine"
    assert run_cli("build", models["fixed6"], "--target", "rtx", "--compute-capability", cc, "-o", out).returncode == 0
    proc = run_cli("verify", out)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- crf


def test_crf_refines_a_one_channel_binary_output(tmp_path):
    h, w = 24, 32
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2:] = 255  # right half bright: the foreground
    Image.fromarray(image).save(tmp_path / "frame.png")
    logit = np.where(np.arange(w)[None, :] >= w // 2, 2.0, -2.0).astype(np.float32) * np.ones((h, 1), np.float32)
    rng = np.random.default_rng(0)
    noisy = logit + rng.normal(0, 0.5, logit.shape).astype(np.float32)
    noisy[5, 3] = 3.0  # one wrong foreground pixel in the dark half
    np.save(tmp_path / "mask_logits.npy", noisy[None, None])
    np.save(tmp_path / "mask_prob.npy", (1 / (1 + np.exp(-noisy)))[None].astype(np.float32))
    for npy, kind in (("mask_logits.npy", "logits"), ("mask_prob.npy", "probabilities")):
        out = tmp_path / f"{kind}.png"
        proc = run_cli("crf", "--logits", tmp_path / npy, "--image", tmp_path / "frame.png", "--unary-kind", kind,
                       "--out", out, "--probabilities-out", tmp_path / f"{kind}_p.npy", "--json")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["binary"] and result["classes"] == 2
        labels = np.asarray(Image.open(out))
        assert set(np.unique(labels)) == {0, 1}  # not all class 0, as an argmax of one channel would give
        assert labels[:, w // 2 + 2:].all() and not labels[:, : w // 2 - 2].any()
        probabilities = np.load(tmp_path / f"{kind}_p.npy")
        assert probabilities.shape == (2, h, w) and np.allclose(probabilities.sum(0), 1, atol=1e-4)
    text = run_cli("crf", "--logits", tmp_path / "mask_logits.npy", "--image", tmp_path / "frame.png",
                   "--out", tmp_path / "t.png").stdout
    assert "binary (one channel read as probabilities [1-p, p])" in text
    np.save(tmp_path / "bad.npy", noisy[None])
    assert_clean_error(run_cli("crf", "--logits", tmp_path / "bad.npy", "--image", tmp_path / "frame.png",
                               "--unary-kind", "probabilities", "--out", tmp_path / "b.png"), 2, "not [0, 1]")
