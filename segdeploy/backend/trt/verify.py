"""``segdeploy verify``: an engine against the FP32 ONNX it descends from, on the same inputs.

The engine runs in TensorRT, the reference in ONNX Runtime on the CPU; their prediction outputs
are compared with the parity gate's measures (max |Δ| against max_abs_diff + rtol × max |reference|,
label agreement as the manifest's head reads labels) against per-precision thresholds. An engine
whose graph ends in the ``labels`` head hands back label maps (uint8 or int32, the engine's own
dtype): they are compared directly, by agreement alone (class ids have no error of values). The
engine file is checked against engine.json first, so a changed file is refused without TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...errors import BadInputError, VerificationError
from ...fileio import sha256_file
from ...manifest import ONNX_NAME, resolve_artifact
from ...outputs import Head
from ...parity import DEFAULT_RTOL, Thresholds, compare_outputs, sample_images
from ...preprocess import find_images, preprocess_files
from ..onnxrt.runner import OnnxrtRunner, SessionFromOnnx
from .engine_json import check_engine, resolve_engine
from .profile import ShapeRange, format_shape
from .runner import TrtRunner

#: Default thresholds per precision: engine vs the FP32 ONNX in ONNX Runtime. FP32 is the export
#: gate's. The reduced precisions keep their absolute limits (sized for logits of ~10-30) plus a
#: relative term for larger logits, from FP16/INT8 graphs of random ResNets in ONNX Runtime on the
#: CPU (fcn_resnet50, logits ~22; deeplabv2_resnet101, ~2.6e4): FP16 differed by 0.9e-3-1.4e-3 of
#: the scale (rtol 1e-2 leaves 7x headroom), INT8 by 0.08-0.10 (0.2: what the absolute 5.0
#: allows logits of ~25, with 2x headroom; label agreement is the INT8 gate that matters).
VERIFY_THRESHOLDS = {
    "fp32": Thresholds(1e-3, 0.9999, DEFAULT_RTOL),
    "fp16": Thresholds(0.5, 0.99, 1e-2),
    "int8": Thresholds(5.0, 0.98, 0.2),
}


@dataclass(frozen=True)
class LabelsResult:
    """Two label maps (a ``labels`` head's outputs) compared at one input shape: agreement alone."""

    shape: tuple[int, ...]
    output: str
    agreement: float
    disagreeing_pixels: int
    #: How many classes the reference predicts somewhere: 1 means agreement proves little.
    reference_classes_seen: int
    passed: bool

    @classmethod
    def compare(cls, reference: np.ndarray, candidate: np.ndarray, min_agreement: float, shape, name: str) -> LabelsResult:
        if reference.shape != candidate.shape:
            return cls(tuple(shape), name, 0.0, int(reference.size), int(np.unique(reference).size), False)
        same = int(np.count_nonzero(reference == candidate))
        agreement = same / reference.size if reference.size else 1.0
        return cls(tuple(shape), name, agreement, int(reference.size - same), int(np.unique(reference).size),
                   agreement >= min_agreement)

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "output": self.output, "compared": "labels", "agreement": self.agreement,
                "disagreeing_pixels": self.disagreeing_pixels, "reference_classes_seen": self.reference_classes_seen,
                "passed": self.passed}

    def describe(self) -> str:
        return (f"output {self.output!r}: label agreement {self.agreement:.4%} ({self.disagreeing_pixels} pixels differ; "
                "label maps are compared directly)")


@dataclass
class VerifyReport:
    engine: Path
    reference: Path
    precision: str
    thresholds: Thresholds
    results: list
    warnings: list[str]

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_json(self) -> dict:
        return {
            "engine": str(self.engine),
            "reference": str(self.reference),
            "precision": self.precision,
            "thresholds": self.thresholds.to_json(),
            "passed": self.passed,
            "results": [r.to_json() for r in self.results],
            "warnings": self.warnings,
        }


def default_thresholds(precision: str, max_abs_diff=None, min_agreement=None, rtol=None) -> Thresholds:
    """The precision's thresholds, where not given."""
    given = {"max_abs_diff": max_abs_diff, "min_agreement": min_agreement, "rtol": rtol}
    return replace(VERIFY_THRESHOLDS.get(precision, VERIFY_THRESHOLDS["fp32"]),
                   **{name: value for name, value in given.items() if value is not None})


def find_reference(engine_path: Path, manifest: dict, onnx=None) -> Path:
    """The FP32 ONNX to compare with: ``onnx`` or engine.json's ``reference_onnx``, sha256-checked."""
    recorded = manifest.get("reference_onnx") or {}
    if onnx is not None:
        path = Path(onnx)
        if path.is_dir():
            path = path / ONNX_NAME
    elif recorded.get("path"):
        path = Path(recorded["path"])
        if not path.is_absolute():
            path = engine_path.parent / path
    else:
        raise BadInputError(f"{engine_path}: engine.json does not name the FP32 ONNX it descends from; give it with --onnx")
    if not path.is_file():
        raise BadInputError(f"{path}: the FP32 ONNX to verify against is not there; give its path with --onnx")
    if recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
        raise BadInputError(f"{path}: is not the FP32 ONNX this engine descends from (sha256 differs from engine.json)")
    return path


