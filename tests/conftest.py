"""Shared pytest fixtures.

``trained_fixture`` (session): the fixture network (segdeploy.fixtures.net.TinySegNet, 6 classes,
ImageNet-normalised float32 NCHW in, logits at input resolution out) trained on procedural
scenes (segdeploy.fixtures.scenes) - a ``TrainedFixture`` with ``.model`` (eval mode),
``.state_dict``, ``.classes``, ``.input`` (the manifest ``input`` section, 64x64),
``.pixel_accuracy``/``.miou`` on held-out scenes, and ``.scenes``: a few held-out 64x64
validation ``Scene``s (``.image`` uint8 RGB HWC, ``.mask`` uint8 class ids). Trained once per
session (~35 s on 2 cores) and cached in pytest's cache folder under a key that changes with
the fixture code, so later sessions load it in a second.

``fixture_artifact`` (session): an FP32 artifact folder (model.onnx + manifest.json, target
trt11, dynamic batch, 64x64) of the trained fixture.

``image_folders`` (session): ``calib`` and ``val`` folders of PNG images for calibration and
evaluation: generated scenes (``val`` with ``masks/``), plus real photos from scikit-image in
``calib/photos`` and ``val_photos``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_fixture(request, tmp_path_factory):
    pytest.importorskip("torch")
    from segdeploy.fixtures.train import train_fixture_model, validation_scenes

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache_dir = cache.mkdir("segdeploy-fixture") if cache else tmp_path_factory.mktemp("segdeploy-fixture")
    fixture = train_fixture_model(cache_dir=cache_dir)
    fixture.scenes = validation_scenes(8, fixture.config.size)
    return fixture


@pytest.fixture(scope="session")
def fixture_artifact(trained_fixture, tmp_path_factory) -> Path:
    from segdeploy.fixtures.artifact import export_fixture_artifact

    return export_fixture_artifact(trained_fixture, tmp_path_factory.mktemp("fixture_fp32"))


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory, trained_fixture) -> dict[str, Path]:
    from segdeploy.fixtures.photos import write_photo_folder
    from segdeploy.fixtures.scenes import generate_scenes, write_scene_folder

    size = trained_fixture.config.size
    root = tmp_path_factory.mktemp("images")
    calib = write_scene_folder(root / "calib", generate_scenes(24, size, size, seed=7), masks=False)
    write_photo_folder(calib / "photos")
    val = write_scene_folder(root / "val", generate_scenes(16, size, size, seed=8))
    return {"calib": calib, "val": val, "val_photos": write_photo_folder(root / "val_photos")}



def pytest_terminal_summary(terminalreporter):
    """How many real TensorRT for RTX engines the session built (tests/rtx.py)."""
    from rtx import BUILT, FAILED

    if BUILT or FAILED:
        terminalreporter.write_sep("-", f"TensorRT for RTX: {len(BUILT)} real engines built (SM86), {len(FAILED)} failed")
        for line in BUILT:
            terminalreporter.write_line(f"built  {line}")
        for line in FAILED:
            terminalreporter.write_line(f"FAILED {line}")
