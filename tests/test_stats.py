"""The paired bootstrap and mean ± sd of ``fer_ray.report.stats``, on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fer_ray.report.stats import mean_sd, paired_bootstrap, per_image_difference


def test_identical_predictions_give_exactly_zero() -> None:
    rng = np.random.default_rng(3)
    correct = rng.random((3, 500)) < 0.7
    assert paired_bootstrap(correct, correct.copy()) == (0.0, 0.0, 0.0)


def test_fifty_more_right_of_a_thousand_is_five_points() -> None:
    a = np.zeros(1000, bool)
    a[:700] = True  # a: 70 %
    b = a.copy()
    b[700:750] = True  # b: right wherever a is, and on 50 more faces: 75 %
    diff, low, high = paired_bootstrap(a[None], b[None], n_boot=10000, seed=0)
    assert 100 * diff == pytest.approx(5.0)
    assert 0.0 < 100 * low < 5.0 < 100 * high
    # 50 of 1000 faces differ: the sum is Binomial(1000, 0.05), sd 0.69 point, so the 95 %
    # interval is about 5 ± 1.35 points.
    assert 100 * low == pytest.approx(3.65, abs=0.25)
    assert 100 * high == pytest.approx(6.4, abs=0.25)
    swapped = paired_bootstrap(b[None], a[None], n_boot=10000, seed=0)
    assert swapped == (-diff, -high, -low)


def test_several_seeds_average_the_per_seed_differences() -> None:
    a = np.zeros((2, 100), bool)
    b = np.zeros((2, 100), bool)
    b[0, :10] = True  # seed 0: +10 points
    b[1, :20] = True  # seed 1: +20 points
    assert per_image_difference(a, b).sum() == 30
    diff, low, high = paired_bootstrap(a, b, n_boot=2000, seed=1)
    assert 100 * diff == pytest.approx(15.0)
    assert low < diff < high and low > 0
    assert paired_bootstrap(a, b, n_boot=2000, seed=1) == (diff, low, high)  # seeded


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(np.ones((2, 10), bool), np.ones((1, 10), bool))


def test_mean_sd() -> None:
    mean, sd = mean_sd(np.array([0.5, 0.75]))
    assert mean == pytest.approx(0.625) and sd == pytest.approx(0.1767767)
    mean, sd = mean_sd(np.array([0.4]))
    assert mean == pytest.approx(0.4) and np.isnan(sd)