def verification_inputs(manifest: dict, images=None, count: int = 4, shapes=None, seed: int = 0):
    """[(input shape, float32 NCHW batch)]: images from a folder at the profile's opt size, or generated pictures
    at the profile's opt, min and max shapes (or ``shapes``)."""
    spec = manifest["input"]
    profiles = manifest["profiles"][0]
    if len(profiles) > 1:
        raise BadInputError(f"the engine takes {', '.join(profiles)}: verify feeds single-input engines (images) only")
    profile = ShapeRange.from_json(next(iter(profiles.values())))
    if images is not None:
        files = find_images(images)[:count]
        if not files:
            raise BadInputError(f"{images}: no images (.jpg, .jpeg, .png, .bmp) in this folder")
        batch_size = profile.opt[0]
        batches = []
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            if len(chunk) < profile.min[0]:
                break
            x = preprocess_files(chunk, spec, size=profile.opt[2:])
            batches.append((x.shape, x))
        return batches
    wanted = shapes or list(dict.fromkeys([profile.opt, profile.min, profile.max]))
    for shape in wanted:
        if not profile.contains(shape):
            raise BadInputError(f"input shape {format_shape(shape)} is outside the engine's profile "
                                f"{format_shape(profile.min)} .. {format_shape(profile.max)}")
    return [(tuple(s), np.ascontiguousarray(sample_images(tuple(s), spec, seed=seed + i))) for i, s in enumerate(wanted)]


def verify_engine(engine, onnx=None, images=None, count: int = 4, shapes=None, thresholds=None, seed: int = 0,
                  progress=lambda message: None) -> VerifyReport:
    """Run the engine and the FP32 ONNX (ONNX Runtime, CPU) on the same inputs and compare their prediction output
    (the manifest's ``output.name``, else the first), its labels read as the manifest's head reads them."""
    engine_path, manifest = resolve_engine(engine)
    check_engine(manifest, engine_path, running=None)  # the file first: no TensorRT needed to refuse a changed one
    reference = find_reference(engine_path, manifest, onnx)
    thresholds = thresholds or default_thresholds(manifest.get("precision", "fp32"))
    batches = verification_inputs(manifest, images, count, shapes, seed)
    output_name = (manifest.get("output") or {}).get("name") or "logits"
    head = Head.from_manifest(manifest)
    reference_manifest = resolve_artifact(reference)[1] or {}
    input_name = next(iter(manifest["profiles"][0]))
    results = []
    with TrtRunner.from_engine(engine_path) as engine_runner, OnnxrtRunner(SessionFromOnnx(reference)) as ort_runner:
        for shape, x in batches:
            progress(f"comparing at {format_shape(shape)}")
            feed = {input_name: x}
            actual = engine_runner.infer(feed)
            expected = ort_runner.infer(feed)
            if head.has_scores:
                name = output_name if output_name in actual and output_name in expected else next(iter(expected))
                results.append(compare_outputs(expected[name], actual[name].astype(expected[name].dtype), thresholds,
                                               shape, head, name))
            else:
                name = output_name if output_name in actual else next(iter(actual))
                results.append(LabelsResult.compare(reference_labels(expected, name, reference_manifest), actual[name],
                                                    thresholds.min_agreement, shape, name))
        warnings = list(engine_runner.warnings)
    return VerifyReport(engine_path, reference, manifest.get("precision", "fp32"), thresholds, results, warnings)


def reference_labels(expected: dict[str, np.ndarray], name: str, reference_manifest: dict) -> np.ndarray:
    """The reference's label map for a labels engine's output ``name``: the reference's own output when it ends
    in the labels head too, else its prediction read on the host as its manifest says (the FP32 parent of an
    FP16 or INT8 labels artifact is the scores graph)."""
    if name in expected:
        return expected[name]
    prediction = (reference_manifest.get("output") or {}).get("name")
    scores = expected[prediction] if prediction in expected else next(iter(expected.values()))
    return Head.from_manifest(reference_manifest).labels(scores.astype(np.float32))


def raise_for_verification(report: VerifyReport) -> None:
    """Exit 1 (VerificationError) naming the first shape and figure that missed a threshold."""
    if report.passed:
        return
    failed = next((r for r in report.results if not r.passed), None)
    if failed is None:
        raise VerificationError(f"{report.engine}: no inputs to compare (fewer images than the profile's smallest batch)")
    raise VerificationError(
        f"{report.engine}: differs from {report.reference} at {format_shape(failed.shape)}: {failed.describe()}; "
        f"limits: {report.thresholds.describe()}")
