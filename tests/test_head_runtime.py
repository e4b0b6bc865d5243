"""The runtime commands on every deployment head: infer, eval, bench, inspect and the backends read a
``probabilities`` or ``labels`` graph as they read logits, and give the same predictions.

The heads are made by ``segdeploy.head.artifact.apply_head`` from the trained fixture (6 classes) and from
a one-channel ColourNet (binary: foreground where the normalised red is above 0).
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from cli import assert_clean_error, run_cli
from PIL import Image
from rtx import NO_RTX, build_rtx, rtx_installed

from segdeploy.backend import make_runner
from segdeploy.bench.run import SCHEMA_FILE
from segdeploy.manifest import resolve_artifact
from segdeploy.parity import sample_images

HEADS = ("logits", "probabilities", "labels")


@pytest.fixture(scope="module")
def fixture_heads(fixture_artifact, tmp_path_factory) -> dict:
    from segdeploy.head.artifact import apply_head

    root = tmp_path_factory.mktemp("heads")
    heads = {"logits": fixture_artifact}
    for name in HEADS[1:]:
        heads[name] = apply_head(fixture_artifact, name, output_dir=root / name).output_dir
    return heads


@pytest.fixture(scope="module")
def binary_heads(tmp_path_factory) -> dict:
    from segdeploy.head.artifact import apply_head

    root = tmp_path_factory.mktemp("binary_heads")
    proc = run_cli("export", "--model", "toy_models:colour_net", "--num-classes", "1", "--input-size", 64, 64,
                   "-o", root / "logits")
    assert proc.returncode == 0, proc.stderr
    return {"logits": root / "logits", "labels": apply_head(root / "logits", "labels", output_dir=root / "labels").output_dir}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, trained_fixture):
    """images/ + masks/ of held-out scenes larger than the network's 64x64 (predictions are resized back)."""
    from segdeploy.fixtures.scenes import generate_scenes, write_scene_folder

    size = trained_fixture.config.size
    return write_scene_folder(tmp_path_factory.mktemp("scenes"), generate_scenes(6, size + 8, size + 24, seed=31))


def test_the_heads_manifests(fixture_heads, binary_heads):
    outputs = {name: resolve_artifact(path)[1]["output"] for name, path in fixture_heads.items()}
    assert {name: (o["name"], o["dtype"], o["head"]) for name, o in outputs.items()} == {
        "logits": ("logits", "float32", "logits"), "probabilities": ("probabilities", "float32", "probabilities"),
        "labels": ("labels", "uint8", "labels")}
    binary = resolve_artifact(binary_heads["labels"])[1]["output"]
    assert (binary["kind"], binary["head"], binary["dtype"], binary["layout"]) == ("binary", "labels", "uint8", "NHW")


def test_ort_and_torch_runners_give_each_head_as_the_graph_does(fixture_heads):
    """The torch backend rebuilds the module (logits) and applies the artifact's head on its device."""
    outputs, copies = {}, {}
    for name, artifact in fixture_heads.items():
        onnx_path, manifest = resolve_artifact(artifact)
        feed = {"images": sample_images((2, 3, 64, 64), manifest["input"])}
        for backend in ("ort", "torch"):
            with make_runner(backend, onnx_path, manifest) as runner:
                outputs[name, backend] = runner.infer(feed)[manifest["output"]["name"]]
                copies[backend] = runner.output_copy()
    for backend in ("ort", "torch"):
        logits, probabilities, labels = (outputs[name, backend] for name in HEADS)
        assert labels.dtype == np.uint8 and labels.shape == (2, 64, 64)
        assert probabilities.dtype == np.float32 and probabilities.shape == logits.shape
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(labels, logits.argmax(axis=1))
    np.testing.assert_array_equal(outputs["labels", "torch"], outputs["labels", "ort"])
    assert copies == {"ort": "none: ONNX Runtime on the CPU writes the outputs in host memory",
                      "torch": "none: torch on the CPU computes the outputs in host memory"}
    np.testing.assert_allclose(outputs["probabilities", "torch"], outputs["probabilities", "ort"], atol=1e-5)


