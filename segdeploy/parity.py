"""The parity gate: an exported graph must predict what its reference predicts, at several shapes.

Dynamic-shape exports can be silently wrong at shapes other than the example's (adaptive
pooling, shape arithmetic baked in as constants), so the gate always runs at the export shape
and at a second shape with another aspect ratio and batch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .backend.base import Runner
from .preprocess import normalize

DEFAULT_MAX_ABS_DIFF = 1e-3
DEFAULT_MIN_AGREEMENT = 0.9999


@dataclass(frozen=True)
class Thresholds:
    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF
    min_agreement: float = DEFAULT_MIN_AGREEMENT


@dataclass(frozen=True)
class ParityResult:
    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    #: Fraction of pixels whose argmax class is the same in both outputs.
    argmax_agreement: float
    #: How many classes the reference predicts somewhere: 1 means agreement proves little.
    reference_classes_seen: int
    passed: bool

    def to_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def round_to_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def parity_shapes(height: int, width: int, multiple: int, valid_size=None) -> list[tuple[int, int, int, int]]:
    """The export shape, then batch 2 at another aspect ratio (3/4 of the height, 5/4 of the width).

    ``valid_size(h, w)``, for models that only take some sizes, snaps the second shape to one.
    """
    other = (round_to_multiple(height * 0.75, multiple), round_to_multiple(width * 1.25, multiple))
    if other == (height, width):
        other = (height, width + multiple)
    if valid_size is not None:
        other = valid_size(*other)
        if other == (height, width):
            other = valid_size(height, width + 1)
    return [(1, 3, height, width), (2, 3, *other)]


def sample_pictures(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth random uint8 RGB pictures (N, H, W, 3): low-frequency colour fields with grain.

    Smooth inputs look more like photos to a network than white noise does, so activations
    stay in their usual ranges.
    """
    from PIL import Image

    n, _, h, w = shape
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, size=smooth.shape)
        pictures.append(np.clip(smooth + grain, 0, 255).astype(np.uint8))
    return np.stack(pictures)


def sample_images(shape: tuple[int, int, int, int], input_spec: dict, seed: int = 0) -> np.ndarray:
    """``sample_pictures`` normalised as the model expects (float32 NCHW)."""
    return normalize(sample_pictures(shape, seed), input_spec)


def sample_feed(shape: tuple[int, int, int, int], manifest: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for an artifact: the normalised images, plus the uint8 picture a CRF graph also takes."""
    pictures = sample_pictures(shape, seed)
    feed = {manifest["input"]["name"]: normalize(pictures, manifest["input"])}
    crf = manifest.get("crf")
    if crf:
        feed[crf["image_input"]] = pictures
    return feed


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, thresholds: Thresholds, input_shape=None) -> ParityResult:
    """Compare two NCHW logits arrays; ``input_shape`` is what the result reports (default: the output's)."""
    shape = tuple(input_shape or reference.shape)
    if reference.shape != candidate.shape:
        return ParityResult(shape, float("inf"), float("inf"), 0.0, 0, False)
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_labels = reference.argmax(axis=1)
    agreement = float((ref_labels == candidate.argmax(axis=1)).mean())
    max_diff = float(diff.max()) if diff.size else 0.0
    passed = bool(np.isfinite(candidate).all()) and max_diff <= thresholds.max_abs_diff and agreement >= thresholds.min_agreement
    return ParityResult(
        shape=shape,
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        argmax_agreement=agreement,
        reference_classes_seen=int(np.unique(ref_labels).size),
        passed=passed,
    )


def check_parity(reference: Runner, candidate: Runner, shapes, input_spec: dict, thresholds: Thresholds,
                 output_name: str = "logits", seed: int = 0) -> list[ParityResult]:
    """Run both runners on the same inputs at each shape and compare their ``output_name``."""
    results = []
    for i, shape in enumerate(shapes):
        images = sample_images(shape, input_spec, seed=seed + i)
        feed = {input_spec["name"]: images}
        expected, actual = reference.infer(feed)[output_name], candidate.infer(feed)[output_name]
        results.append(compare_outputs(expected, actual, thresholds, input_shape=shape))
    return results
