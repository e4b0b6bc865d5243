"""`segdeploy serve deepstream`: every key of the nvinfer config against the artifact's manifest, the
normalisation nvinfer computes against segdeploy's own, nvinfer's segmentation parser (emulated from
its source) against segdeploy's labels, and the refusals (exit 2, nothing written)."""

from __future__ import annotations

import configparser
import hashlib
import json

import numpy as np
import onnx
import pytest
from cli import assert_clean_error, run_cli
from onnx import helper
from onnx_graphs import F, make_model, seg_graph, with_node
from PIL import Image

from segdeploy.head.graph import append_head
from segdeploy.manifest import read_manifest, write_manifest
from segdeploy.outputs import Head
from segdeploy.preprocess import normalize, to_model_colors
from segdeploy.serve.deepstream import CONFIG_NAME, LABELS_NAME, fit_normalisation

IMAGENET = ("0.485,0.456,0.406", "0.229,0.224,0.225")
SIZE = 32


def _one_channel_graph(classes: int = 4) -> onnx.ModelProto:
    """seg_graph for a grey input: images (N, 1, H, W) -> Conv -> Relu -> logits."""
    model = seg_graph(classes=classes)
    weights = next(i for i in model.graph.initializer if i.name == "w")
    array = onnx.numpy_helper.to_array(weights)[:, :1]
    weights.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(array), "w"))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("images", F, ["batch", 1, "height", "width"]))
    return model


def _with_activation(model: onnx.ModelProto, op: str, classes: int) -> onnx.ModelProto:
    name = "probabilities"
    node = helper.make_node(op, ["logits"], [name], **({"axis": 1} if op == "Softmax" else {}))
    model = with_node(model, node)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(name, F, ["batch", classes, "height", "width"]))
    return model


def _adopt(folder, model: onnx.ModelProto, *options) -> str:
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    proc = run_cli("adopt", folder / "model.onnx", "--size", SIZE, SIZE, *options)
    assert proc.returncode == 0, proc.stderr
    return str(folder)


