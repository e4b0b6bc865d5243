"""Dense CRF (segdeploy.crf): agreement with pydensecrf and with an exact mean field, exact
properties of mean-field inference, the task-level effect, bad input, the CLI, and GPU vs CPU."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy import _native
from segdeploy.crf import (
    WORKSPACE_LIMIT_ENV,
    CRFParams,
    CudaBuffer,
    dense_crf,
    set_workspace_limit,
    synthetic_logits,
    workspace_limit,
)
from segdeploy.errors import BadInputError

DEEPLAB_V2 = CRFParams()
DEEPLAB_5_50_10 = CRFParams(bilateral_weight=5.0, bilateral_theta_xy=50.0, bilateral_theta_rgb=10.0)


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """One of scikit-image's bundled photos as uint8 RGB, optionally resized to (H, W)."""
    data = pytest.importorskip("skimage.data")
    image = getattr(data, name)()
    if size is not None:
        from skimage.transform import resize

        image = (resize(image, size, anti_aliasing=True) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def generated_scene(rng: np.random.Generator, height: int = 96, width: int = 128):
    """Rectangles and a disc of distinct colours on a background, with pixel noise: image and truth."""
    truth = np.zeros((height, width), np.int64)
    truth[10:60, 15:70] = 1
    truth[40:90, 80:120] = 2
    yy, xx = np.mgrid[0:height, 0:width]
    truth[(yy - 70) ** 2 + (xx - 35) ** 2 < 15**2] = 3
    colours = np.array([[40, 40, 45], [200, 60, 50], [60, 170, 80], [230, 220, 90]], np.float32)
    image = colours[truth] + rng.normal(0.0, 6.0, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis, keepdims=True))
    return shifted / shifted.sum(axis, keepdims=True)


# ---- agreement with the reference ------------------------------------------------------------


def pydensecrf_reference(unary_energy: np.ndarray, image: np.ndarray, params: CRFParams) -> np.ndarray:
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    classes, height, width = unary_energy.shape
    normalization = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER}[params.normalization]
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_energy.reshape(classes, -1)))
    crf.addPairwiseGaussian(sxy=params.spatial_theta, compat=params.spatial_weight, normalization=normalization)
    crf.addPairwiseBilateral(sxy=params.bilateral_theta_xy, srgb=params.bilateral_theta_rgb, rgbim=image,
                             compat=params.bilateral_weight, normalization=normalization)
    return np.array(crf.inference(params.iterations), np.float32).reshape(classes, height, width)


@pytest.mark.parametrize(
    "name, size, classes, params",
    [
        ("astronaut", (256, 256), 21, DEEPLAB_V2),
        ("chelsea", None, 40, CRFParams(normalization="after")),
        ("coffee", (201, 299), 21, DEEPLAB_5_50_10),  # an odd pixel count
    ],
)
# "portable": the kernels' build for CPUs without AVX2/F16C (float32 lattice, 4-lane vectors),
# the same code that runs on ARM (Jetson).
@pytest.mark.parametrize("cpu_build", ["native", "portable"])
def test_matches_pydensecrf_on_photos(name, size, classes, params, cpu_build, monkeypatch):
    if cpu_build == "portable":
        monkeypatch.setenv("SEGDEPLOY_CPU_PORTABLE", "1")
    image = photo(name, size)
    logits = synthetic_logits(image, classes, seed=1)
    reference = pydensecrf_reference(-logits, image, params)
    probabilities, labels = dense_crf(-logits, image, params, unary_kind="neg_log_prob")
    agreement = (labels == reference.argmax(0)).mean()
    mean_difference = np.abs(probabilities - reference).mean()
    assert agreement >= 0.999, agreement
    assert mean_difference <= 1e-3, mean_difference
    # The comparison means something: the CRF moved the labels away from the unary's.
    assert (labels != logits.argmax(0)).mean() > 0.02


def test_matches_pydensecrf_on_a_lattice_larger_than_its_first_table():
    """Noise with a narrow colour kernel gives nearly six vertices per pixel: the CPU's hash table
    (sized for two per pixel) grows while the vertices are numbered."""
    image = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    params = CRFParams(bilateral_theta_rgb=0.5)
    logits = synthetic_logits(image, 5, seed=4)
    reference = pydensecrf_reference(-logits, image, params)
    probabilities, labels = dense_crf(logits, image, params)
    assert (labels == reference.argmax(0)).mean() >= 0.999
    assert np.abs(probabilities - reference).mean() <= 1e-3


