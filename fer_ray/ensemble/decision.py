"""Decision rules on ensemble probabilities: class biases for imbalance, and deferral.

probs (n_samples, n_classes) rows summing to 1; labels (n_samples,) int.

Class biases: argmax(log p + b) with b (K,) fitted on validation data to raise macro-F1 or
balanced accuracy, so a rare class (FER2013 "disgust") that the members under-predict is
predicted at all. Deferral: abstain when confidence is below a threshold, chosen on validation
for a target coverage and then applied to test.
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np

from fer_ray.errors import ConfigError
from fer_ray.metrics import confusion_matrix, macro_f1, per_class_scores

Objective = Literal["macro_f1", "balanced_accuracy"]
ConfidenceKind = Literal["max_prob", "margin"]

LOG_EPS = 1e-12  # probabilities are clipped here before log: log(0) would be -inf


def _check(probs: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be (n_samples, n_classes) with n > 0, got {p.shape}")
    if labels is not None and np.shape(labels) != (p.shape[0],):
        raise ValueError(f"labels shape {np.shape(labels)} does not match probs {p.shape}")
    return p


def _score(labels: np.ndarray, preds: np.ndarray, k: int, objective: Objective) -> float:
    if objective == "macro_f1":
        return macro_f1(labels, preds, num_classes=k)
    # Balanced accuracy: mean recall over the classes that occur in labels.
    scores = per_class_scores(confusion_matrix(labels, preds, k))
    present = scores["support"] > 0
    return float(scores["recall"][present].mean())


def predict_with_biases(probs: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """(n,) int64 argmax(log p + biases); biases (K,)."""
    p = _check(probs)
    logp = np.log(np.clip(p, LOG_EPS, 1.0))
    return np.argmax(logp + np.asarray(biases, dtype=np.float64)[None, :], axis=1).astype(np.int64)


def fit_class_biases(
    probs: np.ndarray,
    labels: np.ndarray,
    objective: Objective = "macro_f1",
    n_rounds: int = 3,
    grid: np.ndarray | None = None,
) -> np.ndarray:
    """(K,) additive biases on log-probabilities, by coordinate ascent over a grid.

    Starting from zeros, each round tries every grid value (default np.linspace(-2, 2, 41)) for
    each class in turn with the other biases held, and keeps a value only if it strictly
    improves the objective on (probs, labels). So the result is never worse than zero biases on
    the fitting data; rounds stop early once a full pass changes nothing. Ties keep the current
    value, so a flat objective leaves biases at 0.
    """
    p = _check(probs, labels)
    y = np.asarray(labels, dtype=np.int64)
    if objective not in ("macro_f1", "balanced_accuracy"):
        raise ConfigError(
            f"objective: must be 'macro_f1' or 'balanced_accuracy', got {objective!r}"
        )
    if n_rounds < 1:
        raise ConfigError(f"n_rounds: must be >= 1, got {n_rounds}")
    values = np.linspace(-2.0, 2.0, 41) if grid is None else np.asarray(grid, dtype=np.float64)
    k = p.shape[1]
    logp = np.log(np.clip(p, LOG_EPS, 1.0))
    biases = np.zeros(k)
    best = _score(y, np.argmax(logp, axis=1), k, objective)
    for _ in range(n_rounds):
        changed = False
        for c in range(k):
            for v in values:
                trial = biases.copy()
                trial[c] = v
                score = _score(y, np.argmax(logp + trial, axis=1), k, objective)
                if score > best:
                    best, biases, changed = score, trial, True
        if not changed:
            break
    return biases


def confidence(probs: np.ndarray, kind: ConfidenceKind = "max_prob") -> np.ndarray:
    """(n,) top-1 probability ("max_prob") or top-1 minus top-2 probability ("margin")."""
    p = _check(probs)
    if kind == "max_prob":
        return p.max(axis=1)
    if kind == "margin":
        if p.shape[1] < 2:
            return p[:, 0].copy()
        top2 = np.partition(p, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    raise ConfigError(f"kind: must be 'max_prob' or 'margin', got {kind!r}")


def accuracy_coverage_curve(
    probs: np.ndarray, labels: np.ndarray, kind: ConfidenceKind = "max_prob"
) -> dict[str, np.ndarray]:
    """Accuracy on the kept samples as the confidence threshold rises.

    Returns arrays of equal length, one point per distinct confidence value: "coverage"
    (fraction kept, from 1.0 down), "accuracy" (on the kept samples) and "threshold" (keep
    samples with confidence >= threshold). Equal confidences are kept or dropped together,
    since no threshold separates them.
    """
    p = _check(probs, labels)
    conf = confidence(p, kind)
    correct = (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    n_kept = np.arange(1, len(conf) + 1)
    acc = np.cumsum(correct[order]) / n_kept
    # The last position of each run of equal confidences is where a threshold can stop.
    ends = np.flatnonzero(np.append(conf_sorted[1:] != conf_sorted[:-1], True))[::-1]
    return {
        "coverage": n_kept[ends] / len(conf),
        "accuracy": acc[ends],
        "threshold": conf_sorted[ends],
    }


def threshold_for_coverage(
    probs: np.ndarray, kind: ConfidenceKind, target_coverage: float
) -> float:
    """Confidence threshold keeping about target_coverage of probs (confidence >= threshold).

    Meant to be chosen on validation and applied to test. The ceil(target * n)-th highest
    confidence: at least the target is kept, more only when confidences tie at the threshold.
    """
    if not 0 < target_coverage <= 1:
        raise ConfigError(f"target_coverage: must be in (0, 1], got {target_coverage}")
    conf = np.sort(confidence(probs, kind))[::-1]
    m = min(len(conf), max(1, int(np.ceil(target_coverage * len(conf) - 1e-9))))
    return float(conf[m - 1])


def defer_mask(
    probs: np.ndarray, threshold: float, kind: ConfidenceKind = "max_prob"
) -> np.ndarray:
    """(n,) bool, True where the ensemble abstains (confidence < threshold)."""
    return np.asarray(confidence(probs, kind) < threshold)


def decide_labels(probs: np.ndarray, rule: str, class_biases: np.ndarray,
                  defer_threshold: float | None, defer_kind: str = "max_prob"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,) int64, deferred (n,) bool) from ensemble probabilities (n, K).

    The one decision of every engine (``Ensemble``, ``OnnxEnsemble``). rule: "argmax" (most
    accurate) or "adjusted" (argmax of log p + class_biases (K,), fitted on validation for
    macro-F1: rare classes such as disgust get predicted more often). deferred: confidence
    (``defer_kind``) below ``defer_threshold``; all False when the threshold is None.
    """
    if rule not in ("argmax", "adjusted"):
        raise ConfigError(f"decision rule {rule!r} is not 'argmax' or 'adjusted'")
    p = np.asarray(probs)
    if p.ndim == 2 and p.shape[0] == 0:  # nothing to decide: an empty batch stays empty
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    labels = p.argmax(1) if rule == "argmax" else predict_with_biases(p, class_biases)
    if defer_threshold is None:
        return labels, np.zeros(len(labels), dtype=bool)
    return labels, defer_mask(p, defer_threshold, cast(ConfidenceKind, defer_kind))