def test_eval_scores_every_head_the_same(fixture_heads, scenes, tmp_path):
    """logits, probabilities and labels of the same model on the same images: the same predictions, so the same
    confusion matrix, mIoU and per-class IoU, in the process a device runs (no torch)."""
    proc = run_cli("eval", *(fixture_heads[name] for name in HEADS), "--images", scenes / "images", "--masks",
                   scenes / "masks", "--overlays", "0", "--save-predictions", "--json", "-o", tmp_path / "eval",
                   block_torch=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    logits, probabilities, labels = report["compare"]
    assert [r["head"] for r in report["compare"]] == list(HEADS)
    assert report["miou"] > 50  # the trained fixture, not noise
    for other in (probabilities, labels):
        assert other["confusion_matrix"] == logits["confusion_matrix"]
        assert other["miou"] == logits["miou"] and other["per_class_iou"] == logits["per_class_iou"]
        assert other["agreement"] == 100.0 and other["miou_delta"] == 0.0
    # Predicted at the network's 64x64 and resized (nearest) to each scene's 72x88, as from logits.
    written = [np.asarray(Image.open(tmp_path / "eval" / "predictions" / r["label"] / "scene_0000.png"))
               for r in (logits, labels)]
    assert written[1].shape == (72, 88) and np.array_equal(written[1], written[0])

    crf = run_cli("eval", fixture_heads["labels"], "--images", scenes / "images", "--masks", scenes / "masks", "--crf",
                  "-o", tmp_path / "crf")
    assert_clean_error(crf, 2, "--crf", "outputs labels only")


def test_infer_takes_the_label_map_as_it_is_without_torch(fixture_heads, scenes, tmp_path):
    images = sorted((scenes / "images").glob("*.png"))[:2]
    masks = {}
    for name in HEADS:
        proc = run_cli("infer", fixture_heads[name], *images, "--out", tmp_path / name, "--json", block_torch=True)
        assert proc.returncode == 0, proc.stderr
        results = json.loads(proc.stdout)
        assert [r["head"] for r in results] == [name, name]
        masks[name] = [np.asarray(Image.open(r["mask"])) for r in results]
    assert masks["labels"][0].shape == (72, 88)
    for name in HEADS[1:]:
        for got, expected in zip(masks[name], masks["logits"]):
            np.testing.assert_array_equal(got, expected)


def test_binary_labels_head_has_no_matte_and_says_so(binary_heads, tmp_path):
    image = tmp_path / "half.png"
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30, 0] = 255  # red left half: foreground; blue right half: background
    rgb[:, 30:, 2] = 255
    Image.fromarray(rgb).save(image)
    logits = run_cli("infer", binary_heads["logits"], image, "--out", tmp_path / "logits", "--json")
    labels = run_cli("infer", binary_heads["labels"], image, "--out", tmp_path / "labels", "--json", block_torch=True)
    assert logits.returncode == 0 and labels.returncode == 0, logits.stderr + labels.stderr
    (with_scores,), (labels_only,) = json.loads(logits.stdout), json.loads(labels.stdout)
    assert with_scores["matte"] and labels_only["matte"] is None and labels_only["head"] == "labels"
    assert "no matte: the model outputs labels only" in labels.stderr
    assert not (tmp_path / "labels" / "half_matte.png").exists()
    mask = np.asarray(Image.open(labels_only["mask"]))
    np.testing.assert_array_equal(mask, np.asarray(Image.open(with_scores["mask"])))
    assert set(np.unique(mask)) == {0, 1}
    assert (mask[:, :25] == 1).all() and (mask[:, 35:] == 0).all()
    assert labels_only["foreground_fraction"] == with_scores["foreground_fraction"]

    inspect = run_cli("inspect", binary_heads["labels"], block_torch=True)
    assert inspect.returncode == 0, inspect.stderr
    assert "(head labels, uint8 NHW)" in inspect.stdout and "no matte" in inspect.stdout