def exact_mean_field(logits: np.ndarray, image: np.ndarray, params: CRFParams) -> np.ndarray:
    """Dense mean field with explicit N x N Gaussian kernels: the model the lattice approximates.

    Like the lattice filter (and pydensecrf), the kernel sum runs over every j including i.
    """
    classes, height, width = logits.shape
    yy, xx = np.mgrid[0:height, 0:width]
    position = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)
    colour = image.reshape(-1, 3).astype(np.float32)

    def gaussian(features):
        squared = (features**2).sum(1)
        distance = np.maximum(squared[:, None] + squared[None] - 2.0 * features @ features.T, 0.0)
        return np.exp(-0.5 * distance)

    kernels_ = [
        (params.spatial_weight, gaussian(position / params.spatial_theta)),
        (params.bilateral_weight,
         gaussian(np.concatenate([position / params.bilateral_theta_xy, colour / params.bilateral_theta_rgb], 1))),
    ]
    assert params.normalization == "symmetric"
    norms = [1.0 / np.sqrt(kernel.sum(1)) for _, kernel in kernels_]
    unary = logits.reshape(classes, -1).T
    q = softmax(unary, axis=1)
    for _ in range(params.iterations):
        message = sum(w * n[:, None] * (kernel @ (n[:, None] * q)) for (w, kernel), n in zip(kernels_, norms))
        q = softmax(unary + message, axis=1)
    return q.T.reshape(classes, height, width)


@pytest.mark.parametrize(
    "name, params", [("astronaut", DEEPLAB_V2), ("chelsea", DEEPLAB_V2), ("coffee", DEEPLAB_5_50_10)]
)
def test_matches_exact_mean_field_on_small_images(name, params):
    image = photo(name, (64, 64))
    logits = synthetic_logits(image, 5, seed=2)
    exact = exact_mean_field(logits, image, params)
    labels = dense_crf(logits, image, params, output="labels")
    assert (labels == exact.argmax(0)).mean() >= 0.98
    assert (exact.argmax(0) != logits.argmax(0)).mean() > 0.1  # the pairwise terms matter here


# ---- exact properties -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_case():
    image = photo("astronaut", (48, 64))
    return synthetic_logits(image, 6, seed=3), image


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_probabilities_are_distributions_and_labels_their_argmax(small_case, normalization):
    logits, image = small_case
    probabilities, labels = dense_crf(logits, image, normalization=normalization)
    assert probabilities.dtype == np.float32 and labels.dtype == np.int32
    assert probabilities.min() >= 0.0
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probabilities.argmax(0))


@pytest.mark.parametrize("override", [{"iterations": 0}, {"spatial_weight": 0.0, "bilateral_weight": 0.0}])
def test_no_pairwise_term_gives_softmax_of_minus_u(small_case, override):
    logits, image = small_case
    probabilities = dense_crf(-logits, image, unary_kind="neg_log_prob", output="probabilities", **override)
    np.testing.assert_allclose(probabilities, softmax(logits), atol=1e-6)


def test_per_pixel_constant_changes_nothing(small_case):
    logits, image = small_case
    shift = np.random.default_rng(4).uniform(-10, 10, logits.shape[1:]).astype(np.float32)
    # Equal up to the float32 rounding of the shifted logits.
    np.testing.assert_allclose(dense_crf(logits + shift, image, output="probabilities"),
                               dense_crf(logits, image, output="probabilities"), atol=1e-4)


def test_permuting_classes_permutes_q(small_case):
    logits, image = small_case
    order = np.random.default_rng(5).permutation(logits.shape[0])
    # Equal up to the order of float32 sums over classes.
    np.testing.assert_allclose(dense_crf(logits[order], image, output="probabilities"),
                               dense_crf(logits, image, output="probabilities")[order], atol=1e-5)


def test_unary_kinds_dtypes_layouts_and_batches_agree(small_case):
    logits, image = small_case
    expected = dense_crf(logits, image, output="probabilities")
    np.testing.assert_allclose(dense_crf(softmax(logits), image, unary_kind="probabilities", output="probabilities"),
                               expected, atol=1e-5)
    half = logits.astype(np.float16)  # read exactly: the same as its float32 values
    np.testing.assert_array_equal(dense_crf(half, image, output="probabilities"),
                                  dense_crf(half.astype(np.float32), image, output="probabilities"))
    np.testing.assert_array_equal(dense_crf(logits, image.transpose(2, 0, 1), output="probabilities"), expected)
    flipped_logits, flipped_image = logits[:, :, ::-1], image[:, ::-1]
    batch = dense_crf(np.stack([logits, flipped_logits]), np.stack([image, flipped_image]), output="probabilities")
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_array_equal(batch[1], dense_crf(flipped_logits, flipped_image, output="probabilities"))


