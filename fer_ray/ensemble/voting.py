"""Soft voting over member probabilities, like scikit-learn's VotingClassifier(voting="soft").

Members are given as their predicted probabilities (running the models lives elsewhere):
probas is (n_models, n_samples, n_classes) float, rows summing to 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fer_ray.errors import ConfigError


def check_probas(probas: np.ndarray) -> np.ndarray:
    """probas as float64 (n_models, n_samples, n_classes); ValueError on any other shape."""
    arr = np.asarray(probas, dtype=np.float64)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"probas must be (n_models, n_samples, n_classes), got {arr.shape}")
    return arr


def normalise_weights(weights: Sequence[float] | np.ndarray | None, n_models: int) -> np.ndarray:
    """(n_models,) float64 weights summing to 1; uniform when None.

    ConfigError when the length differs from n_models, a weight is negative or not finite, or
    all are zero: those are user-facing settings (e.g. weights in a config file).
    """
    if weights is None:
        return np.full(n_models, 1.0 / n_models)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n_models:
        raise ConfigError(f"weights: {len(w)} weights given for {n_models} models")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(f"weights: must be finite and >= 0, got {w.tolist()}")
    total = w.sum()
    if total <= 0:
        raise ConfigError("weights: at least one weight must be > 0")
    return w / total


def soft_vote(probas: np.ndarray, weights: Sequence[float] | np.ndarray | None = None
              ) -> np.ndarray:
    """The one soft vote: (n_samples, n_classes) weighted mean over models of probas
    (n_models, n_samples, n_classes); uniform when ``weights`` is None (then equal, bit for bit,
    to ``probas.mean(0)``). Used to choose ensembles on validation and to predict with them,
    so both compute the same numbers."""
    arr = check_probas(probas)
    w = None if weights is None else normalise_weights(weights, arr.shape[0])
    return np.asarray(np.average(arr, axis=0, weights=w))


class SoftVotingEnsemble:
    """Weighted mean of member probabilities, then argmax.

    Like scikit-learn estimators: __init__ only stores parameters; fit() validates them against
    the data and sets attributes ending in "_" (n_models_, n_classes_, weights_) and returns self.
    """

    def __init__(self, weights: Sequence[float] | np.ndarray | None = None) -> None:
        self.weights = weights

    def fit(self, probas: np.ndarray, labels: np.ndarray | None = None) -> SoftVotingEnsemble:
        """Check weights against probas (n_models, n_samples, n_classes). labels is unused: kept
        so fixed-weight and fitted-weight ensembles share one call shape."""
        arr = check_probas(probas)
        self.n_models_ = int(arr.shape[0])
        self.n_classes_ = int(arr.shape[2])
        self.weights_ = normalise_weights(self.weights, self.n_models_)
        return self

    def _check(self, probas: np.ndarray) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise RuntimeError("SoftVotingEnsemble is not fitted; call fit(probas) first")
        arr = check_probas(probas)
        if arr.shape[0] != self.n_models_ or arr.shape[2] != self.n_classes_:
            raise ValueError(
                f"probas {arr.shape} does not match the fitted ensemble "
                f"({self.n_models_} models, {self.n_classes_} classes)"
            )
        return arr

    def predict_proba(self, probas: np.ndarray) -> np.ndarray:
        """(n_samples, n_classes) weighted average over models of probas (n_models, n, K)."""
        arr = self._check(probas)
        return soft_vote(arr, None if self.weights is None else self.weights_)

    def predict(self, probas: np.ndarray) -> np.ndarray:
        """(n_samples,) int64 class with the highest averaged probability."""
        return np.argmax(self.predict_proba(probas), axis=1).astype(np.int64)
