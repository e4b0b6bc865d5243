"""Segmentation metrics on class-id maps (numpy only): confusion matrix, mIoU, per-class IoU,
pixel accuracy. ``segdeploy eval`` scores data sets with them, ``segdeploy fp16``/``quantize``
compare a precision with FP32, the training fixture scores itself."""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = truth; truth ids outside [0, num_classes) are ignored (e.g. 255)."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    predicted = np.asarray(predicted).ravel().astype(np.int64)
    valid = (truth >= 0) & (truth < num_classes)
    flat = truth[valid] * num_classes + np.clip(predicted[valid], 0, num_classes - 1)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction, in percent."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float(100.0 * np.mean(intersection[present] / union[present])) if present.any() else 100.0


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class in percent (rows of ``confusion`` = truth); NaN where the class is in neither."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100.0 * intersection / np.maximum(union, 1), np.nan)


def pixel_accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(100.0 * np.trace(confusion) / total) if total else 100.0



#: β² of the F-measure reported for binary (foreground) models: 0.3, the salient-object convention
#: (precision weighted above recall).
F_BETA2 = 0.3


def binary_scores(confusion: np.ndarray, mae: float | None = None) -> dict:
    """Foreground scores (percent) of a 2x2 confusion matrix (rows truth, 1 = foreground): IoU,
    precision, recall, Fβ (β² = F_BETA2) and F1; ``mae`` (0..1) passed through."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp, fp, fn = confusion[1, 1], confusion[0, 1], confusion[1, 0]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0

    def f(beta2: float) -> float:
        denominator = beta2 * precision + recall
        return (1 + beta2) * precision * recall / denominator if denominator else 0.0

    if tp + fp + fn == 0:  # no foreground in the truth or the predictions: perfect, as mean_iou has it
        iou, precision, recall, f_beta, f1 = 1.0, 1.0, 1.0, 1.0, 1.0
    else:
        iou, f_beta, f1 = tp / (tp + fp + fn), f(F_BETA2), f(1.0)
    return {
        "iou": round(100.0 * iou, 4),
        "precision": round(100.0 * precision, 4),
        "recall": round(100.0 * recall, 4),
        "f_beta": round(100.0 * f_beta, 4),
        "beta2": F_BETA2,
        "f1": round(100.0 * f1, 4),
        "mae": None if mae is None else round(float(mae), 6),
    }