def test_binary_eval_labels_head_same_scores_no_mae(binary_heads, scenes, tmp_path):
    from segdeploy.fixtures.scenes import generate_scenes

    masks = tmp_path / "masks"
    masks.mkdir()
    for path, scene in zip(sorted((scenes / "images").glob("*.png")), generate_scenes(6, 72, 88, seed=31)):
        Image.fromarray((scene.mask > 0).astype(np.uint8)).save(masks / path.name)  # 0/1: every shape is foreground
    proc = run_cli("eval", binary_heads["logits"], binary_heads["labels"], "--images", scenes / "images", "--masks", masks,
                   "--overlays", "0", "--json", "-o", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    logits, labels = json.loads(proc.stdout)["compare"]
    assert labels["confusion_matrix"] == logits["confusion_matrix"] and labels["agreement"] == 100.0
    assert {k: v for k, v in labels["binary"].items() if k != "mae"} == {k: v for k, v in logits["binary"].items() if k != "mae"}
    assert logits["binary"]["mae"] is not None and labels["binary"]["mae"] is None
    assert any("no MAE" in note for note in json.loads(proc.stdout)["notes"])


def test_bench_reports_each_heads_output_bytes_and_host_work(fixture_heads, tmp_path):
    out_json = tmp_path / "bench.json"
    proc = run_cli("bench", *(fixture_heads[name] for name in HEADS), "--batch", "1,2", "--iterations", "3",
                   "--warmup", "1", "-o", out_json)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    rows = {(r["head"], r["batch"]): r for r in report["results"]}
    assert len(rows) == 6
    for (head, batch), r in rows.items():
        assert r["num_classes"] == 6
        scores = 6 * 64 * 64 * 4  # float32 (6, 64, 64) per image
        assert r["output_bytes_per_image"] == (64 * 64 if head == "labels" else scores)
        assert r["output_bytes_per_batch"] == batch * r["output_bytes_per_image"]
        assert r["output_dtype"] == ("uint8" if head == "labels" else "float32")
        assert r["output_copy"].startswith("none: ONNX Runtime on the CPU")  # host memory already: no copy
    predictions = report["predictions"]
    assert [p["head"] for p in predictions.values()] == list(HEADS)
    assert predictions[str(fixture_heads["labels"])]["postprocess"]["skipped"] is True
    assert predictions[str(fixture_heads["probabilities"])]["postprocess"]["median_ms"] > 0
    assert report["processing"]["postprocess"]["what"].startswith("argmax over 6 classes")
    assert "labels · ort" in proc.stdout and "4.0 KB uint8" in proc.stdout and "96.0 KB float32" in proc.stdout
    assert "nothing to do on the host" in proc.stdout and "output copy: ort: none" in proc.stdout


def test_bench_of_a_labels_artifact_skips_the_host_postprocessing_without_torch(fixture_heads):
    proc = run_cli("bench", fixture_heads["labels"], "--iterations", "2", "--crf", "--json", block_torch=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    assert report["processing"]["postprocess"]["skipped"] is True
    assert report["processing"]["crf"] == {"what": "not applicable: the dense CRF refines scores, and the graph outputs "
                                                   "labels only", "skipped": True}
    (row,) = report["results"]
    assert (row["head"], row["output_dtype"], row["output_bytes_per_image"]) == ("labels", "uint8", 64 * 64)
    table = run_cli("bench", fixture_heads["labels"], "--iterations", "2", block_torch=True)
    assert table.returncode == 0, table.stderr
    (line,) = [line for line in table.stdout.splitlines() if line.startswith("│ postprocess ")]
    assert [cell.strip() for cell in line.split("│")[1:9]] == ["postprocess", "1", "", "", "none", "–", "–", "–"]


def test_labels_past_255_classes_stay_int32():
    from segdeploy.infer import labels_at

    labels = np.array([[0, 300], [255, 7]], np.int32)
    resized = labels_at(labels, (4, 4))
    assert resized.dtype == np.int32 and resized.shape == (4, 4)
    np.testing.assert_array_equal(resized, np.kron(labels, np.ones((2, 2), np.int32)))
    assert labels_at(labels.clip(0, 255), (2, 2)).dtype == np.uint8


def test_verify_compares_label_maps_by_agreement_alone():
    from segdeploy.backend.trt.verify import LabelsResult

    reference = np.zeros((1, 8, 8), np.uint8)
    reference[:, 4:] = 3
    candidate = reference.copy()
    candidate[0, 0, :2] = 5  # a class id 5 away: no "error of values", two pixels that differ
    result = LabelsResult.compare(reference, candidate, 0.95, (1, 3, 8, 8), "labels")
    assert (result.agreement, result.disagreeing_pixels, result.reference_classes_seen) == (62 / 64, 2, 2)
    assert result.passed and not LabelsResult.compare(reference, candidate, 0.99, (1, 3, 8, 8), "labels").passed
    assert not LabelsResult.compare(reference, candidate[:, :4], 0.0, (1, 3, 8, 8), "labels").passed
    assert result.to_json()["compared"] == "labels" and "2 pixels differ" in result.describe()


def test_verify_reads_a_scores_reference_as_its_manifest_says(fixture_heads):
    """An FP16/INT8 labels artifact's engine is verified against its FP32 parent, the scores graph: the
    reference's labels are read on the host; a labels reference is taken as it is."""
    from segdeploy.backend.trt.verify import reference_labels

    outputs = {}
    for name in ("logits", "labels"):
        onnx_path, manifest = resolve_artifact(fixture_heads[name])
        with make_runner("ort", onnx_path, manifest) as runner:
            outputs[name] = (runner.infer({"images": sample_images((1, 3, 64, 64), manifest["input"])}), manifest)
    (labels_out, _), (logits_out, logits_manifest) = outputs["labels"], outputs["logits"]
    np.testing.assert_array_equal(reference_labels(logits_out, "labels", logits_manifest), labels_out["labels"])
    assert reference_labels(labels_out, "labels", {}) is labels_out["labels"]


@pytest.mark.slow
@pytest.mark.skipif(not rtx_installed(), reason=NO_RTX)
def test_binary_labels_head_builds_with_tensorrt_for_rtx(binary_heads, tmp_path):
    """The binary labels graph ends in its Cast to uint8: TensorRT's parser refuses uint8 intermediate tensors."""
    manifest = build_rtx(binary_heads["labels"], tmp_path / "rtx", "colour_net binary labels")
    (output,) = [t for t in manifest["io"] if t["mode"] == "output"]
    assert (output["name"], output["dtype"], len(output["shape"])) == ("labels", "uint8", 3)