def _calibration_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"calib_{i}.png")
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Artifacts as users have them (adopted ONNX files), by name; fp16/int8 made by segdeploy's own tools on first use."""
    root = tmp_path_factory.mktemp("deepstream")
    made = {
        "rgb_probabilities": _adopt(root / "rgb", _with_activation(seg_graph(), "Softmax", 4), "--mean", IMAGENET[0],
                                    "--std", IMAGENET[1]),
        "bgr_probabilities": _adopt(root / "bgr", _with_activation(seg_graph(), "Softmax", 4), "--color", "BGR",
                                    "--mean", "0.5,0.4,0.3", "--std", "0.25,0.25,0.25"),
        "gray_probabilities": _adopt(root / "gray", _with_activation(_one_channel_graph(), "Softmax", 4), "--color", "GRAY",
                                     "--mean", "0.5", "--std", "0.2"),
        "binary_sigmoid": _adopt(root / "binary", _with_activation(seg_graph(classes=1), "Sigmoid", 1), "--mean", "0.5,0.5,0.5",
                                 "--std", "0.25,0.25,0.25"),
        "rgb_logits": _adopt(root / "logits", seg_graph(), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"),
    }

    def derived(name):
        if name == "gray_fp16":
            proc = run_cli("fp16", made["gray_probabilities"], "-o", root / "gray_fp16", "--min-agreement", "0")
        elif name == "bgr_int8":
            proc = run_cli("quantize", made["bgr_probabilities"], "--calib", _calibration_images(root / "calib"),
                           "-o", root / "bgr_int8", "--min-agreement", "0")
        else:
            return made[name]
        assert proc.returncode == 0, proc.stderr
        made[name] = str(root / name)
        return made[name]

    return derived


def _write(artifact, out, *options):
    proc = run_cli("serve", "deepstream", artifact, "-o", out, *options)
    assert proc.returncode == 0, proc.stderr
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(out / CONFIG_NAME)
    return parser


def _expected(manifest: dict) -> dict:
    """What each key must be for this manifest (input, output, head and precision read independently)."""
    spec, output = manifest["input"], manifest["output"]
    channels = {"GRAY": 1}.get(spec["color"], 3)
    binary = output["kind"] == "binary"
    precision = manifest["onnx"]["precision"]
    return {
        "network-type": "2", "process-mode": "1", "gpu-id": "0", "gie-unique-id": "1", "batch-size": "1",
        "onnx-file": "model.onnx", "labelfile-path": LABELS_NAME,
        "infer-dims": f"{channels};{spec['size'][0]};{spec['size'][1]}",
        "model-color-format": {"RGB": "0", "BGR": "1", "GRAY": "2"}[spec["color"]],
        "network-mode": {"fp32": "0", "int8": "1", "fp16": "2"}[precision],
        "output-blob-names": output["name"],
        "num-detected-classes": "1" if binary else str(len(manifest["classes"])),
        "segmentation-threshold": f"{output['threshold']:g}" if binary else "0",
        "model-engine-file": f"model.onnx_b1_gpu0_{precision}.engine",
        "network-input-order": "0", "segmentation-output-order": "0", "maintain-aspect-ratio": "0", "scaling-filter": "1",
    }  # fmt: skip


CASES = [
    pytest.param("rgb_probabilities", ("--approximate-std",), id="rgb-imagenet-std"),
    pytest.param("bgr_probabilities", (), id="bgr"),
    pytest.param("gray_probabilities", (), id="gray"),
    pytest.param("binary_sigmoid", (), id="binary-sigmoid"),
    pytest.param("gray_fp16", (), id="gray-fp16", marks=pytest.mark.slow),
    pytest.param("bgr_int8", (), id="bgr-int8", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_every_key_follows_the_manifest(artifacts, tmp_path, name, options):
    artifact = artifacts(name)
    manifest = read_manifest(f"{artifact}/manifest.json")
    if name.endswith(("fp16", "int8")):
        assert manifest["onnx"]["precision"] == name[-4:]  # made by segdeploy fp16 / quantize
    out = tmp_path / "ds"
    config = _write(artifact, out, *options)
    assert config.sections() == ["property"]
    prop = config["property"]
    for key, value in _expected(manifest).items():
        assert prop[key] == value, key
    # offsets are the mean on 0..255 pixels, in the model's channel order
    offsets = [float(v) for v in prop["offsets"].split(";")]
    assert offsets == pytest.approx([m / manifest["input"]["scale"] for m in manifest["input"]["mean"]], rel=1e-8)
    # the model nvinfer loads is the artifact's, byte for byte; its first output is the one named
    model_file = out / prop["onnx-file"]
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == manifest["onnx"]["sha256"]
    assert onnx.load(model_file).graph.output[0].name == prop["output-blob-names"]
    labels = (out / LABELS_NAME).read_text().splitlines()
    assert labels == (manifest["classes"][-1:] if manifest["output"]["kind"] == "binary" else manifest["classes"])
    if manifest["onnx"]["precision"] == "int8":  # nvinfer would build it in FP16 without a calibration file
        assert "--engine" in (out / CONFIG_NAME).read_text()


@pytest.mark.parametrize("name", ["bgr_probabilities", "gray_probabilities", "rgb_probabilities"])
def test_nvinfer_normalisation_matches_segdeploys(artifacts, tmp_path, name):
    """y = net-scale-factor * (x - offsets[c]) on the frame in the model's colour order, against
    segdeploy.preprocess.normalize: exact for one std, within the reported error (which is reached) otherwise."""
    artifact = artifacts(name)
    spec = read_manifest(f"{artifact}/manifest.json")["input"]
    prop = _write(artifact, tmp_path / "ds", "--approximate-std")["property"]
    scale, offsets = float(prop["net-scale-factor"]), np.array([float(v) for v in prop["offsets"].split(";")])
    # every pixel value in every channel, as a 16x16 RGB picture per channel pattern
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frames = np.stack([np.stack([values, values[::-1], values.T], axis=-1), np.stack([values.T, values, values[::-1]], axis=-1)])
    expected = normalize(frames, spec)
    pixels = to_model_colors(frames, spec).astype(np.float64)  # what nvinfer's colour conversion hands it
    nvinfer = (scale * (pixels - offsets)).transpose(0, 3, 1, 2)
    error = np.abs(nvinfer - expected).max()
    fit = fit_normalisation(spec)
    if fit.exact:
        assert error < 1e-5
    else:
        assert name == "rgb_probabilities" and 0.01 < fit.max_error < 0.05
        assert error <= fit.max_error + 1e-5 and error >= fit.max_error - 1e-5  # the bound is tight


def nvdsinfer_parse(scores: np.ndarray, threshold: float) -> np.ndarray:
    """nvdsinfer's SegmentPostprocessor::fillSegmentationOutput on one (C, H, W) float32 output, as its source
    reads: each pixel starts at best score -1, class -1; a class wins when its score is above both the best so
    far and the threshold (strictly: the first of equal maxima stays)."""
    classes = scores.shape[0]
    best = np.full(scores.shape[1:], -1.0, np.float32)
    labels = np.full(scores.shape[1:], -1, np.int32)
    for c in range(classes):
        wins = (scores[c] > best) & (scores[c] > threshold)
        labels[wins] = c
        best[wins] = scores[c][wins]
    return labels


@pytest.mark.parametrize("name", ["rgb_probabilities", "binary_sigmoid"])
def test_nvinfer_parser_gives_segdeploys_labels_with_the_written_threshold(artifacts, tmp_path, name):
    import onnxruntime

    artifact = artifacts(name)
    manifest = read_manifest(f"{artifact}/manifest.json")
    prop = _write(artifact, tmp_path / "ds", "--approximate-std")["property"]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(f"{artifact}/model.onnx", providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"images": normalize(frames, manifest["input"])})
    head = Head.from_manifest(manifest)
    ours = head.labels(scores)
    for n in range(len(frames)):
        theirs = nvdsinfer_parse(scores[n], float(prop["segmentation-threshold"]))
        if head.kind == "binary":  # nvinfer: foreground class 0, background unlabelled
            assert set(np.unique(theirs)) <= {-1, 0}
            np.testing.assert_array_equal(theirs == 0, ours[n] == 1)
        else:
            assert theirs.min() >= 0  # no pixel left unlabelled
            np.testing.assert_array_equal(theirs, ours[n])


def test_logits_are_refused_because_the_parser_drops_scores_at_or_below_minus_one(artifacts, tmp_path):
    out = tmp_path / "ds"
    proc = run_cli("serve", "deepstream", artifacts("rgb_logits"), "-o", out)
    assert_clean_error(proc, 2, "manifest.json", "logits", "-1", "--head probabilities")
    assert not out.exists()
    # why no threshold helps: a pixel whose logits are all <= -1 stays unlabelled (-1) even at a threshold far below
    scores = np.array([[[-1.5]], [[-1.2]], [[-3.0]]], np.float32)
    assert nvdsinfer_parse(scores, threshold=-100.0)[0, 0] == -1 and scores.argmax(0)[0, 0] == 1
    # the advised command gives an artifact nvinfer reads correctly
    proc = run_cli("head", artifacts("rgb_logits"), "--head", "probabilities", "-o", tmp_path / "probabilities")
    assert proc.returncode == 0, proc.stderr
    prop = _write(tmp_path / "probabilities", out)["property"]
    assert (prop["output-blob-names"], prop["segmentation-threshold"]) == ("probabilities", "0")


def test_a_labels_head_is_refused(artifacts, tmp_path):
    source = artifacts("rgb_logits")
    manifest = read_manifest(f"{source}/manifest.json")
    model, head = append_head(onnx.load(f"{source}/model.onnx"), "labels", prediction="logits", head=Head(), classes=4)
    folder = tmp_path / "labels"
    folder.mkdir()
    onnx.save(model, folder / "model.onnx")
    manifest["output"].update(name="labels", dtype="uint8", layout="NHW", all=["labels"], **head.to_manifest())
    manifest["onnx"]["sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    write_manifest(folder, manifest)
    proc = run_cli("serve", "deepstream", folder, "-o", tmp_path / "ds")
    assert_clean_error(proc, 2, "manifest.json", "class ids", "--head probabilities")
    assert not (tmp_path / "ds").exists()


def test_per_channel_std_needs_consent_and_says_the_error(artifacts, tmp_path):
    out = tmp_path / "ds"
    proc = run_cli("serve", "deepstream", artifacts("rgb_probabilities"), "-o", out)
    fit = fit_normalisation(read_manifest(f"{artifacts('rgb_probabilities')}/manifest.json")["input"])
    assert_clean_error(proc, 2, "manifest.json", "0.229, 0.224, 0.225", f"{fit.max_error:.4f}", "--approximate-std")
    assert not out.exists()
    proc = run_cli("serve", "deepstream", artifacts("rgb_probabilities"), "-o", out, "--approximate-std", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["normalisation"]["exact"] is False and result["normalisation"]["max_error"] == pytest.approx(fit.max_error)
    assert any("approximated" in note for note in result["notes"])
    assert "# note: normalisation approximated" in (out / CONFIG_NAME).read_text()


def test_options_reach_the_config_and_bad_ones_exit_2(artifacts, tmp_path):
    artifact = artifacts("bgr_probabilities")
    prop = _write(artifact, tmp_path / "ds", "--batch-size", "4", "--input-size", "48", "64", "--gpu-id", "1",
                  "--gie-unique-id", "3", "--tensor-meta")["property"]
    assert (prop["batch-size"], prop["infer-dims"], prop["gpu-id"], prop["gie-unique-id"], prop["output-tensor-meta"]) == \
        ("4", "3;48;64", "1", "3", "1")
    assert prop["model-engine-file"] == "model.onnx_b4_gpu1_fp32.engine"
    # an existing folder is not overwritten
    assert_clean_error(run_cli("serve", "deepstream", artifact, "-o", tmp_path / "ds"), 2, "already exists")
    # an engine that is not there
    assert_clean_error(run_cli("serve", "deepstream", artifact, "-o", tmp_path / "e", "--engine", tmp_path / "none"), 2,
                       "no such engine")
    assert not (tmp_path / "e").exists()
    # a bare ONNX file without a manifest: its normalisation is unknown
    bare = tmp_path / "bare"
    bare.mkdir()
    onnx.save(make_model(seg_graph().graph.node, seg_graph().graph.input, seg_graph().graph.output,
                         seg_graph().graph.initializer), bare / "net.onnx")
    assert_clean_error(run_cli("serve", "deepstream", bare / "net.onnx", "-o", tmp_path / "b"), 2, "net.onnx",
                       "segdeploy adopt")
