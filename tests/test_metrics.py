"""Metrics on plain arrays agree with scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from fer_ray.metrics import accuracy, confusion_matrix, log_loss, macro_f1, per_class_scores


def test_agree_with_sklearn(rng: np.random.Generator) -> None:
    labels = rng.integers(0, 7, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 7, 500))
    cm = confusion_matrix(labels, preds)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(7)))
    assert accuracy(labels, preds) == skm.accuracy_score(labels, preds)
    assert macro_f1(labels, preds) == np.float64(skm.f1_score(labels, preds, average="macro"))
    np.testing.assert_allclose(per_class_scores(cm)["recall"],
                               skm.recall_score(labels, preds, average=None))
    probs = rng.dirichlet(np.ones(7), 500)
    assert abs(log_loss(labels, probs) - skm.log_loss(labels, probs, labels=range(7))) < 1e-9


def test_missing_class_does_not_count_in_macro_f1() -> None:
    labels = np.array([0, 0, 1, 1])
    assert macro_f1(labels, labels) == 1.0
