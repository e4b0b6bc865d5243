"""``segdeploy eval``: known mIoU on hand-made cases, the trained fixture on a VOC-layout set, --compare, --crf."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli import REPO_ROOT, TESTS_DIR, assert_clean_error
from eval_data import iou_loop, write_voc
from PIL import Image

# Until "eval" is in segdeploy.cli.COMMANDS, register it in the subprocess (a no-op afterwards).
_REGISTER = "from segdeploy.cli import COMMANDS, main; COMMANDS.setdefault('eval', '.eval:eval_cmd'); "


def run_eval(*args, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``segdeploy eval ARGS`` in a subprocess, as tests/cli.run_cli runs the CLI; ``block``: modules made unimportable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    env.pop("COLUMNS", None)
    prelude = "import sys; " + "".join(f"sys.modules[{name!r}] = None; " for name in block)
    command = [sys.executable, "-c", prelude + _REGISTER + "main()", "eval", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------------ a hand-made case
# "Colour" models: logits = the normalised RGB pixel itself (Identity), or with red and green
# swapped (Gather). A pure red/green/blue pixel is therefore predicted as class 0/1/2 (or 1/0/2),
# so the predictions, and the mIoU against hand-drawn masks, are known exactly.

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
PRED_1 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
TRUTH_1 = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 2, 255], [1, 2, 2, 255]])
PRED_2 = np.zeros((4, 4), int)
TRUTH_2 = np.array([[0] * 4] * 2 + [[255] * 4] * 2)
# Confusion (rows truth): [[12, 1, 0], [0, 3, 1], [0, 0, 5]] over the 22 labelled pixels:
# IoU 12/13, 3/(4+4-3) = 3/5, 5/(5+6-5) = 5/6; pixel accuracy 20/22.
MIOU_IDENTITY = 100 * (12 / 13 + 3 / 5 + 5 / 6) / 3
# Red and green swapped: [[1, 12, 0], [3, 0, 1], [0, 0, 5]]: IoU 1/16, 0, 5/6; accuracy 6/22;
# it agrees with the identity model only where both say blue: 8 of the 32 pixels.
MIOU_SWAPPED = 100 * (1 / 16 + 0 + 5 / 6) / 3


def colour_artifact(folder, permutation=None):
    import onnx
    from onnx import TensorProto, helper

    from segdeploy.manifest import SCHEMA
    from segdeploy.preprocess import input_spec

    folder.mkdir(parents=True)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 4, 4])
    if permutation is None:
        nodes, inits = [helper.make_node("Identity", ["images"], ["logits"])], []
    else:
        inits = [helper.make_tensor("order", TensorProto.INT64, [3], permutation)]
        nodes = [helper.make_node("Gather", ["images", "order"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "colour", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    manifest = {"schema": SCHEMA, "model": {"name": "colour"}, "classes": ["red", "green", "blue"],
                "input": input_spec(4, 4, mean=(0, 0, 0), std=(1, 1, 1)), "output": {"name": "logits"},
                "onnx": {"precision": "fp32" if permutation is None else "swapped"}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def colour_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    for sub in ("data/images", "data/masks", "data8/images", "data8/masks"):
        (root / sub).mkdir(parents=True)
    for name, pred, truth in (("one", PRED_1, TRUTH_1), ("two", PRED_2, TRUTH_2)):
        Image.fromarray(COLOURS[pred]).save(root / "data" / "images" / f"{name}.png")
        Image.fromarray(truth.astype(np.uint8)).save(root / "data" / "masks" / f"{name}.png")
        # The same scene at twice the network's size: each 2x2 block is one class, so the
        # bilinear resize keeps every block's colour dominant and the scores are unchanged.
        Image.fromarray(COLOURS[np.kron(pred, np.ones((2, 2), int))]).save(root / "data8" / "images" / f"{name}.png")
        Image.fromarray(np.kron(truth, np.ones((2, 2), int)).astype(np.uint8)).save(root / "data8" / "masks" / f"{name}.png")
    return root, colour_artifact(root / "identity"), colour_artifact(root / "swapped", [1, 0, 2])


def test_known_miou_and_compare_table_on_hand_made_case(colour_case):
    root, identity, swapped = colour_case
    out = root / "out"
    proc = run_eval("--compare", identity, swapped, "--data", root / "data", "--layout", "folders", "-o", out,
                    "--json", "--save-predictions")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == json.loads((out / "eval.json").read_text())
    assert report["schema"] == "segdeploy.eval/1"
    assert report["dataset"]["layout"] == "folders" and report["dataset"]["count"] == 2
    assert report["miou"] == pytest.approx(MIOU_IDENTITY, abs=1e-3)
    assert report["pixel_accuracy"] == pytest.approx(100 * 20 / 22, abs=1e-3)
    assert report["per_class_iou"] == pytest.approx({"red": 100 * 12 / 13, "green": 60.0, "blue": 100 * 5 / 6}, abs=1e-3)
    assert report["confusion_matrix"] == [[12, 1, 0], [0, 3, 1], [0, 0, 5]]
    first, second = report["compare"]
    assert (first["label"], first["agreement"], first["miou_delta"]) == ("identity", 100.0, 0.0)
    assert second["label"] == "swapped" and second["precision"] == "swapped"
    assert second["confusion_matrix"] == [[1, 12, 0], [3, 0, 1], [0, 0, 5]]
    assert second["miou"] == pytest.approx(MIOU_SWAPPED, abs=1e-3)
    assert second["miou_delta"] == pytest.approx(MIOU_SWAPPED - MIOU_IDENTITY, abs=1e-3)
    assert second["agreement"] == pytest.approx(100 * 8 / 32, abs=1e-3)
    assert np.array_equal(np.asarray(Image.open(out / "predictions" / "identity" / "one.png")), PRED_1)
    assert np.array_equal(np.asarray(Image.open(out / "predictions" / "swapped" / "two.png")), np.ones((4, 4)))

    larger = run_eval(identity, swapped, "--data", root / "data8", "--json", "-o", root / "out8")
    assert larger.returncode == 0, larger.stderr
    larger = json.loads(larger.stdout)
    assert larger["confusion_matrix"] == [[48, 4, 0], [0, 12, 4], [0, 0, 20]]
    assert larger["miou"] == pytest.approx(MIOU_IDENTITY, abs=1e-3)
    assert larger["compare"][1]["agreement"] == pytest.approx(25.0, abs=1e-3)

    no_plot = run_eval(identity, "--data", root / "data", "--json", "-o", root / "out3", block=("matplotlib",))
    assert no_plot.returncode == 0, no_plot.stderr
    assert any("matplotlib is not installed" in note for note in json.loads(no_plot.stdout)["notes"])
    assert not (root / "out3" / "confusion.png").exists() and (root / "out3" / "eval.json").is_file()

    table = run_eval(identity, swapped, "--images", root / "data" / "images", "--masks", root / "data" / "masks",
                     "-o", root / "out2", "--overlays", "1")
    assert table.returncode == 0, table.stderr
    assert f"{MIOU_SWAPPED - MIOU_IDENTITY:+.2f}" in table.stdout and "25.00" in table.stdout
    strips = list((root / "out2" / "overlays").glob("*.png"))
    assert [p.name for p in strips] == ["one.png"]
    assert Image.open(strips[0]).size == (4 * 4 + 2 * 3, 4 + 12)  # image, truth, two predictions


def test_clean_errors(colour_case, tmp_path):
    root, identity, _ = colour_case
    (tmp_path / "pictures").mkdir()
    assert_clean_error(run_eval(identity, "--data", tmp_path), 2, f"{tmp_path}: not a data set folder")
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    Image.fromarray(COLOURS[PRED_1]).save(data / "images" / "a.png")
    assert_clean_error(run_eval(identity, "--data", data), 2, f"{data / 'masks'}: no mask a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(data / "masks" / "a.png")
    assert_clean_error(run_eval(identity, "--data", data), 2, "a.png: mask is 5x4 but its image")
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(data / "masks" / "a.png")
    assert_clean_error(run_eval(identity, "--data", data), 2, "class id 7 in the mask", "predicts 3 classes")
    assert_clean_error(run_eval("--compare", identity, "--data", data), 2, "--compare needs at least two")
    good = root / "data"
    assert_clean_error(run_eval(identity, identity, "--backend", "ort,ort,ort", "--data", good), 2,
                       "3 backends for 2 artifacts")
    assert_clean_error(run_eval(identity, "--backend", "nope", "--data", good), 2, "unknown backend 'nope'")
    assert_clean_error(run_eval(identity, "--data", good, "--crf", "--crf-param", "sigma=2"), 2,
                       "unknown CRF parameter(s) sigma")


# ------------------------------------------------------------------------------ the trained fixture


@pytest.fixture(scope="module")
def voc_scenes(tmp_path_factory, trained_fixture):
    from segdeploy.fixtures.scenes import generate_scenes

    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    # Not the network's 64x64: predictions are resized back to each image's size.
    height, width = trained_fixture.config.size + 8, trained_fixture.config.size + 24
    ids = [f"2007_{i:06d}" for i in range(6)]
    masks = write_voc(root, generate_scenes(6, height, width, seed=2024), {"val": ids[:5], "train": ids[5:]})
    return root, {i: masks[i] for i in ids[:5]}


def recompute(predictions_dir, masks, num_classes):
    truth = np.concatenate([m.ravel() for m in masks.values()])
    pred = np.concatenate([np.asarray(Image.open(predictions_dir / f"{i}.png")).ravel() for i in masks])
    ious = iou_loop(truth, pred, num_classes)
    valid = truth != 255
    return float(np.nanmean(ious)), 100.0 * float(np.mean(pred[valid] == truth[valid])), ious


def test_fixture_on_voc_layout_scenes(fixture_artifact, voc_scenes, tmp_path):
    from segdeploy.fixtures.scenes import CLASSES
    from segdeploy.infer import segment_files

    root, masks = voc_scenes
    out = tmp_path / "eval"
    proc = run_eval(fixture_artifact, "--data", root.parent, "--save-predictions", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["dataset"] == {"root": str(root), "layout": "voc", "split": "val", "count": 5, "limit": None}
    assert report["classes"] == list(CLASSES) and report["backend"] == "ort"
    miou, accuracy, ious = recompute(out / "predictions", masks, len(CLASSES))
    assert report["miou"] == pytest.approx(miou, abs=1e-3)
    assert report["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-3)
    assert list(report["per_class_iou"].values()) == pytest.approx(list(ious), abs=1e-3, nan_ok=True)
    assert report["miou"] > 50  # a trained model, not noise (the fixture scores ~80+ on held-out scenes)
    # The predictions are the ones `segdeploy infer` makes.
    for path, _, labels in segment_files(fixture_artifact, [root / "JPEGImages" / f"{i}.jpg" for i in list(masks)[:2]]):
        assert np.array_equal(labels, np.asarray(Image.open(out / "predictions" / f"{path.stem}.png")))
    assert "mIoU" in proc.stdout and "IoU per class" in proc.stdout and f"{report['miou']:.2f}" in proc.stdout
    assert len(list((out / "overlays").glob("*.png"))) == 4
    with Image.open(out / "confusion.png") as png:
        assert png.format == "PNG" and png.size[0] > 200

    quick = run_eval(fixture_artifact, "--data", root, "--limit", "2", "--overlays", "0", "--json", "-o", tmp_path / "q")
    assert quick.returncode == 0, quick.stderr
    quick_report = json.loads(quick.stdout)
    assert quick_report["dataset"]["count"] == 2 and quick_report["dataset"]["limit"] == 2
    assert not (tmp_path / "q" / "overlays").exists()
    assert sum(quick_report["class_pixels"].values()) == sum(int((masks[i] != 255).sum()) for i in list(masks)[:2])


def test_crf_scores_the_refined_predictions(fixture_artifact, voc_scenes, tmp_path):
    import onnxruntime as ort
    import torch

    from segdeploy.crf import dense_crf
    from segdeploy.fixtures.scenes import CLASSES
    from segdeploy.preprocess import load_image, normalize, resize

    root, masks = voc_scenes
    out = tmp_path / "crf"
    proc = run_eval(fixture_artifact, "--data", root, "--crf", "--crf-param", "iterations=5", "--crf-threads", "1",
                    "--save-predictions", "--json", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    crf = report["crf"]
    assert crf["at"] == "image" and crf["params"]["iterations"] == 5
    miou, accuracy, _ = recompute(out / "predictions_crf", masks, len(CLASSES))
    assert crf["miou"] == pytest.approx(miou, abs=1e-3) and crf["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-3)
    assert crf["miou_gain"] == pytest.approx(crf["miou"] - report["miou"], abs=1e-3)
    assert report["miou"] == pytest.approx(recompute(out / "predictions", masks, len(CLASSES))[0], abs=1e-3)
    # Independently: ONNX Runtime's logits, upsampled by torch to the image's size, through dense_crf
    # give the written CRF labels (up to float rounding of near-ties).
    manifest = json.loads((fixture_artifact / "manifest.json").read_text())
    session = ort.InferenceSession(str(fixture_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    sample_id = next(iter(masks))
    rgb = load_image(root / "JPEGImages" / f"{sample_id}.jpg")
    (logits,) = session.run(["logits"], {"images": normalize(resize(rgb, *manifest["input"]["size"]), manifest["input"])})
    unary = torch.nn.functional.interpolate(torch.from_numpy(logits), size=rgb.shape[:2], mode="bilinear")[0].numpy()
    labels = dense_crf(unary, rgb, iterations=5, output="labels")
    written = np.asarray(Image.open(out / "predictions_crf" / f"{sample_id}.png"))
    assert labels.shape == written.shape == masks[sample_id].shape
    assert np.mean(labels == written) > 0.999
    assert (out / "confusion_crf.png").is_file()
