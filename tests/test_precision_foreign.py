"""`segdeploy fp16` and `segdeploy quantize` on models users bring: old opsets, one-channel
(binary) outputs, several outputs, inputs that are not RGB pictures, FP16 weights behind Casts.

The models are small torch networks exported here (a binary one trained briefly on generated
scenes, cached in pytest's cache folder); everything runs for real: the CLI in subprocesses, ONNX
Runtime on the CPU, files on disk. Run with ``-s`` to see the acceptance figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

SIZE = 64
NORM = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
#: Bump when the binary network or its training changes (the cached weights are keyed by it).
BINARY_VERSION = 2


# --- models -------------------------------------------------------------------------------------


class BinaryNet(torch.nn.Module):
    """Foreground/background: one sigmoid channel (``mask``), optionally a side output first."""

    def __init__(self, side: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=4, dilation=4), torch.nn.ReLU(),
        )  # fmt: skip
        self.head = torch.nn.Conv2d(16, 1, 1)
        self.side = torch.nn.Conv2d(16, 1, 1) if side else None

    def forward(self, x):
        features = self.body(x)
        mask = torch.sigmoid(self.head(features))
        if self.side is None:
            return mask
        return torch.sigmoid(self.side(features)), mask  # the prediction is NOT the first output


def normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def binary_state(request):
    """State dict of BinaryNet trained (~1 min on 2 cores) with BCE on scenes (foreground = mask > 0), cached."""
    from segdeploy.fixtures.scenes import generate_scenes

    cache = request.config.cache
    folder = cache.mkdir("segdeploy-foreign-binary") if cache else Path(request.node.path).parent / ".binary-cache"
    path = Path(folder) / f"binary-v{BINARY_VERSION}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    torch.manual_seed(0)
    net = BinaryNet()
    scenes = generate_scenes(192, SIZE, SIZE, seed=11)
    x = torch.from_numpy(normalise(np.stack([s.image for s in scenes])))
    y = torch.from_numpy(np.stack([(s.mask > 0) for s in scenes]).astype(np.float32))[:, None]
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCELoss()
    for _ in range(150):
        index = torch.randint(0, len(x), (16,))
        optimiser.zero_grad()
        loss = loss_fn(net(x[index]), y[index])
        loss.backward()
        optimiser.step()
    state = net.state_dict()
    torch.save(state, path)
    return state


def export(net, path: Path, opset: int, dynamic: bool, outputs=("mask",), channels: int = 3, input_name="input.1") -> Path:
    net.eval()
    axes = {input_name: {0: "batch", 2: "height", 3: "width"}, **{o: {0: "batch", 2: "height", 3: "width"} for o in outputs}}
    torch.onnx.export(net, torch.zeros(1, channels, SIZE, SIZE), str(path), input_names=[input_name], output_names=list(outputs),
                      opset_version=opset, dynamic_axes=axes if dynamic else None, dynamo=False)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def binary_onnx(binary_state, tmp_path_factory) -> Path:
    """The trained binary model, bare (no manifest), opset 13, dynamic batch and size."""
    net = BinaryNet()
    net.load_state_dict(binary_state)
    return export(net, tmp_path_factory.mktemp("binary") / "binary.onnx", 13, dynamic=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Calibration scenes, and held-out scenes with binary masks (0 background, 1 foreground)."""
    from PIL import Image

    from segdeploy.fixtures.scenes import generate_scenes, write_scene_folder

    root = tmp_path_factory.mktemp("scenes")
    calib = write_scene_folder(root / "calib", generate_scenes(16, SIZE, SIZE, seed=21), masks=False)
    val = root / "val"
    for folder in (val / "images", val / "masks"):
        folder.mkdir(parents=True)
    for index, scene in enumerate(generate_scenes(16, SIZE, SIZE, seed=22)):  # held out: seed 11 trained
        Image.fromarray(scene.image).save(val / "images" / f"s{index:02d}.png")
        Image.fromarray((scene.mask > 0).astype(np.uint8)).save(val / "masks" / f"s{index:02d}.png")
    return {"calib": calib, "val": val}


def run_json(*args) -> dict:
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ort_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def held_out_batch(folders) -> np.ndarray:
    from PIL import Image

    from segdeploy.preprocess import input_spec, normalize

    files = sorted((folders["val"] / "images").glob("*.png"))
    # segdeploy's own normalisation: INT8 input quantization turns 1-ulp differences into flips.
    return normalize(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]),
                     input_spec(SIZE, SIZE, mean=(0.5,) * 3, std=(0.25,) * 3))


# --- the binary model: acceptance -----------------------------------------------------------------


