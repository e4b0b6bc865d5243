"""Evaluate one or several artifacts on a labelled data set, in lockstep.

Each image is loaded once and run through every artifact, each on its own backend: the
prediction is made exactly as ``segdeploy infer`` makes it (resize to the network input,
argmax, nearest-neighbour back to the image's size), so the score is the deployed pipeline's.
With a dense CRF, the network scores are refined before the argmax, either at the image's
resolution (scores resized bilinearly, the usual DeepLab post-processing) or at the network's.

Metrics come from confusion matrices (``metrics``), accumulated over the
whole set: mIoU over the classes present in the truth or the predictions, per-class IoU (NaN
for a class that appears in neither), pixel accuracy; pixels labelled 255 are ignored. Between
artifacts, pixel agreement is the share of all image pixels with the same predicted class.

Every deployment head scores alike: logits and probabilities are read on the host (argmax, or a
threshold), a ``labels`` graph's label map is taken as it is; all three give the same predictions,
so the same mIoU. A dense CRF needs scores: it refuses a ``labels`` artifact.

One-channel (binary) models are read by their manifest's ``outputs.Head`` (thresholded, not
argmax'd); the masks are read as 0/1 foreground by ``datasets.binary_truth`` (0/1 class ids with
255 ignored, else grey >= 128). Besides the two-class mIoU and pixel accuracy they score the
foreground IoU, precision, recall, Fβ with β² = 0.3 (the salient-object convention) and F1, all
from the pixels of the whole set at the model's threshold, and the MAE of the probability map
(resized bilinearly to the image) against the 0/1 truth, averaged over images (none for a ``labels``
head: it outputs no probability).

Artifacts without a manifest (a user's ONNX file) are described from their graph and the
``ModelOptions`` given (``--mean``/``--std``...); where a manifest exists, the options override it
(``adopt.apply_options``). Models with a "tensor" input are scored on folders of .npy samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adopt import ModelOptions, artifact_manifest
from ..backend.base import make_runner
from ..crf import CRFParams, dense_crf
from ..errors import BadInputError
from ..infer import check_channels, labels_at, predict_output, resize_channels
from ..manifest import ONNX_NAME
from ..outputs import Head
from ..preprocess import resize, takes_pictures
from .datasets import IGNORE_INDEX, Dataset, Sample, binary_truth
from .metrics import F_BETA2, binary_scores, confusion_matrix, mean_iou, per_class_iou, pixel_accuracy

SCHEMA = "segdeploy.eval/1"
CRF_AT = ("image", "input")
#: What the report says about the binary scores and masks.
BINARY_NOTE = (f"binary scores on the foreground at the model's threshold over all pixels: IoU, precision, recall, "
               f"F-beta with beta^2 = {F_BETA2} (salient-object convention), F1; MAE of the probability map vs the 0/1 "
               "truth, averaged over images")  # fmt: skip
MASK_RULE = ("masks with values 0/1 (and 255) and a 1: class ids, 1 = foreground, 255 ignored; "
             "any other mask (0/255 saliency style, grey): foreground where >= 128")  # fmt: skip


def scores(confusion: np.ndarray, class_names: list[str]) -> dict:
    """The JSON block of one confusion matrix: mIoU, pixel accuracy, per-class IoU (None = absent)."""
    ious = per_class_iou(confusion)
    return {
        "miou": round(mean_iou(confusion), 4),
        "pixel_accuracy": round(pixel_accuracy(confusion), 4),
        "per_class_iou": {name: (None if np.isnan(v) else round(float(v), 4)) for name, v in zip(class_names, ious)},
        "class_pixels": {name: int(n) for name, n in zip(class_names, np.asarray(confusion).sum(1))},
        "confusion_matrix": np.asarray(confusion).astype(int).tolist(),
    }


@dataclass
class CRFSettings:
    """``params``: a :class:`segdeploy.crf.CRFParams` (None: its defaults); ``at``: "image" or "input"."""

    params: object = None
    at: str = "image"
    threads: int = 0  # CPU threads of the CRF; 0: every core

    def describe(self) -> dict:
        return {"at": self.at, "threads": self.threads, "params": dataclasses.asdict(self.params or CRFParams())}


@dataclass
class Candidate:
    """One artifact under evaluation, with the running totals of its predictions."""

    artifact: Path
    label: str
    backend: str
    onnx_path: Path
    manifest: dict
    head: Head = field(default_factory=Head)
    confusion: np.ndarray | None = None
    mae_sum: float = 0.0  # binary heads: per-image MAE of the probability map, summed
    mae_images: int = 0
    agree: int = 0  # pixels predicted as the first artifact predicts them
    pixels: int = 0
    seconds: float = 0.0  # inference, pre- and post-processing (not the CRF)
    crf_confusion: np.ndarray | None = None
    crf_agree: int = 0
    crf_seconds: float = 0.0
    images: int = 0

    @property
    def precision(self) -> str | None:
        return (self.manifest.get("onnx") or {}).get("precision")

    def result(self, class_names: list[str], reference: Candidate, crf: CRFSettings | None) -> dict:
        block = {"artifact": str(self.artifact), "label": self.label, "backend": self.backend,
                 "precision": self.precision, **scores(self.confusion, class_names)}  # fmt: skip
        block["miou_delta"] = round(mean_iou(self.confusion) - mean_iou(reference.confusion), 4)
        block["agreement"] = round(100.0 * self.agree / max(self.pixels, 1), 4)
        block["seconds_per_image"] = round(self.seconds / max(self.images, 1), 5)
        block["kind"] = self.head.kind
        block["head"] = self.head.name
        if self.head.kind == "binary":
            mae = self.mae_sum / self.mae_images if self.mae_images else None
            block["binary"] = {**binary_scores(self.confusion, mae), "threshold": self.head.threshold}
        if crf is not None:
            crf_block = {**crf.describe(), **scores(self.crf_confusion, class_names)}
            crf_miou = mean_iou(self.crf_confusion)
            crf_block["miou_gain"] = round(crf_miou - mean_iou(self.confusion), 4)
            crf_block["miou_delta"] = round(crf_miou - mean_iou(reference.crf_confusion), 4)
            crf_block["agreement"] = round(100.0 * self.crf_agree / max(self.pixels, 1), 4)
            crf_block["seconds_per_image"] = round(self.crf_seconds / max(self.images, 1), 5)
            block["crf"] = crf_block
        return block


@dataclass
class SampleOutcome:
    """What one sample gave, for writers of overlays and prediction files."""

    index: int
    sample: Sample
    image: np.ndarray | None  # uint8 RGB; None for a .npy tensor sample
    mask: np.ndarray
    predictions: list[np.ndarray]  # per candidate, uint8 at the image's size
    crf_predictions: list[np.ndarray] | None = None
    #: The models are binary: ``mask`` and ``predictions`` are 0/1 foreground (mask 255 = ignore).
    binary: bool = False


@dataclass
class Evaluation:
    dataset: Dataset
    candidates: list[Candidate]
    class_names: list[str]
    crf: CRFSettings | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def report(self, limit: int | None = None) -> dict:
        """The ``segdeploy.eval/1`` JSON: the first artifact's results at the top level, every
        artifact under ``compare`` when there are several."""
        reference = self.candidates[0]
        results = [c.result(self.class_names, reference, self.crf) for c in self.candidates]
        first = {k: v for k, v in results[0].items() if k not in ("miou_delta", "agreement")}
        if "crf" in first:
            first["crf"] = {k: v for k, v in first["crf"].items() if k not in ("miou_delta", "agreement")}
        report = {
            "schema": SCHEMA,
            "model": (reference.manifest.get("model") or {}).get("name"),
            **first,
            "dataset": {**self.dataset.describe(), "limit": limit},
            "classes": list(self.class_names),
            "ignore_index": IGNORE_INDEX,
            "seconds": round(self.seconds, 3),
            "notes": list(self.dataset.notes) + self.notes,
        }
        if reference.head.kind == "binary":
            report["binary_scores"] = BINARY_NOTE
            report["mask_rule"] = MASK_RULE
        if len(results) > 1:
            report["compare"] = results
        return report


def artifact_labels(artifacts) -> list[str]:
    """Short unique names for tables and file names: the artifact folder's name (or the file's stem)."""
    labels = []
    for artifact in map(Path, artifacts):
        name = artifact.parent.name if artifact.is_file() and artifact.name == ONNX_NAME else (
            artifact.name if artifact.is_dir() else artifact.stem)
        name = name or "artifact"
        label, n = name, 2
        while label in labels:
            label, n = f"{name}-{n}", n + 1
        labels.append(label)
    return labels


def open_candidates(artifacts, backends: list[str], options: ModelOptions = ModelOptions()) -> list[Candidate]:
    if len(backends) == 1:
        backends = backends * len(artifacts)
    if len(backends) != len(artifacts):
        raise BadInputError(f"{len(backends)} backends for {len(artifacts)} artifacts: give one, or one per artifact")
    candidates = []
    for artifact, label, backend in zip(artifacts, artifact_labels(artifacts), backends):
        onnx_path, manifest, _ = artifact_manifest(artifact, options)
        candidates.append(Candidate(Path(artifact), label, backend, onnx_path, manifest, Head.from_manifest(manifest)))
    for candidate in candidates:
        if not candidate.head.has_scores and not candidate.manifest.get("classes") and candidate.head.kind != "binary":
            raise BadInputError(f"{candidate.artifact}: its output is the label map (head 'labels') and the manifest "
                                "names no classes, so their number is unknown; name them with --classes FILE")
    kinds = {c.head.kind for c in candidates}
    if len(kinds) > 1:
        described = ", ".join(f"{c.artifact} is {c.head.kind}" for c in candidates)
        raise BadInputError(f"the artifacts read their outputs differently ({described}): they cannot be compared")
    return candidates


def _class_names(candidates: list[Candidate], dataset: Dataset, num_classes: int) -> list[str]:
    counts = {c.label: len(c.manifest["classes"]) for c in candidates if c.manifest.get("classes")}
    if len(set(counts.values())) > 1:
        raise BadInputError(f"the artifacts have different numbers of classes ({counts}): they cannot be compared")
    names = candidates[0].manifest.get("classes")
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    if dataset.classes and len(dataset.classes) == num_classes:
        return list(dataset.classes)
    return [f"class_{i}" for i in range(num_classes)]


def resize_scores(scores_chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) float32 scores resized bilinearly to (C, height, width)."""
    # PIL's bilinear upsampling is torch's interpolate(mode="bilinear", align_corners=False).
    return resize_channels(scores_chw, height, width)


