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

``foreign_models`` (session): ONNX files as users bring them (tests/foreign_models.py, which has
the table): a read-only mapping name -> ``ForeignModel`` whose entries are built on first access,
each with ``.path``, ``.input_name``, ``.dims`` (ints, names for dynamic axes), ``.channels``,
``.color`` ("RGB", "GRAY", or "tensor" for .npy samples), ``.bands``, ``.mean``/``.std`` (per
channel, on pixel * ``.scale`` = 1/255), ``.outputs`` (names, in order), ``.kind`` ("binary" or
"multiclass"), ``.activation`` ("sigmoid" in the graph, or "none"), ``.classes`` (output channels),
``.class_names``, ``.opset``, ``.dynamic``, ``.trained``, ``.metrics`` (held-out, percent),
``.reference`` (fp16_cast: its float32 source), ``.model`` (the torch module it computes) and
``.prepare(uint8 RGB scenes)`` -> its float32 NCHW input. Names: ``binary`` (Sigmoid head, opset 13,
input ``input.1``, output ``mask``), ``binary_logits`` (same weights, raw logit, opset 17),
``opset11`` (the trained fixture, fixed 1x3x64x64, ``input.1``), ``opset12`` (the trained fixture,
dynamic, ``x``), ``u2net`` (outputs d0..d3, each a Sigmoid), ``gray`` (1 channel), ``bands4`` and
``bands6`` (RGB + derived bands, tensor inputs), ``fp16_cast`` (smp U-Net, random weights, float16
initializers behind Cast). Binary models segment foreground (any shape) vs background; the others
the 6 scene classes. The trained networks (segdeploy.fixtures.variants) are cached in pytest's cache
(``segdeploy-variants``) like ``trained_fixture``: trained once, roughly 5-15 s each on 2 free
cores (1-3 min each on a busy shared machine). Held-out (32 scenes): binary IoU 89.4 %, u2net
IoU (d0) 86.9 %, gray mIoU 61.3 %, bands4 mIoU 86.6 %, bands6 mIoU 87.5 %.
``foreign_models.trained(name)`` gives a variant's ``TrainedVariant``, ``foreign_models.fixture()``
the ``TrainedFixture``.

``tensor_folders`` (session): data of the multi-band models, ``{"bands4": {...}, "bands6": {...}}``,
each with ``calib`` (a folder: ``images/scene_NNNN.npy``, 16 samples, no masks), ``val`` (a folder:
``images/scene_NNNN.npy`` and ``masks/scene_NNNN.png`` with class ids, 8 samples), ``calib_npz``
(a file: ``calib_npz/calib.npz``, one array ``images`` (16, C, 64, 64)) and ``val_npz`` (a file:
``val_npz/images/val.npz``, one array ``images`` (8, C, 64, 64), with ``val_npz/masks/`` beside
``val_npz/images/`` in the batch's order). Every sample is normalised float32 (C, H, W), exactly
``foreign_models[name].prepare`` of the scene. Scenes: calib seed 7, val seed 8 (the first of
``image_folders``' scenes).

``gray_folders`` (session): ``calib`` (``images/`` of 16 8-bit grey "L" PNGs) and ``val``
(``images/`` and ``masks/``, 8) for the ``gray`` model; the same scenes as ``tensor_folders``.

``binary_folders`` (session): ``val``: ``images/`` (RGB PNGs) and ``masks/`` with 0 = background,
1 = foreground (any shape), 8 scenes (seed 8), for the binary and u2net models.

``emulated_cuda_library`` (session): the kernels library built with its CUDA drivers run on the host
(kernels/tests/cuda_emulation.h), ``libsegdeploy_kernels_emulated_cuda.so``; point
``SEGDEPLOY_KERNELS_LIB`` at it in a subprocess. Skips without cmake, a C++ compiler or CUDA's headers.
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


@pytest.fixture(scope="session")
def emulated_cuda_library(tmp_path_factory) -> Path:
    import shutil
    import subprocess

    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake or a C++ compiler is not installed")
    if shutil.which("nvcc") is None:
        pytest.skip("the CUDA toolkit (its headers) is not installed")
    root = Path(__file__).resolve().parents[1]
    build = tmp_path_factory.mktemp("emulated_cuda")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for command in (
        ["cmake", "-S", str(root), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
         "-DSEGDEPLOY_WITH_CUDA=OFF", "-DSEGDEPLOY_BUILD_TESTS=ON"],
        ["cmake", "--build", str(build), "-j", "2", "--target", "segdeploy_kernels_emulated_cuda"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return build / "kernels" / "libsegdeploy_kernels_emulated_cuda.so"


def _cache_dir(request, tmp_path_factory, name: str) -> Path:
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return cache.mkdir(name) if cache else tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def foreign_models(request, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from foreign_models import ForeignModels

    from segdeploy.fixtures.train import train_fixture_model

    fixture_cache = _cache_dir(request, tmp_path_factory, "segdeploy-fixture")  # trained_fixture's cache
    loaded = []

    def fixture():
        if not loaded:
            loaded.append(train_fixture_model(cache_dir=fixture_cache))
        return loaded[0]

    return ForeignModels(tmp_path_factory.mktemp("foreign_models"), _cache_dir(request, tmp_path_factory, "segdeploy-variants"), fixture)


@pytest.fixture(scope="session")
def tensor_folders(tmp_path_factory) -> dict[str, dict[str, Path]]:
    from foreign_models import write_tensor_folders

    from segdeploy.fixtures.bands import BAND_SETS

    root = tmp_path_factory.mktemp("tensors")
    return {name: write_tensor_folders(root / name, BAND_SETS[name]) for name in ("bands4", "bands6")}


@pytest.fixture(scope="session")
def gray_folders(tmp_path_factory) -> dict[str, Path]:
    from foreign_models import write_gray_folders

    return write_gray_folders(tmp_path_factory.mktemp("gray"))


@pytest.fixture(scope="session")
def binary_folders(tmp_path_factory) -> dict[str, Path]:
    from foreign_models import SIZE, VAL_SEED, write_binary_folder

    from segdeploy.fixtures.scenes import generate_scenes

    return {"val": write_binary_folder(tmp_path_factory.mktemp("binary") / "val", generate_scenes(8, SIZE, SIZE, seed=VAL_SEED))}