def test_binary_fp16_and_int8_keep_the_masks_and_probabilities(binary_onnx, folders, tmp_path):
    x = held_out_batch(folders)
    fp32 = ort_outputs(binary_onnx, x)["mask"]
    assert 0.05 < float((fp32 > 0.5).mean()) < 0.95, "the trained model must predict both classes"

    # FP16, text output: the numbers, no "None" (no manifest, so no target).
    proc = run_cli("fp16", binary_onnx, *NORM, "--size", SIZE, SIZE, "--val", folders["val"], "-o", tmp_path / "fp16")
    assert proc.returncode == 0, proc.stderr
    assert "None" not in proc.stdout + proc.stderr and "no target" in proc.stdout, proc.stdout
    assert "mask agreement" in proc.stdout and "max probability error" in proc.stdout, proc.stdout
    fp16_gate = json.loads((tmp_path / "fp16" / "manifest.json").read_text())["fp16"]["gate"]
    fp16 = ort_outputs(tmp_path / "fp16" / "model.onnx", x)["mask"]
    fp16_agreement = float(((fp16 > 0.5) == (fp32 > 0.5)).mean())
    fp16_prob_error = float(np.abs(fp16 - fp32).max())

    # INT8 for ONNX Runtime on the CPU (the size must be given: the graph is dynamic).
    result = run_json("quantize", binary_onnx, *NORM, "--size", SIZE, SIZE, "--calib", folders["calib"],
                      "--val", folders["val"], "--target", "cpu", "-o", tmp_path / "int8")  # fmt: skip
    int8 = ort_outputs(tmp_path / "int8" / "model.onnx", x)["mask"]
    int8_agreement = float(((int8 > 0.5) == (fp32 > 0.5)).mean())
    int8_prob_error = float(np.abs(int8 - fp32).max())
    print(f"\nbinary model on {len(x)} held-out scenes: FP16 mask agreement {fp16_agreement:.4%}, max prob error "
          f"{fp16_prob_error:.4g}; INT8 (cpu) mask agreement {int8_agreement:.4%}, max prob error {int8_prob_error:.4g}; "
          f"mIoU FP32 {result['gate']['fp32_miou']:.2f}, INT8 {result['gate']['final']['miou']:.2f}")  # fmt: skip

    # Acceptance figures, measured independently of segdeploy's own report ...
    assert fp16_agreement >= 0.99 and fp16_prob_error <= 0.05
    assert int8_agreement >= 0.99
    # ... and segdeploy's report says the same (thresholded masks, not argmax over one channel).
    assert fp16_gate["passed"] and fp16_gate["final"]["agreement"] == pytest.approx(fp16_agreement, abs=1e-6)
    assert fp16_gate["final"]["max_prob_error"] == pytest.approx(fp16_prob_error, rel=1e-3, abs=1e-6)
    gate = result["gate"]
    assert gate["passed"] and gate["final"]["agreement"] == pytest.approx(int8_agreement, abs=1e-6)
    assert gate["final"]["max_prob_error"] == pytest.approx(int8_prob_error, rel=1e-3, abs=1e-6)
    assert gate["prediction_output"] == "mask" and gate["head"].startswith("binary")
    assert gate["fp32_miou"] > 50  # two classes, foreground vs background


def test_a_binary_model_whose_masks_flip_fails_the_gate(tmp_path):
    """logit = x_red + 2049 - 2048.5: FP16 stores both constants as 2048, so every logit drops by
    0.5 and pixels with x_red in (-0.5, 0] flip to background. Argmax over one channel saw 100%
    agreement; the threshold sees the flips."""
    weight = numpy_helper.from_array(np.array([1, 0, 0], np.float32).reshape(1, 3, 1, 1), "w")
    bias = numpy_helper.from_array(np.array([2049.0], np.float32), "b")
    offset = numpy_helper.from_array(np.array(2048.5, np.float32), "offset")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["shifted"], name="conv"),
         helper.make_node("Sub", ["shifted", "offset"], ["logit"], name="unshift")],
        "flips", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1, 1, SIZE, SIZE])], [weight, bias, offset],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "flips.onnx"))
    proc = run_cli("fp16", tmp_path / "flips.onnx", *NORM, "--no-sensitivity", "-o", tmp_path / "out")
    assert_clean_error(proc, 1, "accuracy gate failed", "mask agreement")
    gate = json.loads((tmp_path / "out" / "manifest.json").read_text())["fp16"]["gate"]
    print(f"\nflipping binary model: FP16 mask agreement {gate['final']['agreement']:.4%}, "
          f"max prob error {gate['final']['max_prob_error']:.4g}")
    assert gate["final"]["agreement"] < 0.99 and gate["final"]["max_prob_error"] > 0.05
    # A probability limit catches it too, and is recorded.
    proc = run_cli("fp16", tmp_path / "flips.onnx", *NORM, "--no-sensitivity", "--min-agreement", "0",
                   "--max-prob-error", "0.05", "-o", tmp_path / "out2")  # fmt: skip
    assert_clean_error(proc, 1, "max probability error")


