"""``segdeploy infer`` and ``segdeploy eval`` on models a user brings: bare ONNX files with
--mean/--std, adopted files, one-channel (binary) outputs with mattes and binary metrics,
several outputs, grayscale and .npy tensor inputs. Real CLI, real ONNX Runtime.

The models are tiny and their answers known: ``Bright`` scores 4 x the mean of the normalised
channels (with mean 0.5, std 0.25: 16 x (pixel/255 - 0.5)), so a pixel is foreground exactly
where it is brighter than mid-grey; the tensor model's logits are its first three channels.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from cli import assert_clean_error, run_cli
from eval_data import iou_loop
from PIL import Image

HALF = ("--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")


def _export(module, path, channels, outputs):
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module.eval(), torch.zeros(1, channels, 8, 8), str(path), dynamo=False, opset_version=13,
                      input_names=["input.1"], output_names=outputs,
                      dynamic_axes={"input.1": {0: "n", 2: "h", 3: "w"}})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: path} of the test models, each in a folder of its own."""
    import warnings

    import torch

    class Bright(torch.nn.Module):
        def __init__(self, channels=3, sigmoid=True, aux=False, bias=0.0):
            super().__init__()
            self.conv, self.sigmoid, self.aux = torch.nn.Conv2d(channels, 1, 1), sigmoid, aux
            with torch.no_grad():
                self.conv.weight.fill_(4.0 / channels)
                self.conv.bias.fill_(bias)

        def forward(self, x):
            y = self.conv(x)
            if self.aux:  # a side output first (the inverse), the prediction second
                return torch.sigmoid(-y), torch.sigmoid(y)
            return torch.sigmoid(y) if self.sigmoid else y

    class FirstThree(torch.nn.Module):
        def forward(self, x):
            return x[:, :3] * 1.0

    root = tmp_path_factory.mktemp("foreign")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "sigmoid": _export(Bright(), root / "sigmoid" / "matting.onnx", 3, ["mask"]),
            "logit": _export(Bright(sigmoid=False), root / "logit" / "matting_logit.onnx", 3, ["mask"]),
            "shifted": _export(Bright(bias=-1.0), root / "shifted" / "matting_int8ish.onnx", 3, ["mask"]),
            "two": _export(Bright(aux=True), root / "two" / "two.onnx", 3, ["aux", "mask"]),
            "gray": _export(Bright(channels=1), root / "gray" / "gray.onnx", 1, ["mask"]),
            "bands": _export(FirstThree(), root / "bands" / "bands.onnx", 4, ["logits"]),
        }


def ort_run(path, x, output=None):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = output or session.get_outputs()[0].name
    return session.run([name], {session.get_inputs()[0].name: x})[0][0]


def normalised(rgb):
    """What HALF does to uint8 pixels (N, C, H, W)."""
    return ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)[None].copy()


