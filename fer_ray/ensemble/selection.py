"""Ensemble selection (Caruana et al. 2004): greedy forward selection with replacement.

Works on plain arrays like auto-sklearn's EnsembleSelection: probas (n_models, n_samples,
n_classes) are the members' validation probabilities, labels (n_samples,) int. The result is a
weight per model, selection count / ensemble_size, to use with SoftVotingEnsemble(weights).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fer_ray.ensemble.voting import check_probas
from fer_ray.errors import ConfigError
from fer_ray.metrics import accuracy, log_loss

Metric = Literal["log_loss", "accuracy"]

# Losses within this of the best count as tied: the same average reached by adding models in a
# different order can differ in the last bits, and that must not decide between members.
_TIE_TOL = 1e-12


def _losses(candidates: np.ndarray, labels: np.ndarray, metric: Metric) -> np.ndarray:
    """(n_models, 2) sort keys for candidate averages (n_models, n_samples, n_classes).

    Column 0 is the metric as a loss. Column 1 is the log-loss, a secondary key: accuracy is flat
    under small weight changes, so without it a useless member added at weight 1/k that flips no
    argmax would tie with the useful ones and be picked at random.
    """
    nll = np.array([log_loss(labels, c) for c in candidates])
    if metric == "log_loss":
        return np.stack([nll, nll], axis=1)
    err = np.array([1.0 - accuracy(labels, np.argmax(c, axis=1)) for c in candidates])
    return np.stack([err, nll], axis=1)


def greedy_selection(
    probas: np.ndarray,
    labels: np.ndarray,
    ensemble_size: int = 20,
    metric: Metric = "log_loss",
    seed: int = 0,
) -> np.ndarray:
    """(n_models,) float64 weights summing to 1: Caruana forward selection with replacement.

    Each of ensemble_size steps adds the model whose inclusion gives the best metric of the
    running (equal-weight) average of the models chosen so far; a model can be chosen again,
    which is how weights other than 1/k arise. Exact ties are broken by
    np.random.default_rng(seed), so the result is a function of the inputs and seed.
    """
    arr = check_probas(probas)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (arr.shape[1],):
        raise ValueError(f"labels shape {y.shape} does not match probas {arr.shape}")
    if ensemble_size < 1:
        raise ConfigError(f"ensemble_size: must be >= 1, got {ensemble_size}")
    if metric not in ("log_loss", "accuracy"):
        raise ConfigError(f"metric: must be 'log_loss' or 'accuracy', got {metric!r}")
    rng = np.random.default_rng(seed)
    n_models = arr.shape[0]
    counts = np.zeros(n_models, dtype=np.int64)
    running_sum = np.zeros(arr.shape[1:], dtype=np.float64)
    for step in range(1, ensemble_size + 1):
        candidates = (running_sum[None] + arr) / step
        keys = _losses(candidates, y, metric)
        tied = np.flatnonzero(keys[:, 0] <= keys[:, 0].min() + _TIE_TOL)
        tied = tied[keys[tied, 1] <= keys[tied, 1].min() + _TIE_TOL]
        best = int(rng.choice(tied)) if len(tied) > 1 else int(tied[0])
        counts[best] += 1
        running_sum += arr[best]
    return counts / ensemble_size


def top_k_indices(scores: np.ndarray, k: int, higher_is_better: bool = True) -> np.ndarray:
    """(min(k, n),) int64 indices of the k best scores, best first.

    Stable: equal scores keep their original order (the earlier index wins). NaN scores rank
    last. ConfigError when k < 1.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if k < 1:
        raise ConfigError(f"k: must be >= 1, got {k}")
    # Negating keeps a stable ascending sort; NaN sorts to the end either way.
    order = np.argsort(-s if higher_is_better else s, kind="stable")
    return order[:k].astype(np.int64)
