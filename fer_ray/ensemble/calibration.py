"""Temperature scaling (Guo et al. 2017) and calibration measures: ECE, reliability curve, NLL.

logits (n_samples, n_classes) float; probs (n_samples, n_classes) rows summing to 1; labels
(n_samples,) int. Ensemble members hand over probabilities, so their logits are taken as
log-probabilities (probs_to_logits): softmax(log p) == p, and softmax(log p / T) is the
temperature-scaled distribution, because log-softmax only shifts each row by a constant.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from fer_ray.ensemble.decision import LOG_EPS
from fer_ray.errors import ConfigError
from fer_ray.metrics import log_loss


def probs_to_logits(probs: np.ndarray) -> np.ndarray:
    """(n, K) log(clip(probs, 1e-12, 1)): logits whose softmax gives back probs."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_EPS, 1.0))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) softmax(logits / temperature)."""
    if not temperature > 0:
        raise ConfigError(f"temperature: must be > 0, got {temperature}")
    return np.asarray(softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1))


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) softmax(log(probs) / temperature): T > 1 softens, T < 1 sharpens."""
    return apply_temperature(probs_to_logits(probs), temperature)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """T > 0 minimising the mean NLL of softmax(logits / T) on (logits (n, K), labels (n,)).

    One-dimensional and smooth, so a bounded scalar search is enough. It searches log T: the
    loss is far better scaled in log T, and any value in the bounds is a valid T > 0. For
    probabilities, pass probs_to_logits(probs).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or len(y) == 0:
        raise ValueError(f"logits {z.shape} and labels {y.shape} must be (n, K) and (n,), n > 0")
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ConfigError(f"bounds: need 0 < low < high, got {bounds}")
    rows = np.arange(len(y))

    def nll_of(log_t: float) -> float:
        # log_softmax is exact for large |z| / T, where softmax-then-log would hit log(0).
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(
        nll_of, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(res.x))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (metrics.log_loss, argument order swapped
    to match the other functions here)."""
    return log_loss(np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64))


def _bin_stats(
    probs: np.ndarray, labels: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, sum of correct, sum of confidence) over n_bins equal-width bins of the
    top-1 confidence; bin b holds confidences in (b/n_bins, (b+1)/n_bins], bin 0 also 0."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs {p.shape} and labels {y.shape} must be (n, K) and (n,)")
    if n_bins < 1:
        raise ConfigError(f"n_bins: must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    hits = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return counts, hits, conf_sum


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of (bin count / n) * |accuracy - confidence|."""
    counts, hits, conf_sum = _bin_stats(probs, labels, n_bins)
    n = counts.sum()
    if n == 0:
        return 0.0
    # |hits - conf_sum| / n == (count / n) * |acc - conf|, and is 0 for empty bins.
    return float(np.abs(hits - conf_sum).sum() / n)


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Per-bin arrays (n_bins,) for a reliability diagram: "bin_centers", "accuracy",
    "confidence" (mean top-1 probability), "counts". accuracy and confidence are NaN in empty
    bins, so a plot shows a gap instead of a fake point at 0."""
    counts, hits, conf_sum = _bin_stats(probs, labels, n_bins)
    nonempty = counts > 0
    acc = np.full(n_bins, np.nan)
    conf = np.full(n_bins, np.nan)
    acc[nonempty] = hits[nonempty] / counts[nonempty]
    conf[nonempty] = conf_sum[nonempty] / counts[nonempty]
    centers = (np.arange(n_bins) + 0.5) / n_bins
    return {
        "bin_centers": centers,
        "accuracy": acc,
        "confidence": conf,
        "counts": counts.astype(np.int64),
    }
