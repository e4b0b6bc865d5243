"""Every command on every kind of ONNX file a user brings (tests/foreign_models.py): adopted once,
then inspect, lint, bench, infer, eval, fp16, quantize and a real TensorRT for RTX build, each
with the reading of the output that fits the model (argmax, or a threshold for one channel).

The models are trained on generated scenes (except the random smp U-Net), so the gates'
agreement figures mean something; the acceptance figures of the trained one-channel model
(FP16 and INT8 mask agreement, FP16 max probability error) are printed with ``-s``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cli
from rtx import build_rtx, rtx_installed

#: Models whose prediction is one thresholded channel, and the output that is their prediction.
BINARY = {"binary": "mask", "binary_logits": "logit", "u2net": "d0"}
KINDS = ("binary", "binary_logits", "opset11", "opset12", "u2net", "gray", "bands4", "bands6", "fp16_cast")


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "None" not in proc.stderr
    return proc


def run_json(*args):
    return json.loads(ok(run_cli(*args, "--json")).stdout)


def data_for(kind, image_folders, binary_folders, gray_folders, tensor_folders) -> tuple[Path, Path]:
    """(calibration folder, validation folder with images/ + masks/) for ``kind``."""
    if kind in tensor_folders:
        return tensor_folders[kind]["calib"], tensor_folders[kind]["val"]
    if kind == "gray":
        return gray_folders["calib"], gray_folders["val"]
    return image_folders["calib"], (binary_folders if kind in BINARY else image_folders)["val"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_takes_a_users_onnx_file(kind, foreign_models, image_folders, binary_folders, gray_folders,
                                               tensor_folders, tmp_path):  # fmt: skip
    model = foreign_models[kind]
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / model.path.name
    path.write_bytes(model.path.read_bytes())
    calib, val = data_for(kind, image_folders, binary_folders, gray_folders, tensor_folders)
    binary = kind in BINARY

    # adopt: what the graph cannot say, once
    normalisation = [] if model.color == "tensor" else ["--mean", ",".join(map(str, model.mean)), "--std", ",".join(map(str, model.std))]
    size = ["--size", "64", "64"] if model.dynamic else []
    prediction = ["--output-name", BINARY[kind]] if kind == "u2net" else []
    manifest = run_json("adopt", path, *normalisation, *size, *prediction)
    assert manifest["input"]["name"] == model.input_name and manifest["input"]["channels"] == model.channels
    assert manifest["input"]["color"] == model.color and manifest["output"]["kind"] == model.kind
    assert manifest["output"]["name"] == (BINARY.get(kind) or model.outputs[0])

    summary = run_json("inspect", path)
    assert summary["inputs"][0]["name"] == model.input_name and summary["opsets"]["ai.onnx"] == model.opset

    lint = run_json("lint", path, "--target", "trt11")
    assert not [f for f in lint["findings"] if f["severity"] == "error"], lint

    bench = run_json("bench", path, "--iterations", "2", "--warmup", "0")
    assert bench["results"][0]["num_classes"] == (2 if binary else model.classes)

    samples = sorted((val / "images").iterdir())[:2]
    predictions = run_json("infer", path, *samples, "-o", tmp_path / "predictions")
    assert all(Path(p["mask"]).is_file() for p in predictions)
    assert all((p["matte"] is not None) == binary for p in predictions)

    evaluation = run_json("eval", path, "--images", val / "images", "--masks", val / "masks", "-o", tmp_path / "eval")
    if binary:
        assert evaluation["binary"]["iou"] > 70, evaluation["binary"]
    elif model.trained:
        assert evaluation["miou"] > 40, evaluation["miou"]

    fp16 = run_json("fp16", path, "--val", val, "-o", tmp_path / "fp16")
    assert fp16["gate"]["passed"] and fp16["gate"]["final"]["agreement"] >= 0.99
    # a random network's near-ties flip under INT8 rounding: only trained models are held to 99%
    agreement = [] if model.trained else ["--min-agreement", "0.9"]
    int8 = run_json("quantize", path, "--calib", calib, "--val", val, "--target", "cpu", "-o", tmp_path / "int8", *agreement)
    assert int8["gate"]["passed"]
    if kind == "binary":
        print(f"\n{kind}: FP16 mask agreement {fp16['gate']['final']['agreement']:.4%}, max probability error "
              f"{fp16['gate']['final']['max_prob_error']:.4f}; INT8 (cpu) mask agreement "
              f"{int8['gate']['final']['agreement']:.4%}, max probability error {int8['gate']['final']['max_prob_error']:.4f}")
        assert fp16["gate"]["final"]["max_prob_error"] <= 0.05

    if rtx_installed():  # a real TensorRT parses and builds it, ahead of time for SM86
        build_rtx(folder, tmp_path / "rtx", f"foreign {kind} (adopted)")
