"""Ensemble math on constructed arrays with known answers: voting, Caruana selection,
temperature scaling and calibration, class biases, deferral. No Ray, no torch; runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from fer_ray.ensemble.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    probs_to_logits,
    reliability_curve,
    temperature_scale,
)
from fer_ray.ensemble.decision import (
    accuracy_coverage_curve,
    confidence,
    defer_mask,
    fit_class_biases,
    predict_with_biases,
    threshold_for_coverage,
)
from fer_ray.ensemble.selection import Metric, greedy_selection, top_k_indices
from fer_ray.ensemble.voting import SoftVotingEnsemble
from fer_ray.errors import ConfigError
from fer_ray.metrics import accuracy, log_loss, macro_f1

K = 7


def peaked(targets: np.ndarray, k: int = K, peak: float = 0.9) -> np.ndarray:
    """(n, k) rows with `peak` on targets and the rest spread evenly."""
    p = np.full((len(targets), k), (1.0 - peak) / (k - 1))
    p[np.arange(len(targets)), targets] = peak
    return p


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution (so probs are calibrated)."""
    u = rng.random(len(probs))
    return np.minimum((probs.cumsum(axis=1) < u[:, None]).sum(axis=1), probs.shape[1] - 1)


@pytest.fixture()
def halves() -> tuple[np.ndarray, np.ndarray]:
    """A perfect on the first half and uniform on the second, B the reverse; C confidently
    wrong, D random noise. Both halves share labels, so A and B are exact mirror images."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, K, 100)
    labels = np.tile(base, 2)
    uniform = np.full((100, K), 1.0 / K)
    a = np.concatenate([peaked(base), uniform])
    b = np.concatenate([uniform, peaked(base)])
    c = peaked((labels + 1) % K)
    d = rng.dirichlet(np.ones(K), 200)
    return np.stack([a, b, c, d]), labels


# --- soft voting -------------------------------------------------------------------------------


def test_uniform_voting_is_exact_mean(rng: np.random.Generator) -> None:
    probas = rng.dirichlet(np.ones(K), (5, 300))
    ens = SoftVotingEnsemble().fit(probas)
    assert (ens.n_models_, ens.n_classes_) == (5, K)
    np.testing.assert_allclose(ens.weights_, np.full(5, 0.2))
    np.testing.assert_array_equal(ens.predict_proba(probas), probas.mean(0))
    np.testing.assert_array_equal(ens.predict(probas), probas.mean(0).argmax(1))


def test_weighted_voting_matches_hand_average(rng: np.random.Generator) -> None:
    probas = rng.dirichlet(np.ones(K), (3, 50))
    ens = SoftVotingEnsemble(weights=[1.0, 2.0, 1.0]).fit(probas)
    np.testing.assert_allclose(ens.weights_, [0.25, 0.5, 0.25])
    expected = (probas[0] + 2 * probas[1] + probas[2]) / 4
    np.testing.assert_allclose(ens.predict_proba(probas), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ens.predict_proba(probas).sum(1), 1.0)


def test_voting_rejects_bad_weights(rng: np.random.Generator) -> None:
    probas = rng.dirichlet(np.ones(K), (3, 10))
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]):
        with pytest.raises(ConfigError):
            SoftVotingEnsemble(weights=bad).fit(probas)
    ens = SoftVotingEnsemble().fit(probas)
    with pytest.raises(ValueError):
        ens.predict_proba(probas[:2])
    with pytest.raises(RuntimeError):
        SoftVotingEnsemble().predict(probas)


# --- greedy selection --------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_greedy_picks_complementary_pair(
    halves: tuple[np.ndarray, np.ndarray], metric: Metric
) -> None:
    probas, labels = halves
    w = greedy_selection(probas, labels, ensemble_size=20, metric=metric, seed=0)
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0, 0.0])
    assert w.sum() == pytest.approx(1.0)
    # The selected pair beats every single member and the uniform average.
    ens = SoftVotingEnsemble(w).fit(probas).predict_proba(probas)
    assert log_loss(labels, ens) < min(log_loss(labels, p) for p in probas)
    assert log_loss(labels, ens) < log_loss(labels, probas.mean(0))
    assert accuracy(labels, ens.argmax(1)) == 1.0


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_greedy_dominant_model_gets_all_weight(metric: Metric) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, K, 300)
    probas = np.stack([
        peaked(labels, peak=0.6),
        peaked(labels, peak=0.9),  # best on every sample
        rng.dirichlet(np.ones(K), 300),
        peaked((labels + 3) % K),
    ])
    w = greedy_selection(probas, labels, ensemble_size=10, metric=metric, seed=3)
    np.testing.assert_array_equal(w, [0.0, 1.0, 0.0, 0.0])


def test_greedy_is_deterministic_per_seed(rng: np.random.Generator) -> None:
    labels = rng.integers(0, K, 200)
    probas = rng.dirichlet(np.ones(K), (6, 200))
    probas[:, np.arange(200), labels] += rng.random((6, 200))
    probas /= probas.sum(-1, keepdims=True)
    for metric in ("log_loss", "accuracy"):
        w1 = greedy_selection(probas, labels, 15, metric, seed=7)
        w2 = greedy_selection(probas, labels, 15, metric, seed=7)
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_allclose((w1 * 15), np.round(w1 * 15))  # counts / ensemble_size


def test_greedy_exact_ties_follow_seed() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, K, 100)
    good = peaked(labels, peak=0.8)
    probas = np.stack([good, good, good, peaked((labels + 1) % K)])
    results = {tuple(greedy_selection(probas, labels, 5, seed=s)) for s in range(12)}
    assert len(results) > 1  # the seed decides between identical members
    for w in results:
        assert sum(w[:3]) == pytest.approx(1.0) and w[3] == 0.0  # every choice is valid


def test_greedy_rejects_bad_settings(halves: tuple[np.ndarray, np.ndarray]) -> None:
    probas, labels = halves
    with pytest.raises(ConfigError):
        greedy_selection(probas, labels, ensemble_size=0)
    with pytest.raises(ConfigError):
        greedy_selection(probas, labels, metric="f1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        greedy_selection(probas, labels[:-1])


def test_top_k_indices_stable() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, np.nan])
    np.testing.assert_array_equal(top_k_indices(scores, 3), [1, 3, 0])
    np.testing.assert_array_equal(top_k_indices(scores, 3, higher_is_better=False), [4, 0, 2])
    np.testing.assert_array_equal(top_k_indices(scores, 10), [1, 3, 0, 2, 4, 5])
    with pytest.raises(ConfigError):
        top_k_indices(scores, 0)


# --- calibration -------------------------------------------------------------------------------


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits 5x too sharp, with labels drawn from the true (unscaled) softmax."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, K))
    return 5.0 * z, sample_labels(softmax(z, axis=1), rng)


def test_temperature_recovers_scale_and_improves_calibration() -> None:
    logits, labels = overconfident(20000, seed=5)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(5.0, rel=0.2)
    before, after = softmax(logits, axis=1), apply_temperature(logits, t)
    assert nll(after, labels) < nll(before, labels)
    assert expected_calibration_error(after, labels) < expected_calibration_error(before, labels)
    assert expected_calibration_error(after, labels) < 0.03


def test_temperature_on_probabilities() -> None:
    logits, labels = overconfident(5000, seed=6)
    probs = softmax(logits, axis=1)
    t = fit_temperature(probs_to_logits(probs), labels)
    assert t == pytest.approx(5.0, rel=0.2)
    scaled = temperature_scale(probs, t)
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    assert nll(scaled, labels) < nll(probs, labels)
    np.testing.assert_allclose(temperature_scale(probs, 1.0), probs, atol=1e-9)
    with pytest.raises(ConfigError):
        temperature_scale(probs, 0.0)


def test_ece_small_when_calibrated() -> None:
    rng = np.random.default_rng(7)
    probs = softmax(rng.normal(0.0, 1.5, (50000, K)), axis=1)
    labels = sample_labels(probs, rng)
    assert expected_calibration_error(probs, labels) < 0.02
    curve = reliability_curve(probs, labels, n_bins=10)
    assert curve["counts"].sum() == 50000
    np.testing.assert_allclose(curve["bin_centers"], np.arange(0.05, 1.0, 0.1))
    full = curve["counts"] > 1000
    np.testing.assert_allclose(curve["accuracy"][full], curve["confidence"][full], atol=0.03)
    # The lowest bin (confidence <= 0.1) cannot occur with 7 classes: empty bins are NaN.
    assert curve["counts"][0] == 0 and np.isnan(curve["accuracy"][0])


def test_ece_known_value() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin (0.8, 0.9]: acc 0.5, conf 0.9; bin (0.5, 0.6]: acc 1.0, conf 0.6.
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    assert nll(probs, labels) == pytest.approx(log_loss(labels, probs))


# --- class biases and deferral -----------------------------------------------------------------


def underpredicted_rare(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 classes, class 2 rare (5 %) and its probability pushed down for every sample."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=[0.55, 0.40, 0.05])
    z = rng.normal(0.0, 0.5, (n, 3))
    z[np.arange(n), labels] += 2.0
    # Pushed down, and capped just below the top score so argmax can never pick it.
    z[:, 2] = np.minimum(z[:, 2] - 2.5, z[:, :2].max(1) - 0.05)
    return softmax(z, axis=1), labels


def test_biases_make_rare_class_predicted() -> None:
    probs, labels = underpredicted_rare(2000, seed=8)
    plain = probs.argmax(1)
    assert not np.any(plain == 2)
    for objective in ("macro_f1", "balanced_accuracy"):
        b = fit_class_biases(probs, labels, objective=objective)
        assert b.shape == (3,) and b[2] > b[0]
        preds = predict_with_biases(probs, b)
        assert np.any(preds == 2)
        assert macro_f1(labels, preds, 3) > macro_f1(labels, plain, 3)
    # Biases fitted on validation carry over to a fresh sample of the same distribution.
    test_probs, test_labels = underpredicted_rare(2000, seed=9)
    b = fit_class_biases(probs, labels)
    assert macro_f1(test_labels, predict_with_biases(test_probs, b), 3) > macro_f1(
        test_labels, test_probs.argmax(1), 3
    )


def test_biases_never_hurt(rng: np.random.Generator) -> None:
    probs = rng.dirichlet(np.ones(K), 300)
    labels = rng.integers(0, K, 300)
    b = fit_class_biases(probs, labels, n_rounds=2, grid=np.linspace(-1, 1, 9))
    assert macro_f1(labels, predict_with_biases(probs, b)) >= macro_f1(labels, probs.argmax(1))
    perfect = peaked(labels)
    np.testing.assert_array_equal(fit_class_biases(perfect, labels), np.zeros(K))


def test_confidence_kinds() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(confidence(probs, "max_prob"), [0.5, 0.8])
    np.testing.assert_allclose(confidence(probs, "margin"), [0.2, 0.7])
    with pytest.raises(ConfigError):
        confidence(probs, "entropy")  # type: ignore[arg-type]


def test_accuracy_coverage_curve_informative() -> None:
    n = 100
    conf = np.linspace(0.4, 0.95, n)
    preds = np.arange(n) % 3
    probs = np.repeat(((1 - conf) / 2)[:, None], 3, axis=1)
    probs[np.arange(n), preds] = conf
    # Correct on the 60 most confident only: confidence is informative.
    correct = np.arange(n) >= 40
    labels = np.where(correct, preds, (preds + 1) % 3)
    for kind in ("max_prob", "margin"):
        curve = accuracy_coverage_curve(probs, labels, kind)
        cov, acc = curve["coverage"], curve["accuracy"]
        assert cov[0] == 1.0 and np.all(np.diff(cov) < 0)
        assert acc[0] == pytest.approx(accuracy(labels, probs.argmax(1)))
        assert np.all(np.diff(acc[::-1]) <= 1e-12)  # non-increasing as coverage grows
        assert acc[-1] == 1.0
        kept = confidence(probs, kind) >= curve["threshold"][:, None]
        np.testing.assert_allclose(kept.mean(1), cov)


def test_accuracy_coverage_ties_grouped() -> None:
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    curve = accuracy_coverage_curve(probs, np.array([0, 1, 0]))
    np.testing.assert_allclose(curve["coverage"], [1.0, 1 / 3])
    np.testing.assert_allclose(curve["accuracy"], [2 / 3, 1.0])
    np.testing.assert_allclose(curve["threshold"], [0.6, 0.9])


def test_threshold_for_coverage(rng: np.random.Generator) -> None:
    val = rng.dirichlet(np.ones(K), 1000)
    test = rng.dirichlet(np.ones(K), 5000)
    for kind in ("max_prob", "margin"):
        t = threshold_for_coverage(val, kind, 0.8)
        assert (confidence(val, kind) >= t).mean() == pytest.approx(0.8)
        abstain = defer_mask(test, t, kind)
        assert abstain.dtype == bool
        assert 1 - abstain.mean() == pytest.approx(0.8, abs=0.03)
    assert threshold_for_coverage(val, "max_prob", 1.0) == val.max(1).min()
    with pytest.raises(ConfigError):
        threshold_for_coverage(val, "max_prob", 0.0)


def test_a_candidate_that_predicts_like_another_is_a_duplicate() -> None:
    """99 % of the faces predicted alike: one model for a vote; 98 %: two."""
    from fer_ray.ensemble.candidates import duplicates_another

    rng = np.random.default_rng(0)
    kept = rng.dirichlet(np.ones(7), size=1000).astype(np.float32)
    same = kept[:, ::-1].copy()  # other probabilities...
    same[np.arange(1000), kept.argmax(1)] = 2.0  # ...but the same predicted class everywhere
    for changed, duplicate in ((10, True), (20, False)):
        near = same.copy()
        near[:changed] = np.roll(near[:changed], 1, axis=1)  # another class on these faces
        assert np.mean(near.argmax(1) == kept.argmax(1)) == 1 - changed / 1000
        assert duplicates_another(near, [kept]) is duplicate
    assert not duplicates_another(kept, [])
