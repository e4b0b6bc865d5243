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

