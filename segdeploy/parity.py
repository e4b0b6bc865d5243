"""The parity gate: an exported graph must predict what its reference predicts, at several shapes.

Dynamic-shape exports can be silently wrong at shapes other than the example's (adaptive
pooling, shape arithmetic baked in as constants), so the gate always runs at the export shape
and at a second shape with another aspect ratio and batch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .backend.base import Runner
from .outputs import Head
from .preprocess import normalize, takes_pictures

DEFAULT_MAX_ABS_DIFF = 1e-3
DEFAULT_MIN_AGREEMENT = 0.9999
#: Relative term of the tolerance, against the largest |value| of the reference output. float32
#: rounding grows with the activations' scale: over the zoo's 27 variants with random weights at
#: 128² and 512² (benchmarks/zoo_gate.py; logits up to 9.4e4), ONNX Runtime differs from PyTorch
#: by at most ~3e-6 of the scale, while the mis-exports in tests/toy_models.py differ by 0.25-0.7.
DEFAULT_RTOL = 1e-5


@dataclass(frozen=True)
class Thresholds:
    """An output passes when max |Δ| <= max_abs_diff + rtol · max |reference| (like numpy's
    allclose, but against the scale of the whole reference: element-wise rtol would demand
    near-exact values at zero crossings, where deep networks' rounding error is as large as
    anywhere), and the prediction output's labels agree on at least ``min_agreement`` of pixels."""

    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    rtol: float = DEFAULT_RTOL

    def limit(self, reference_max_abs: float) -> float:
        """The largest |Δ| allowed for an output whose reference reaches ``reference_max_abs``."""
        return self.max_abs_diff + self.rtol * reference_max_abs

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"max |Δ| <= {self.max_abs_diff:g} + {self.rtol:g} × max |reference|, label agreement >= {self.min_agreement:.4%}"


@dataclass(frozen=True)
class ParityResult:
    """One output compared at one input shape.

    ``check_parity``'s results are per shape: the prediction output's figures, ``passed`` only
    when every output passed, and each output's own result in ``outputs``.
    """

    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    #: Fraction of pixels whose label (argmax, or threshold for a binary head) is the same in both
    #: outputs; None for outputs held to the tolerance only.
    argmax_agreement: float | None
    #: How many classes the reference predicts somewhere: 1 means agreement proves little.
    reference_classes_seen: int | None
    passed: bool
    #: max |reference|: the scale the relative term of the tolerance is taken against.
    reference_max_abs: float = 0.0
    #: max |Δ| / max |reference|.
    relative_diff: float = 0.0
    #: The max |Δ| limit applied: max_abs_diff + rtol · reference_max_abs.
    limit: float = DEFAULT_MAX_ABS_DIFF
    #: The output's name.
    output: str = "logits"
    #: Per-shape results: every output's own result, the prediction's first.
    outputs: tuple[ParityResult, ...] = ()

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outputs"}
        data["shape"] = list(self.shape)
        if self.outputs:  # by name; each at this entry's shape
            data["outputs"] = {r.output: {k: v for k, v in r.to_json().items() if k not in ("shape", "output")}
                               for r in self.outputs}
        return data

    @classmethod
    def from_json(cls, data: dict) -> ParityResult:
        """The inverse of ``to_json``."""
        shape = tuple(data["shape"])
        outputs = tuple(cls.from_json({**r, "shape": shape, "output": name}) for name, r in (data.get("outputs") or {}).items())
        return cls(**{**data, "shape": shape, "outputs": outputs})

    @property
    def failed_output(self) -> ParityResult:
        """The first output that failed (itself when it has no per-output results)."""
        return next((r for r in self.outputs if not r.passed), self)

    def describe(self) -> str:
        """One line of figures: what failed, and the limit applied."""
        if self.max_abs_diff == float("inf"):
            return f"output {self.output!r}: missing, or shaped unlike the reference's"
        text = (f"output {self.output!r}: max |Δ| {self.max_abs_diff:.3g} = {self.relative_diff:.2g} of max |reference| "
                f"{self.reference_max_abs:.3g} (limit {self.limit:.3g})")
        if self.argmax_agreement is not None:
            text += f", label agreement {self.argmax_agreement:.4%}"
        return text


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
    """Model inputs (float32 NCHW): ``sample_pictures`` normalised as the model expects, or for
    an input that takes tensors (depth, multispectral bands), ``sample_tensors``."""
    if not takes_pictures(input_spec):
        return sample_tensors(shape, seed)
    return normalize(sample_pictures(shape, seed), input_spec)