def test_crf_lowers_the_error_rate_on_a_generated_scene():
    rng = np.random.default_rng(6)
    image, truth = generated_scene(rng)
    logits = (1.0 * (np.arange(4)[:, None, None] == truth) + rng.normal(0, 1.0, (4, *truth.shape))).astype(np.float32)
    before = (logits.argmax(0) != truth).mean()
    after = (dense_crf(logits, image, bilateral_theta_xy=30.0, bilateral_theta_rgb=10.0, output="labels") != truth).mean()
    assert before > 0.2
    assert after < 0.25 * before, (before, after)


# ---- bad input --------------------------------------------------------------------------------


def _bad_inputs():
    logits = np.zeros((3, 8, 10), np.float32)
    image = np.zeros((8, 10, 3), np.uint8)
    nan_logits = logits.copy()
    nan_logits[1, 2, 3] = np.nan
    inf_logits = logits.copy()
    inf_logits[0, 0, 0] = np.inf
    return [
        ("shape mismatch", (logits, np.zeros((8, 11, 3), np.uint8)), {}, "does not match"),
        ("batch mismatch", (logits[None].repeat(2, 0), image[None]), {}, "batch"),
        ("rank mismatch", (logits[None], image), {}, "batch axis"),
        ("float64 unary", (logits.astype(np.float64), image), {}, "float32 or float16"),
        ("integer unary", (logits.astype(np.int32), image), {}, "float32 or float16"),
        ("float image", (logits, image.astype(np.float32)), {}, "uint8"),
        ("NaN", (nan_logits, image), {}, "unary[0, 1, 2, 3]"),
        ("inf", (inf_logits, image), {}, "unary[0, 0, 0, 0]"),
        ("negative probability", (logits - 1.0, image), {"unary_kind": "probabilities"}, ">= 0"),
        ("zero classes", (np.zeros((0, 8, 10), np.float32), image), {}, ">= 1"),
        ("zero size", (np.zeros((3, 0, 10), np.float32), np.zeros((0, 10, 3), np.uint8)), {}, ">= 1"),
        ("zero theta", (logits, image), {"spatial_theta": 0.0}, "spatial_theta"),
        ("negative theta", (logits, image), {"bilateral_theta_rgb": -3.0}, "bilateral_theta_rgb"),
        ("negative iterations", (logits, image), {"iterations": -1}, "iterations"),
        ("fractional iterations", (logits, image), {"iterations": 2.5}, "integer"),
        ("bad unary kind", (logits, image), {"unary_kind": "scores"}, "unary_kind"),
        ("bad normalisation", (logits, image), {"normalization": "before"}, "normalization"),
        ("bad output", (logits, image), {"output": "all"}, "output"),
    ]


@pytest.mark.parametrize("what, arrays, options, message", _bad_inputs(), ids=[case[0] for case in _bad_inputs()])
def test_bad_input_raises_a_clear_error(what, arrays, options, message):
    with pytest.raises(BadInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dense_crf(*arrays, **options)


# ---- command line -----------------------------------------------------------------------------


def test_cli_writes_a_coloured_mask_and_an_overlay(tmp_path, capsys):
    from PIL import Image

    from segdeploy.cli import main

    rng = np.random.default_rng(7)
    image, truth = generated_scene(rng)
    logits = (1.0 * (np.arange(4)[:, None, None] == truth) + rng.normal(0, 1.0, (4, *truth.shape))).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    Image.fromarray(image).save(tmp_path / "image.png")
    out = tmp_path / "out" / "mask.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["crf", "--logits", str(tmp_path / "logits.npy"), "--image", str(tmp_path / "image.png"),
              "--out", str(out), "--bilateral-theta-xy", "30", "--bilateral-theta-rgb", "10"])
    assert exit_info.value.code == 0
    mask = Image.open(out)
    assert mask.mode == "P" and mask.size == (truth.shape[1], truth.shape[0])
    assert (np.asarray(mask) != truth).mean() < 0.25 * (logits.argmax(0) != truth).mean()
    overlay = Image.open(out.with_name("mask_overlay.png"))
    assert overlay.mode == "RGB" and overlay.size == mask.size
    assert "wrote" in capsys.readouterr().out

    np.save(tmp_path / "wrong.npy", logits[:, :-1])
    with pytest.raises(SystemExit) as exit_info:
        main(["crf", "--logits", str(tmp_path / "wrong.npy"), "--image", str(tmp_path / "image.png"),
              "--out", str(tmp_path / "never.png")])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "never.png").exists()