def _check_sample(sample: Sample, image: np.ndarray, candidate: Candidate) -> None:
    """The sample is what the candidate's input takes: a picture, or a .npy tensor of its channel count."""
    spec = candidate.manifest["input"]
    if takes_pictures(spec) and sample.is_tensor:
        raise BadInputError(f"{sample.image}: a .npy tensor, but {candidate.artifact} takes {spec.get('color', 'RGB')} "
                            "pictures (image files)")  # fmt: skip
    if not takes_pictures(spec):
        if not sample.is_tensor:
            raise BadInputError(f"{sample.image}: a picture, but {candidate.artifact} takes tensors: give a folder of "
                                ".npy files holding (C, H, W) arrays, already normalised")  # fmt: skip
        check_channels(sample.image, image, spec)


def crf_labels(logits: np.ndarray, rgb: np.ndarray, settings: CRFSettings, unary_kind: str = "logits") -> np.ndarray:
    """uint8 labels at the image's size from the network's (C, h, w) scores (``unary_kind``: "logits" or
    "probabilities") refined by the dense CRF."""
    height, width = rgb.shape[:2]
    if settings.at == "image":
        unary, image = resize_scores(logits, height, width), rgb
    else:
        h, w = logits.shape[1:]
        unary, image = np.ascontiguousarray(logits, dtype=np.float32), resize(rgb, h, w)
    labels = dense_crf(unary, np.ascontiguousarray(image), settings.params, unary_kind=unary_kind, output="labels",
                       num_threads=settings.threads)
    return labels_at(labels, (height, width))