def scene(height=20, width=30):
    """Dark left, bright right, a mid-grey band: the bright part is the foreground."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = 30
    rgb[:, width // 2 :] = 220
    rgb[: height // 4, :] = 140  # just above mid-grey: foreground, probability ~0.55
    return rgb


def read(path):
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def test_infer_on_a_bare_binary_onnx_writes_mask_overlay_and_matte_as_ort_says(models, tmp_path):
    rgb = scene()
    Image.fromarray(rgb).save(tmp_path / "street.png")
    probability = ort_run(models["sigmoid"], normalised(rgb))[0]  # dynamic graph: fed at the image's size
    for name in ("sigmoid", "logit"):  # a raw logit is thresholded at 0: the same mask, the sigmoid as matte
        out = tmp_path / name
        proc = run_cli("infer", models[name], tmp_path / "street.png", *HALF, "-o", out, "--json")
        assert proc.returncode == 0, proc.stderr
        (result,) = json.loads(proc.stdout)
        mode, mask = read(result["mask"])
        assert mode == "P" and mask.shape == (20, 30)
        assert np.array_equal(mask, (probability > 0.5).astype(np.uint8))  # not the all-zero argmax of one channel
        assert mask.sum() > 0 and result["kind"] == "binary"
        assert result["foreground_fraction"] == pytest.approx(mask.mean(), abs=1e-4)
        with Image.open(result["mask"]) as image:
            assert image.getpalette()[3:6] == [255, 255, 255]  # foreground visible (white)
        mode, matte = read(result["matte"])
        assert result["matte"] == str(out / "street_matte.png") and mode == "L"
        assert np.abs(matte.astype(int) - np.round(probability * 255)).max() <= 1
        mode, over = read(result["overlay"])
        assert over.shape == (20, 30, 3)
        assert np.array_equal(over[mask == 0], rgb[mask == 0]) and not np.array_equal(over[mask == 1], rgb[mask == 1])

    # without the normalisation: one line naming the file and what to give
    assert_clean_error(run_cli("infer", models["sigmoid"], tmp_path / "street.png", "-o", tmp_path / "x"), 2,
                       "matting.onnx", "--mean and --std")


def test_adopted_file_needs_no_options_and_input_size_still_works(models, tmp_path):
    rgb = scene(24, 32)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert run_cli("adopt", models["two"], *HALF, "--output-name", "mask").returncode == 0
    proc = run_cli("infer", models["two"], tmp_path / "a.png", "-o", tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    expected = ort_run(models["two"], normalised(rgb), "mask")[0] > 0.5
    assert np.array_equal(read(json.loads(proc.stdout)[0]["mask"])[1], expected)
    # --input-size: fed at 12x16, the mask comes back at the image's size
    proc = run_cli("infer", models["two"].parent, tmp_path / "a.png", "-o", tmp_path / "s", "--input-size", "12", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    mask = read(json.loads(proc.stdout)[0]["mask"])[1]
    assert mask.shape == (24, 32) and (mask == expected).mean() > 0.9


def test_output_names_the_prediction_of_a_bare_file_with_several_outputs(models, tmp_path):
    rgb = scene()
    Image.fromarray(rgb).save(tmp_path / "b.png")
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(models["two"].read_bytes())  # no manifest beside it
    expected = ort_run(bare, normalised(rgb), "mask")[0] > 0.5
    proc = run_cli("infer", bare, tmp_path / "b.png", *HALF, "--output-name", "mask", "-o", tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(read(json.loads(proc.stdout)[0]["mask"])[1], expected)
    proc = run_cli("infer", bare, tmp_path / "b.png", *HALF, "-o", tmp_path / "first", "--json")  # default: the first
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(read(json.loads(proc.stdout)[0]["mask"])[1], ~expected)
    assert_clean_error(run_cli("infer", bare, tmp_path / "b.png", *HALF, "--output-name", "nope"), 2, "no output named 'nope'")


def test_grayscale_model_takes_grey_and_colour_pictures(models, tmp_path):
    grey = scene()[..., 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "xray.png")
    Image.fromarray(scene()).save(tmp_path / "colour.png")
    proc = run_cli("infer", models["gray"], tmp_path / "xray.png", tmp_path / "colour.png", "--mean", "0.5", "--std", "0.25",
                   "-o", tmp_path / "o", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    x = ((grey.astype(np.float32) / 255 - 0.5) / 0.25)[None, None]
    expected = ort_run(models["gray"], x)[0] > 0.5
    for result in json.loads(proc.stdout):
        assert np.array_equal(read(result["mask"])[1], expected), result["image"]
    np.save(tmp_path / "t.npy", np.zeros((1, 8, 8), np.float32))
    assert_clean_error(run_cli("infer", models["gray"], tmp_path / "t.npy", "--mean", "0.5", "--std", "0.25"), 2,
                       "t.npy: a .npy tensor, but the model's input")


@pytest.fixture(scope="module")
def tensor_set(tmp_path_factory):
    """images/*.npy (4, 6, 8) and masks/*.png: class = argmax of the first three channels, mostly."""
    root = tmp_path_factory.mktemp("bands")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    truths, preds = [], []
    for i in range(2):
        x = rng.normal(size=(4, 6, 8)).astype(np.float32)
        np.save(root / "images" / f"tile{i}.npy", x)
        pred = x[:3].argmax(0)
        truth = pred.copy()
        truth[0, :4] = (truth[0, :4] + 1) % 3  # a few wrong pixels, one ignored
        truth[5, 7] = 255
        Image.fromarray(truth.astype(np.uint8)).save(root / "masks" / f"tile{i}.png")
        truths.append(truth)
        preds.append(pred)
    return root, np.concatenate([t.ravel() for t in truths]), np.concatenate([p.ravel() for p in preds])


def test_tensor_model_takes_npy_files_in_infer_and_eval(models, tensor_set, tmp_path):
    root, truth, pred = tensor_set
    tile = root / "images" / "tile0.npy"
    proc = run_cli("infer", models["bands"], tile, "-o", tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert np.array_equal(read(result["mask"])[1], np.load(tile)[:3].argmax(0))
    assert result["overlay"] is None and result["matte"] is None  # no picture to draw on
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["tile0_mask.png"]

    np.save(tmp_path / "three.npy", np.zeros((3, 6, 8), np.float32))
    assert_clean_error(run_cli("infer", models["bands"], tmp_path / "three.npy"), 2,
                       "three.npy: 3 channel(s)", "takes 4")  # fmt: skip
    Image.fromarray(scene()).save(tmp_path / "photo.png")
    assert_clean_error(run_cli("infer", models["bands"], tmp_path / "photo.png"), 2, "photo.png", "takes tensors")

    proc = run_cli("eval", models["bands"], "--images", root / "images", "--masks", root / "masks",
                   "-o", tmp_path / "eval", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ious = iou_loop(truth, pred, 3)
    assert report["miou"] == pytest.approx(float(np.nanmean(ious)), abs=1e-3)
    valid = truth != 255
    assert report["pixel_accuracy"] == pytest.approx(100.0 * np.mean(pred[valid] == truth[valid]), abs=1e-3)
    assert report["outputs"]["overlays"] == []


@pytest.fixture(scope="module")
def binary_set(tmp_path_factory):
    """Two pictures with masks in both conventions: 0/255 (saliency) and 0/1 with 255 ignored."""
    root = tmp_path_factory.mktemp("binary")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    a = scene(8, 12)
    truth_a = np.zeros((8, 12), np.uint8)
    truth_a[:, 5:] = 255  # one column more foreground than the model sees
    truth_a[:2] = 0  # the grey band (which the model calls foreground) is background
    b = np.full((6, 6, 3), 200, np.uint8)
    b[:, :2] = 60
    truth_b = np.ones((6, 6), np.uint8)
    truth_b[:, :3] = 0  # column 2 is bright: the model calls it foreground, the truth does not
    truth_b[0] = 255  # ignored row
    for name, rgb, truth in (("a", a, truth_a), ("b", b, truth_b)):
        Image.fromarray(rgb).save(root / "images" / f"{name}.png")
        Image.fromarray(truth).save(root / "masks" / f"{name}.png")
    # the truth as 0/1/ignore, for the hand computation
    return root, {"a": (a, (truth_a >= 128).astype(np.uint8)), "b": (b, truth_b)}


def expected_binary(model, samples, threshold=0.5):
    tp = fp = fn = tn = 0
    maes = []
    for rgb, truth in samples.values():
        p = ort_run(model, normalised(rgb))[0]
        valid = truth != 255
        pred, t = (p > threshold)[valid], truth[valid] == 1
        tp, fp, fn, tn = tp + np.sum(pred & t), fp + np.sum(pred & ~t), fn + np.sum(~pred & t), tn + np.sum(~pred & ~t)
        maes.append(np.mean(np.abs(p[valid] - truth[valid])))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "iou": 100 * tp / (tp + fp + fn),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f_beta": 100 * 1.3 * precision * recall / (0.3 * precision + recall),
        "f1": 100 * 2 * precision * recall / (precision + recall),
        "mae": float(np.mean(maes)),
        "pixel_accuracy": 100 * (tp + tn) / (tp + fp + fn + tn),
    }


def test_eval_scores_a_binary_model_with_iou_f_measure_and_mae(models, binary_set, tmp_path):
    root, samples = binary_set
    proc = run_cli("eval", models["sigmoid"], "--data", root, *HALF, "-o", tmp_path / "e", "--json", "--save-predictions")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    want = expected_binary(models["sigmoid"], samples)
    assert 0 < want["iou"] < 100 and 0 < want["recall"] < 100  # a case with errors of both kinds
    got = report["binary"]
    for key in ("iou", "precision", "recall", "f_beta", "f1"):
        assert got[key] == pytest.approx(want[key], abs=1e-3), key
    assert got["mae"] == pytest.approx(want["mae"], abs=1e-5) and got["beta2"] == 0.3
    assert report["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-3)
    assert report["kind"] == "binary" and report["classes"] == ["background", "foreground"]
    assert "beta^2 = 0.3" in report["binary_scores"] and "255 ignored" in report["mask_rule"]
    assert read(tmp_path / "e" / "predictions" / "b.png")[1].max() == 1

    table = run_cli("eval", models["sigmoid"], "--data", root, *HALF, "-o", tmp_path / "t")
    assert table.returncode == 0, table.stderr
    assert "F-beta" in table.stdout and f"{want['f_beta']:.2f}" in table.stdout and "beta^2 = 0.3" in table.stdout


def test_eval_compare_binary_reports_agreement_and_binary_scores_of_each(models, binary_set, tmp_path):
    root, samples = binary_set
    proc = run_cli("eval", "--compare", models["sigmoid"], models["shifted"], "--data", root, *HALF,
                   "-o", tmp_path / "c", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)["compare"]
    # the shifted twin (bias -1) drops the grey band (probability ~0.55 -> ~0.3): agreement is the rest
    fp32 = [ort_run(models["sigmoid"], normalised(rgb))[0] > 0.5 for rgb, _ in samples.values()]
    twin = [ort_run(models["shifted"], normalised(rgb))[0] > 0.5 for rgb, _ in samples.values()]
    agree = sum(int((a == b).sum()) for a, b in zip(fp32, twin)) / sum(a.size for a in fp32)
    assert agree < 1 and second["agreement"] == pytest.approx(100 * agree, abs=1e-3)
    want = expected_binary(models["shifted"], samples)
    assert second["binary"]["f_beta"] == pytest.approx(want["f_beta"], abs=1e-3)
    assert second["binary"]["mae"] == pytest.approx(want["mae"], abs=1e-5)
    assert first["binary"]["iou"] == pytest.approx(expected_binary(models["sigmoid"], samples)["iou"], abs=1e-3)


def test_input_size_rule():
    from segdeploy.infer import network_size

    dynamic = {"size": [None, None], "size_multiple": 1}
    assert network_size(dynamic, (21, 30)) == (21, 30)  # each image's own size
    assert network_size({**dynamic, "size_multiple": 8}, (21, 30)) == (24, 32)  # rounded to the multiple
    assert network_size({**dynamic, "size_multiple": 8}, (3, 30)) == (8, 32)  # never below one multiple
    assert network_size({"size": [64, 64], "size_multiple": 8}, (21, 30)) == (64, 64)  # the manifest's
    assert network_size({"size": [64, 64]}, (21, 30), (16, 24)) == (16, 24)  # --input-size wins
