"""Classification metrics on plain arrays (no torch, no sklearn): used by train, ensemble, report.

labels, predictions: (N,) int in 0..K-1. Confusion matrix rows are true classes, columns
predictions.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int = 7) -> np.ndarray:
    """(K, K) int64 counts; entry [i, j] = samples of class i predicted as j. K defaults to
    FER2013's 7 classes: give the task's (FER+: 8)."""
    idx = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per class, (K,) float64; 0 where undefined (no support)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(preds))) if len(labels) else 0.0


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions
    (so any num_classes above the largest id gives the same; None: that largest id + 1)."""
    if num_classes is None:
        num_classes = int(max(np.max(labels, initial=0), np.max(preds, initial=0))) + 1
    cm = confusion_matrix(labels, preds, num_classes)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(per_class_scores(cm)["f1"][present].mean()) if present.any() else 0.0


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the true class; probs (N, K)."""
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    return float(-np.log(p).mean())