def evaluate(
    artifacts,
    dataset: Dataset,
    backends: list[str] = ("ort",),
    *,
    size: tuple[int, int] | None = None,
    crf: CRFSettings | None = None,
    runner_options: dict | None = None,
    on_sample: Callable[[SampleOutcome], None] | None = None,
    options: ModelOptions = ModelOptions(),
) -> Evaluation:
    """Run every artifact over ``dataset``; ``on_sample`` sees each sample's predictions as they come."""
    if crf is not None and crf.at not in CRF_AT:
        raise BadInputError(f"CRF resolution must be one of {', '.join(CRF_AT)}, got {crf.at!r}")
    if len(dataset) == 0:
        raise BadInputError(f"{dataset.root}: no samples to evaluate")
    candidates = open_candidates(list(artifacts), list(backends), options)
    binary = candidates[0].head.kind == "binary"
    if crf is not None and binary:
        raise BadInputError("--crf: the dense CRF refines multi-class scores; these models have one-channel (binary) outputs")
    scoreless = [str(c.artifact) for c in candidates if not c.head.has_scores]
    if crf is not None and scoreless:
        raise BadInputError(f"--crf: the dense CRF refines scores, and {', '.join(scoreless)} outputs labels only "
                            "(deployment head 'labels'); evaluate an artifact with --head logits or probabilities")
    if crf is not None and dataset.samples[0].is_tensor:
        raise BadInputError(f"--crf: the dense CRF needs pictures; {dataset.samples[0].image} is a .npy tensor")
    evaluation = Evaluation(dataset, candidates, [], crf)
    if binary:
        evaluation.notes += [f"{c.label}: no MAE: the model outputs labels only (deployment head 'labels'), "
                             "no probability map" for c in candidates if not c.head.has_scores]
    started = time.perf_counter()
    num_classes = None
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(make_runner(c.backend, c.onnx_path, c.manifest, **(runner_options or {})))
                   for c in candidates]  # fmt: skip
        for index, sample in enumerate(dataset.samples):
            rgb, mask = dataset.load(sample)
            shape = mask.shape
            if binary:
                mask = binary_truth(mask)
            valid = mask != IGNORE_INDEX
            predictions, refined = [], [] if crf is not None else None
            for candidate, runner in zip(candidates, runners):
                _check_sample(sample, rgb, candidate)
                t0 = time.perf_counter()
                output = predict_output(runner, candidate.manifest, rgb, size)
                if candidate.head.has_scores:  # float16 scores of an FP16 graph: read in float32
                    output = np.asarray(output, dtype=np.float32)
                labels = labels_at(candidate.head.labels(output[None])[0], shape)
                candidate.seconds += time.perf_counter() - t0
                if binary and candidate.head.has_scores:
                    probability = resize_channels(candidate.head.probabilities(output[None])[0], *shape)[0]
                    if valid.any():
                        candidate.mae_sum += float(np.abs(probability[valid] - mask[valid]).mean())
                        candidate.mae_images += 1
                classes_here = candidate.head.num_classes or (
                    output.shape[0] if candidate.head.has_scores else len(candidate.manifest["classes"]))
                if num_classes is None:
                    num_classes = classes_here
                    evaluation.class_names = _class_names(candidates, dataset, num_classes)
                    for c in candidates:
                        c.confusion = np.zeros((num_classes, num_classes), np.int64)
                        c.crf_confusion = np.zeros((num_classes, num_classes), np.int64) if crf is not None else None
                elif classes_here != num_classes:
                    raise BadInputError(f"{candidate.artifact}: {classes_here} classes, but "
                                        f"{candidates[0].artifact} has {num_classes}: they cannot be compared")
                if not predictions and not binary:
                    _check_mask(mask, sample, num_classes, candidate)
                candidate.confusion += confusion_matrix(mask, labels, num_classes)
                candidate.pixels += labels.size
                candidate.images += 1
                candidate.agree += int(np.count_nonzero(labels == predictions[0])) if predictions else labels.size
                predictions.append(labels)
                if crf is not None:
                    t0 = time.perf_counter()
                    kind = "probabilities" if candidate.head.activation == "softmax" else "logits"
                    crf_pred = crf_labels(output, rgb, crf, kind)
                    candidate.crf_seconds += time.perf_counter() - t0
                    candidate.crf_confusion += confusion_matrix(mask, crf_pred, num_classes)
                    candidate.crf_agree += int(np.count_nonzero(crf_pred == refined[0])) if refined else crf_pred.size
                    refined.append(crf_pred)
            if on_sample is not None:
                picture = rgb if rgb.dtype == np.uint8 else None
                on_sample(SampleOutcome(index, sample, picture, mask, predictions, refined, binary))
    evaluation.seconds = time.perf_counter() - started
    return evaluation


def _check_mask(mask: np.ndarray, sample: Sample, num_classes: int, candidate: Candidate) -> None:
    """Every mask value is a class of the model or 255 (ignore); anything else means the wrong data set."""
    values = np.unique(mask)
    bad = values[(values != IGNORE_INDEX) & ((values < 0) | (values >= num_classes))]
    if bad.size:
        raise BadInputError(
            f"{sample.mask}: class id {int(bad[0])} in the mask, but {candidate.artifact} predicts {num_classes} "
            f"classes (0..{num_classes - 1}; {IGNORE_INDEX} = ignore): is this the model's data set?"
        )