def sample_tensors(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth random float32 NCHW tensors of unit scale: band-like fields rather than white noise."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, c, max(2, h // 16 + 1), max(2, w // 16 + 1)))
    rows = np.linspace(0, coarse.shape[2] - 1, h)
    cols = np.linspace(0, coarse.shape[3] - 1, w)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, coarse.shape[2] - 1), np.minimum(c0 + 1, coarse.shape[3] - 1)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    top = coarse[:, :, r0][:, :, :, c0] * (1 - fc) + coarse[:, :, r0][:, :, :, c1] * fc
    bottom = coarse[:, :, r1][:, :, :, c0] * (1 - fc) + coarse[:, :, r1][:, :, :, c1] * fc
    smooth = top * (1 - fr) + bottom * fr
    return (smooth + 0.05 * rng.standard_normal(smooth.shape)).astype(np.float32)


def sample_feed(shape: tuple[int, int, int, int], manifest: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for an artifact: the normalised images, plus the uint8 picture a CRF graph also takes."""
    if not takes_pictures(manifest["input"]):
        return {manifest["input"]["name"]: sample_tensors(shape, seed)}
    pictures = sample_pictures(shape, seed)
    feed = {manifest["input"]["name"]: normalize(pictures, manifest["input"])}
    crf = manifest.get("crf")
    if crf:
        feed[crf["image_input"]] = pictures
    return feed


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, thresholds: Thresholds, input_shape=None,
                    head: Head | None = Head(), name: str = "logits") -> ParityResult:
    """Compare one NCHW output of two runs: max |Δ| against the tolerance, and, with a ``head``
    (the prediction output), the labels it reads against ``min_agreement``.

    ``input_shape`` is what the result reports (default: the output's).
    """
    shape = tuple(input_shape or reference.shape)
    if reference.shape != candidate.shape:
        inf = float("inf")
        return ParityResult(shape, inf, inf, None if head is None else 0.0, None if head is None else 0, False,
                            relative_diff=inf, limit=thresholds.max_abs_diff, output=name)
    reference64 = reference.astype(np.float64)
    diff = np.abs(reference64 - candidate.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(reference64).max()) if reference.size else 0.0
    limit = thresholds.limit(scale)
    # Non-finite values make every figure meaningless (an inf reference would lift the limit to inf).
    passed = bool(np.isfinite(reference).all() and np.isfinite(candidate).all()) and max_diff <= limit
    agreement = classes_seen = None
    if head is not None:
        ref_labels = head.labels(reference)
        agreement = float((ref_labels == head.labels(candidate)).mean()) if ref_labels.size else 1.0
        classes_seen = int(np.unique(ref_labels).size)
        passed = passed and agreement >= thresholds.min_agreement
    return ParityResult(
        shape=shape,
        max_abs_diff=max_diff,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        argmax_agreement=agreement,
        reference_classes_seen=classes_seen,
        passed=passed,
        reference_max_abs=scale,
        relative_diff=max_diff / scale if scale else (0.0 if max_diff == 0 else float("inf")),
        limit=limit,
        output=name,
    )


def compare_all_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], thresholds: Thresholds,
                        input_shape, prediction: str, head: Head = Head()) -> ParityResult:
    """Compare every output of ``expected``: ``prediction`` with its ``head``'s labels and the
    tolerance, the others (auxiliary heads, boundary maps) with the tolerance only. Returns the
    prediction's result carrying every output's in ``outputs`` and failing when any failed."""
    if prediction not in expected:
        raise ValueError(f"the reference has no output {prediction!r} (it has {', '.join(expected)})")
    results = []
    for name, reference in expected.items():
        if name in actual:
            results.append(compare_outputs(reference, actual[name], thresholds, input_shape,
                                           head if name == prediction else None, name))
        else:  # a missing output is a failed one, reported by name
            results.append(compare_outputs(reference, np.empty((0,)), thresholds, input_shape, None, name))
    results.sort(key=lambda r: r.output != prediction)  # the prediction first
    return replace(results[0], passed=all(r.passed for r in results), outputs=tuple(results))


def check_parity(reference: Runner, candidate: Runner, shapes, input_spec: dict, thresholds: Thresholds,
                 prediction: str = "logits", head: Head = Head(), seed: int = 0) -> list[ParityResult]:
    """Run both runners on the same inputs at each shape and compare every output the reference
    returns (see ``compare_all_outputs``); one result per shape."""
    results = []
    for i, shape in enumerate(shapes):
        images = sample_images(shape, input_spec, seed=seed + i)
        feed = {input_spec["name"]: images}
        results.append(compare_all_outputs(reference.infer(feed), candidate.infer(feed), thresholds, shape, prediction, head))
    return results
