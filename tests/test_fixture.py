"""The procedural scenes, the trained fixture network and its FP32 artifact."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.evaluation.metrics import confusion_matrix, mean_iou, pixel_accuracy
from segdeploy.fixtures.scenes import NUM_CLASSES, generate_scenes, write_scene_folder
from segdeploy.preprocess import find_images, load_image, normalize, preprocess_files


def test_scenes_are_reproducible_and_seed_dependent():
    first, again, other = (generate_scenes(4, 48, 40, seed=s) for s in (3, 3, 4))
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(first[0].image, other[0].image)
    assert first[0].image.shape == (48, 40, 3) and first[0].image.dtype == np.uint8
    assert first[0].mask.shape == (48, 40) and first[0].mask.dtype == np.uint8


def test_scenes_cover_every_class_without_background_dominating():
    masks = np.stack([s.mask for s in generate_scenes(64, 64, 64, seed=0)])
    share = np.bincount(masks.ravel(), minlength=NUM_CLASSES) / masks.size
    assert len(share) == NUM_CLASSES
    assert share.min() > 0.02, share
    assert share[0] < 0.8, share


def test_scene_folder_round_trips(tmp_path):
    scenes = generate_scenes(3, 32, 32, seed=1)
    folder = write_scene_folder(tmp_path / "set", scenes)
    images = find_images(folder / "images")
    assert [p.name for p in images] == ["scene_0000.png", "scene_0001.png", "scene_0002.png"]
    assert np.array_equal(load_image(images[1]), scenes[1].image)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(folder / "masks" / "scene_0002.png")), scenes[2].mask)


def test_training_is_reproducible_and_cached(tmp_path):
    torch = pytest.importorskip("torch")
    from segdeploy.fixtures.train import TrainingConfig, train_fixture_model

    config = TrainingConfig(size=32, train_scenes=16, steps=6, batch=4)
    first = train_fixture_model(config)
    second = train_fixture_model(config, cache_dir=tmp_path)
    cached = train_fixture_model(config, cache_dir=tmp_path)
    assert not second.cached and cached.cached
    for name, tensor in first.state_dict.items():
        assert torch.equal(tensor, second.state_dict[name]), name
        assert torch.equal(tensor, cached.state_dict[name]), name
    assert cached.pixel_accuracy == second.pixel_accuracy


def test_trained_fixture_segments_held_out_scenes(trained_fixture):
    torch = pytest.importorskip("torch")
    scenes = trained_fixture.scenes
    with torch.no_grad():
        logits = trained_fixture.model(torch.from_numpy(normalize(np.stack([s.image for s in scenes]), trained_fixture.input)))
    assert logits.shape == (len(scenes), NUM_CLASSES, 64, 64)
    confusion = confusion_matrix(np.stack([s.mask for s in scenes]), logits.numpy().argmax(1), NUM_CLASSES)
    # Chance is ~1/6 per class; a network that learnt the scenes is far above it.
    assert pixel_accuracy(confusion) > 90
    assert mean_iou(confusion) > 75
    assert trained_fixture.pixel_accuracy > 90


def test_fixture_artifact_matches_torch_in_onnxruntime(trained_fixture, fixture_artifact, image_folders):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from segdeploy.manifest import resolve_artifact

    onnx_path, manifest = resolve_artifact(fixture_artifact)
    assert manifest["onnx"]["precision"] == "fp32" and manifest["onnx"]["target"] == "trt11"
    # Real photos in mixed formats (grey, RGBA, 16-bit, BMP) through the manifest's preprocessing.
    batch = preprocess_files(find_images(image_folders["val_photos"])[:4], manifest["input"])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"images": batch})
    with torch.no_grad():
        torch_logits = trained_fixture.model(torch.from_numpy(batch)).numpy()
    assert onnx_logits.dtype == np.float32 and onnx_logits.shape == torch_logits.shape
    assert np.abs(onnx_logits - torch_logits).max() < 1e-3
