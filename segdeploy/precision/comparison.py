"""Comparing a reduced-precision ONNX model with its FP32 parent in ONNX Runtime on the CPU.

The FP32 predictions on a validation set are computed once (``Reference``); every candidate is
then compared with them: argmax agreement, mIoU and its drop when masks are given, and the
logit error (max/mean |Δ| and the noise-to-signal ratio used to rank layer sensitivity).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..backend.onnxrt.runner import SessionFromOnnx
from ..evaluation.metrics import confusion_matrix, mean_iou
from .data import ImageSet

#: Images per inference call when the graph's batch dimension is dynamic.
DEFAULT_BATCH = 8


def open_session(path: str | Path, threads: int | None = None):
    return SessionFromOnnx(path, threads=threads)()


def predict(session, images: ImageSet, spec: dict, batch: int, fixed_batch: bool = False):
    """Yield (start index, float32 logits) per batch; a fixed-batch graph gets its last batch padded."""
    input_name = session.get_inputs()[0].name
    for index, x in enumerate(images.batches(spec, batch)):
        count = len(x)
        if fixed_batch and count < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - count, axis=0)])
        (logits,) = session.run(None, {input_name: x})[:1]
        yield index * batch, logits[:count].astype(np.float32, copy=False)


@dataclass
class Reference:
    """FP32 results on an image set: argmax maps, and the logits themselves when asked to keep them."""

    images: ImageSet
    spec: dict
    batch: int
    fixed_batch: bool
    argmax: np.ndarray
    num_classes: int
    logits: np.ndarray | None = None
    miou: float | None = None

    @classmethod
    def compute(cls, session, images: ImageSet, spec: dict, batch: int, fixed_batch: bool, keep_logits: bool = False):
        argmax, kept = [], []
        num_classes = 0
        for _, logits in predict(session, images, spec, batch, fixed_batch):
            num_classes = logits.shape[1]
            argmax.append(logits.argmax(1).astype(np.int16))
            if keep_logits:
                kept.append(logits)
        reference = cls(images, spec, batch, fixed_batch, np.concatenate(argmax), num_classes,
                        np.concatenate(kept) if keep_logits else None)  # fmt: skip
        reference.miou = reference.miou_of(reference.argmax)
        return reference

    def miou_of(self, argmax: np.ndarray) -> float | None:
        if self.images.masks is None:
            return None
        masks = _masks_at(self.images.masks, argmax.shape[1:])
        return mean_iou(confusion_matrix(masks, argmax, self.num_classes))


@dataclass
class Comparison:
    """A candidate against the FP32 reference: agreement as a fraction (0..1), mIoU in percent points."""

    agreement: float
    miou: float | None = None
    miou_drop: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    #: Squared logit error over squared FP32 logits (1 / SQNR); ranks layers by damage.
    noise_ratio: float | None = None

    def to_json(self) -> dict:
        return {k: (float(f"{v:.7g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(session, reference: Reference, reference_session=None) -> Comparison:
    """Run ``session`` on the reference's images; logit errors need kept logits or ``reference_session``."""
    argmax = []
    max_abs, abs_sum, noise, signal, count = 0.0, 0.0, 0.0, 0.0, 0
    with_logits = reference.logits is not None or reference_session is not None
    references = (
        predict(reference_session, reference.images, reference.spec, reference.batch, reference.fixed_batch)
        if reference.logits is None and reference_session is not None
        else None
    )
    for start, logits in predict(session, reference.images, reference.spec, reference.batch, reference.fixed_batch):
        argmax.append(logits.argmax(1).astype(np.int16))
        if with_logits:
            expected = reference.logits[start : start + len(logits)] if references is None else next(references)[1]
            delta = logits - expected
            max_abs = max(max_abs, float(np.abs(delta).max()))
            abs_sum += float(np.abs(delta).sum(dtype=np.float64))
            noise += float(np.square(delta, dtype=np.float64).sum())
            signal += float(np.square(expected, dtype=np.float64).sum())
            count += delta.size
    argmax = np.concatenate(argmax)
    result = Comparison(agreement=float(np.mean(argmax == reference.argmax)))
    if reference.miou is not None:
        result.miou = reference.miou_of(argmax)
        result.miou_drop = reference.miou - result.miou
    if with_logits:
        result.max_abs_diff = max_abs
        result.mean_abs_diff = abs_sum / count
        result.noise_ratio = noise / max(signal, 1e-30)
    return result


def measure_latency(session, spec: dict, batch: int = 1, runs: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of one inference on a batch of ``batch`` images of the manifest's size."""
    height, width = spec["size"]
    x = np.random.default_rng(0).standard_normal((batch, 3, height, width), dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def _masks_at(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Masks at the logits' resolution (nearest), for models whose output is not at input size."""
    if masks.shape[1:] == tuple(shape):
        return masks
    rows = (np.arange(shape[0]) * masks.shape[1] // shape[0])[:, None]
    cols = (np.arange(shape[1]) * masks.shape[2] // shape[1])[None, :]
    return masks[:, rows, cols]