# ---- GPU --------------------------------------------------------------------------------------


def _require_cuda():
    if _native.cuda_device_count() == 0:
        pytest.skip(f"no CUDA device visible to the segdeploy kernels (built with CUDA: {_native.built_with_cuda()})")


def _photo_or_scene(size):
    """A bundled photo where scikit-image is installed, else a generated scene of that size."""
    try:
        return photo("astronaut", size)
    except pytest.skip.Exception:
        return generated_scene(np.random.default_rng(8), *size)[0]


@pytest.mark.gpu
def test_cuda_matches_cpu():
    _require_cuda()
    image = _photo_or_scene((512, 512))
    logits = synthetic_logits(image, 21, seed=9)
    cpu_probabilities, cpu_labels = dense_crf(logits, image)
    gpu_probabilities, gpu_labels = dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(image))
    gpu_probabilities, gpu_labels = gpu_probabilities.numpy(), gpu_labels.numpy()
    # CUDA rounds the splat's input to float16. Measured on photo crops (kernels' emulation, commit
    # 3a9a340): max |dQ| 1.5e-3 / 2.4e-3, mean 2.8e-6 / 1.7e-6, labels equal; limits ~2-4x that.
    assert (gpu_labels == cpu_labels).mean() >= 0.999
    assert np.abs(gpu_probabilities - cpu_probabilities).mean() <= 1e-5
    assert np.abs(gpu_probabilities - cpu_probabilities).max() <= 5e-3
    np.testing.assert_allclose(gpu_probabilities.sum(0), 1.0, atol=1e-5)


@pytest.mark.gpu
def test_cuda_batches_layouts_and_half_precision_match_cpu():
    _require_cuda()
    image = _photo_or_scene((96, 128))
    logits = synthetic_logits(image, 5, seed=10)
    images = np.stack([image, image[::-1]]).transpose(0, 3, 1, 2).copy()  # (N, 3, H, W)
    unary = np.stack([logits, logits[:, ::-1]]).astype(np.float16)
    cpu = dense_crf(unary, images, output="probabilities", normalization="after")
    gpu = dense_crf(CudaBuffer.from_numpy(unary), CudaBuffer.from_numpy(images), output="probabilities",
                    normalization="after").numpy()
    # Measured on this input (astronaut, emulated CUDA): mean |dQ| 4.1e-6, max 1.06e-2 (5 classes,
    # normalisation after: single pixels move most), labels equal; limits ~2.5x that.
    assert np.abs(gpu - cpu).mean() <= 1e-5
    assert np.abs(gpu - cpu).max() <= 2.5e-2
    assert (gpu.argmax(1) == cpu.argmax(1)).mean() >= 0.999


@pytest.mark.gpu
def test_cuda_rejects_nan_with_its_position():
    _require_cuda()
    logits = np.zeros((3, 16, 16), np.float32)
    logits[2, 5, 7] = np.nan
    with pytest.raises(BadInputError, match=r"unary\[0, 2, 5, 7\]"):
        dense_crf(CudaBuffer.from_numpy(logits), CudaBuffer.from_numpy(np.zeros((16, 16, 3), np.uint8)))


def test_workspace_limit_comes_from_the_environment_or_a_call(monkeypatch):
    """The GPU workspace cache's byte limit (the cache itself: tests/test_crf_emulated_cuda.py)."""
    monkeypatch.delenv(WORKSPACE_LIMIT_ENV, raising=False)
    assert workspace_limit() == 1 << 30
    monkeypatch.setenv(WORKSPACE_LIMIT_ENV, "256")
    assert workspace_limit() == 256 << 20
    try:
        set_workspace_limit(5 << 20)
        assert workspace_limit() == 5 << 20
    finally:
        set_workspace_limit(None)
    assert workspace_limit() == 256 << 20
    for wrong in (-1, 2.5, True):
        with pytest.raises(BadInputError, match="workspace limit"):
            set_workspace_limit(wrong)
    monkeypatch.setenv(WORKSPACE_LIMIT_ENV, "lots")
    with pytest.raises(BadInputError, match=WORKSPACE_LIMIT_ENV):
        workspace_limit()
