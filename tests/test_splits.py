"""The train/validation split every choice is made on: disjoint, complete, stratified and
stable for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from fer_ray.config import DataConfig
from fer_ray.data import load_data
from fer_ray.data.splits import stratified_split

# FER2013-like imbalance: disgust is rare.
COUNTS = [400, 44, 410, 720, 480, 320, 500]


def _labels(seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(7), COUNTS)
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_the_split_is_disjoint_complete_and_stratified(fraction: float) -> None:
    labels = _labels()
    train, val = stratified_split(labels, fraction, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, no repeats
    for c, n in enumerate(COUNTS):  # each class in the same proportion, to one image
        assert abs(int((labels[val] == c).sum()) - fraction * n) <= 1, c


def test_the_split_is_stable_for_a_seed_and_changes_with_it() -> None:
    labels = _labels()
    first = stratified_split(labels, 0.1, seed=7)
    again = stratified_split(labels, 0.1, seed=7)
    other = stratified_split(labels, 0.1, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_a_rare_class_keeps_a_validation_image() -> None:
    labels = np.array([0] * 50 + [1] * 2 + [2] * 50)
    _, val = stratified_split(labels, 0.1, seed=0)
    assert set(labels[val]) == {0, 1, 2}


def test_loaded_data_has_disjoint_train_and_validation_images() -> None:
    """Through the loader (built-in faces): no image index lands on both sides."""
    data = load_data(DataConfig(synthetic_size=700, val_fraction=0.2), seed=0)
    train = {img.tobytes() for img in data.train.images}
    assert not any(img.tobytes() in train for img in data.val.images)
    assert abs(len(data.val) - 0.2 * (len(data.train) + len(data.val))) <= 7