# --- old opsets, FP16 weights behind Casts ---------------------------------------------------------


def test_opset11_graph_is_converted_before_quantizing_and_the_result_loads(binary_state, folders, tmp_path):
    net = BinaryNet()
    net.load_state_dict(binary_state)
    source = export(net, tmp_path / "old.onnx", 11, dynamic=False)
    assert onnx.load(str(source)).opset_import[0].version == 11
    result = run_json("quantize", source, *NORM, "--calib", folders["calib"], "--target", "cpu", "-o", tmp_path / "int8")
    written = tmp_path / "int8" / "model.onnx"
    model = onnx.load(str(written))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)]
    assert opset >= 13 and per_channel
    ort_outputs(written, held_out_batch(folders)[:1])  # ONNX Runtime accepts what was written
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    conversion = manifest["onnx"]["opset_conversion"]["opset"]
    assert (conversion["from"], conversion["to"]) == (11, 13) and conversion["converter"].startswith("onnx.version_converter")
    assert manifest["onnx"]["opset_conversion"]["check"]["passed"]
    assert result["graph_preparation"]["opset"]["from"] == 11 and result["gate"]["passed"]


def with_fp16_weights_behind_casts(path: Path, out: Path) -> int:
    """Store every 4-D weight as float16 behind a Cast to float, as mixed-precision exports do."""
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for tensor in list(graph.initializer):
        if len(tensor.dims) != 4:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name + "_fp16")
        graph.initializer.remove(tensor)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT, name=f"cast_{tensor.name}"))
    nodes = casts + list(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    onnx.save(model, str(out))
    return len(casts)


def test_fp16_weights_behind_casts_are_folded_so_the_convs_are_quantized(binary_onnx, folders, tmp_path):
    source = tmp_path / "casts.onnx"
    casts = with_fp16_weights_behind_casts(binary_onnx, source)
    assert casts == 4
    result = run_json("quantize", source, *NORM, "--size", SIZE, SIZE, "--calib", folders["calib"], "--target", "trt11",
                      "-o", tmp_path / "int8")  # fmt: skip
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [c for c in convs if producers.get(c.input[1]) is not None and producers[c.input[1]].op_type == "DequantizeLinear"]
    assert len(convs) == 4 and len(quantized) == 4, [(c.name, producers.get(c.input[1])) for c in convs]
    assert not [n for n in model.graph.node if n.op_type == "Cast"]
    assert result["graph_preparation"]["fp16_weight_casts_folded"] == 4 and result["gate"]["passed"]

    # FP16 of the same file writes real FP16 weights (not FP16 -> FP32 -> FP16 copies behind Casts).
    run_json("fp16", source, *NORM, "--size", SIZE, SIZE, "-o", tmp_path / "fp16")
    model = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert len(weights) == 4 and all(t.data_type == TensorProto.FLOAT16 for t in weights)


# --- several outputs ---------------------------------------------------------------------------------


def test_several_outputs_gate_the_named_one_and_report_the_rest(binary_state, folders, tmp_path):
    net = BinaryNet(side=True)
    net.load_state_dict({**binary_state, **{k: v for k, v in net.state_dict().items() if k.startswith("side")}})
    source = export(net, tmp_path / "two.onnx", 13, dynamic=True, outputs=("side", "mask"))
    common = [*NORM, "--size", SIZE, SIZE, "--calib", folders["calib"], "--val", folders["val"], "--target", "cpu", "--output-name", "mask"]
    result = run_json("quantize", source, *common, "-o", tmp_path / "both")
    gate = result["gate"]
    assert gate["prediction_output"] == "mask"
    # The gate's figures are the prediction's: its masks give the two-class mIoU.
    x = held_out_batch(folders)
    reference = ort_outputs(source, x)
    written = ort_outputs(tmp_path / "both" / "model.onnx", x)
    assert set(written) == {"side", "mask"}
    agreement = float(((written["mask"] > 0.5) == (reference["mask"] > 0.5)).mean())
    assert gate["final"]["agreement"] == pytest.approx(agreement, abs=1e-6)
    side = gate["final"]["side_outputs"]["side"]
    assert side["max_abs_diff"] == pytest.approx(float(np.abs(written["side"] - reference["side"]).max()), rel=1e-3, abs=1e-6)
    assert side["max_prob_error"] == pytest.approx(side["max_abs_diff"], rel=1e-6)  # already sigmoid probabilities

    proc = run_cli("quantize", source, *common, "--drop-side-outputs", "-o", tmp_path / "one")
    assert proc.returncode == 0, proc.stderr
    assert "dropped side outputs: side" in proc.stdout
    model = onnx.load(str(tmp_path / "one" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["mask"]
    assert not [n for n in model.graph.node if n.op_type == "Conv" and "side" in n.name]
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["output"]["all"] == ["mask"] and manifest["output"]["side_outputs"] == []
    assert manifest["quantization"]["dropped_side_outputs"] == ["side"]


# --- inputs that are not RGB pictures ------------------------------------------------------------------


class TensorNet(torch.nn.Module):
    """Three classes from a 4-channel tensor (RGB-D, multispectral)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.net(x)


def test_four_channel_model_calibrates_and_gates_on_npy_tensors(tmp_path):
    from PIL import Image

    from segdeploy.parity import sample_tensors

    source = export(TensorNet(), tmp_path / "rgbd.onnx", 13, dynamic=True, outputs=("logits",), channels=4)
    calib = tmp_path / "calib"
    calib.mkdir()
    samples = sample_tensors((12, 4, 32, 48), seed=5)
    np.save(calib / "batch.npy", samples[:8])  # (N, C, H, W)
    for i in range(8, 12):
        np.save(calib / f"one_{i}.npy", samples[i])  # (C, H, W)
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    (val / "masks").mkdir()
    held_out = sample_tensors((6, 4, 32, 48), seed=6)
    reference = ort_outputs(source, held_out)["logits"].argmax(1)
    for i, sample in enumerate(held_out):
        np.save(val / "images" / f"v{i}.npy", sample)
        Image.fromarray(reference[i].astype(np.uint8)).save(val / "masks" / f"v{i}.png")

    result = run_json("quantize", source, "--calib", calib, "--val", val, "--target", "cpu", "--min-agreement", "0.9",
                      "-o", tmp_path / "int8")  # fmt: skip
    gate = result["gate"]
    assert result["calibration"]["count"] == 12 and gate["validation"]["kind"] == "tensors"
    assert gate["fp32_miou"] == pytest.approx(100.0) and gate["final"]["miou"] is not None
    assert gate["passed"] and gate["final"]["agreement"] >= 0.9
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["input"]["color"] == "tensor" and manifest["input"]["size"] == [32, 48]
    ort_outputs(tmp_path / "int8" / "model.onnx", held_out[:1])

    # Without --val, fp16 checks on seeded tensors of the size given.
    result = run_json("fp16", source, "--size", 32, 48, "-o", tmp_path / "fp16")
    assert result["gate"]["passed"] and "tensors" in result["gate"]["validation"]["folder"]
    # Tensors of another channel count, or of mixed sizes, are refused by name.
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "a.npy", samples[0, :3])
    assert_clean_error(run_cli("quantize", source, "--calib", bad, "--min-images", "1", "--batch", "1"), 2, "a.npy", "4")
    np.save(bad / "a.npy", samples[0])
    np.save(bad / "b.npy", samples[0, :, :16])
    assert_clean_error(run_cli("quantize", source, "--calib", bad, "--min-images", "1", "--batch", "1"), 2, "one size")


class GrayNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.net(x)


def test_grayscale_model_takes_grayscale_pngs(folders, tmp_path):
    from PIL import Image

    source = export(GrayNet(), tmp_path / "gray.onnx", 13, dynamic=False, outputs=("logits",), channels=1)
    val = tmp_path / "gray_val"
    val.mkdir()
    for path in sorted((folders["calib"] / "images").glob("*.png"))[:8]:
        Image.open(path).convert("L").save(val / path.name)
    result = run_json("fp16", source, "--mean", "0.5", "--std", "0.25", "--val", val, "-o", tmp_path / "fp16")
    assert result["gate"]["passed"] and result["gate"]["validation"]["count"] == 8
    manifest = json.loads((tmp_path / "fp16" / "manifest.json").read_text())
    assert manifest["input"]["color"] == "GRAY" and manifest["input"]["mean"] == [0.5]
    result = run_json("quantize", source, "--mean", "0.5", "--std", "0.25", "--calib", val, "--target", "cpu",
                      "--min-agreement", "0.9", "-o", tmp_path / "int8")  # fmt: skip
    assert result["gate"]["passed"]


def test_dynamic_picture_model_without_size_asks_for_it(binary_onnx, folders, tmp_path):
    source = tmp_path / "dyn.onnx"
    shutil.copy(binary_onnx, source)
    assert_clean_error(run_cli("quantize", source, *NORM, "--calib", folders["calib"]), 2, "--size H W")
    assert_clean_error(run_cli("fp16", source, *NORM), 2, "--size H W")
