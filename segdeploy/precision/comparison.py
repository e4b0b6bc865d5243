"""Comparing a reduced-precision ONNX model with its FP32 parent in ONNX Runtime on the CPU.

The FP32 predictions on a validation set are computed once (``Reference``); every candidate is
then compared with them on the prediction output (the manifest's ``output.name``), read with the
manifest's head (``outputs.Head``: argmax over channels, or a one-channel binary output
thresholded): mask agreement, mIoU and its drop when masks are given, the max probability error
(|Δp| over pixels: softmax probabilities of a multi-class output, the sigmoid of a binary one)
and the raw error (max/mean |Δ| and the noise-to-signal ratio used to rank layer sensitivity).
Side outputs are reported (max |Δ|, max |Δp|) but not gated.

A ``labels`` head hands back the label maps themselves: they are compared directly (agreement,
mIoU), and the errors of values (|Δ|, |Δp|, noise) do not apply to class ids: None ("n/a"). A
``probabilities`` head's |Δp| is taken on its output as it is.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backend.onnxrt.runner import SessionFromOnnx
from ..evaluation.metrics import confusion_matrix, mean_iou
from ..outputs import Head
from ..preprocess import input_channels
from .data import ImageSet

#: Images per inference call when the graph's batch dimension is dynamic.
DEFAULT_BATCH = 8


def open_session(path: str | Path, threads: int | None = None):
    return SessionFromOnnx(path, threads=threads)()


@dataclass(frozen=True)
class Outputs:
    """Which outputs to read: the prediction (gated) and the side outputs (reported), with their heads."""

    prediction: str
    head: Head = Head()
    side: dict = field(default_factory=dict)  # name -> Head

    @classmethod
    def of(cls, heads: dict, prediction: str) -> Outputs:
        return cls(prediction, heads.get(prediction, Head()), {n: h for n, h in heads.items() if n != prediction})


def predict(session, images: ImageSet, spec: dict, batch: int, fixed_batch: bool = False, outputs: Outputs | None = None):
    """Yield (start index, {output name: float32 values}) per batch, the prediction output first
    (the session's first output when ``outputs`` is None), then the side outputs the session has;
    a fixed-batch graph gets its last batch padded."""
    input_name = session.get_inputs()[0].name
    available = [o.name for o in session.get_outputs()]
    names = [outputs.prediction, *[n for n in outputs.side if n in available]] if outputs else available[:1]
    for index, x in enumerate(images.batches(spec, batch)):
        count = len(x)
        if fixed_batch and count < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - count, axis=0)])
        values = session.run(names, {input_name: x})
        yield index * batch, {n: v[:count].astype(np.float32, copy=False) for n, v in zip(names, values)}


@dataclass
class Reference:
    """FP32 results on an image set: label maps, and the prediction values when asked to keep them."""

    images: ImageSet
    spec: dict
    batch: int
    fixed_batch: bool
    labels: np.ndarray
    num_classes: int
    outputs: Outputs
    logits: np.ndarray | None = None
    miou: float | None = None

    @classmethod
    def compute(cls, session, images: ImageSet, spec: dict, batch: int, fixed_batch: bool, keep_logits: bool = False,
                outputs: Outputs | None = None, classes: int | None = None):  # fmt: skip
        """``classes``: how many a labels head's maps hold (the manifest's class names); scores tell it themselves."""
        outputs = outputs or Outputs(session.get_outputs()[0].name)
        if classes is None and not outputs.head.has_scores:
            raise ValueError("a labels head's reference needs the number of classes")
        keep_logits = keep_logits and outputs.head.has_scores  # class ids have no error of values to measure
        labels, kept = [], []
        num_classes = 0
        for _, values in predict(session, images, spec, batch, fixed_batch, Outputs(outputs.prediction, outputs.head)):
            scores = values[outputs.prediction]
            num_classes = outputs.head.num_classes or (scores.shape[1] if outputs.head.has_scores else classes)
            labels.append(outputs.head.labels(scores).astype(np.int16))
            if keep_logits:
                kept.append(scores)
        reference = cls(images, spec, batch, fixed_batch, np.concatenate(labels), num_classes, outputs,
                        np.concatenate(kept) if keep_logits else None)  # fmt: skip
        reference.miou = reference.miou_of(reference.labels)
        return reference

    @property
    def argmax(self) -> np.ndarray:  # the name before binary heads
        return self.labels

    def miou_of(self, labels: np.ndarray) -> float | None:
        if self.images.masks is None:
            return None
        masks = _masks_at(self.images.masks, labels.shape[1:])
        return mean_iou(confusion_matrix(masks, labels, self.num_classes))

    def subset(self, count: int, session, keep_logits: bool = True) -> Reference:
        return Reference.compute(session, self.images.subset(count), self.spec, self.batch, self.fixed_batch,
                                 keep_logits, self.outputs, self.num_classes)  # fmt: skip


@dataclass
class Comparison:
    """A candidate against the FP32 reference: agreement as a fraction (0..1), mIoU in percent points.

    ``agreement`` is mask agreement: the labels the manifest's head reads (argmax, or a binary
    threshold) are the same. ``max_prob_error`` is max |Δp| over pixels and classes.
    """

    agreement: float
    miou: float | None = None
    miou_drop: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    #: Squared logit error over squared FP32 logits (1 / SQNR); ranks layers by damage.
    noise_ratio: float | None = None
    max_prob_error: float | None = None
    #: Side outputs (not gated): name -> {"max_abs_diff", "max_prob_error"}.
    side_outputs: dict | None = None

    def to_json(self) -> dict:
        def number(v):
            return float(f"{v:.7g}") if isinstance(v, float) else v

        data = {k: number(v) for k, v in asdict(self).items() if k != "side_outputs"}
        if self.side_outputs:
            data["side_outputs"] = {n: {k: number(v) for k, v in figures.items()} for n, figures in self.side_outputs.items()}
        return data


class _Errors:
    """Running max/mean |Δ|, noise ratio and max |Δp| of one output."""

    def __init__(self, head: Head):
        self.head = head
        self.max_abs = self.abs_sum = self.noise = self.signal = self.max_prob = 0.0
        self.count = 0

    def add(self, values: np.ndarray, expected: np.ndarray) -> None:
        if values.shape != expected.shape:
            raise ValueError(f"output shape {list(values.shape)} differs from FP32's {list(expected.shape)}")
        delta = values - expected
        self.max_abs = max(self.max_abs, float(np.abs(delta).max()) if delta.size else 0.0)
        self.abs_sum += float(np.abs(delta).sum(dtype=np.float64))
        self.noise += float(np.square(delta, dtype=np.float64).sum())
        self.signal += float(np.square(expected, dtype=np.float64).sum())
        self.count += delta.size
        if delta.size:
            error = np.abs(self.head.probabilities(values) - self.head.probabilities(expected))
            self.max_prob = max(self.max_prob, float(error.max()))


def compare(session, reference: Reference, reference_session=None) -> Comparison:
    """Run ``session`` on the reference's images; errors need kept values or ``reference_session``
    (which also gives the side outputs' errors)."""
    outputs = reference.outputs
    labels = []
    with_values = outputs.head.has_scores and (reference.logits is not None or reference_session is not None)
    available = {o.name for o in session.get_outputs()}
    side = {n: h for n, h in outputs.side.items() if n in available} if reference_session is not None else {}
    wanted = Outputs(outputs.prediction, outputs.head, side)
    references = (
        predict(reference_session, reference.images, reference.spec, reference.batch, reference.fixed_batch, wanted)
        if reference_session is not None
        else None
    )
    errors = {name: _Errors(head) for name, head in [(outputs.prediction, outputs.head), *side.items()]}
    for start, values in predict(session, reference.images, reference.spec, reference.batch, reference.fixed_batch, wanted):
        scores = values[outputs.prediction]
        labels.append(outputs.head.labels(scores).astype(np.int16))
        if not with_values:
            continue
        expected = next(references)[1] if references is not None else {outputs.prediction: reference.logits[start : start + len(scores)]}
        for name, value in values.items():
            errors[name].add(value, expected[name])
    labels = np.concatenate(labels)
    result = Comparison(agreement=float(np.mean(labels == reference.labels)))
    if reference.miou is not None:
        result.miou = reference.miou_of(labels)
        result.miou_drop = reference.miou - result.miou
    if with_values:
        main = errors[outputs.prediction]
        result.max_abs_diff = main.max_abs
        result.mean_abs_diff = main.abs_sum / max(main.count, 1)
        result.noise_ratio = main.noise / max(main.signal, 1e-30)
        result.max_prob_error = main.max_prob
        if side:
            result.side_outputs = {n: {"max_abs_diff": errors[n].max_abs, "max_prob_error": errors[n].max_prob} for n in side}
    return result


def measure_latency(session, spec: dict, batch: int = 1, runs: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of one inference on a batch of ``batch`` inputs of the manifest's size."""
    height, width = spec["size"]
    channels = input_channels(spec) or session.get_inputs()[0].shape[1]
    x = np.random.default_rng(0).standard_normal((batch, channels, height, width), dtype=np.float32)
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
