"""Tests for the built-in synthetic face generator (fer_ray.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from fer_ray.data._types import CLASS_NAMES, FER2013_TRAIN_COUNTS, IMAGE_SIZE, Split
from fer_ray.data.synthetic import make_synthetic
from fer_ray.errors import ConfigError

HAPPY, SAD, FEAR, ANGRY = (CLASS_NAMES.index(c) for c in ("happy", "sad", "fear", "angry"))
MOUTH = (slice(30, 42), slice(14, 34))  # rows, cols of the mouth at the mean face position
BROWS = (slice(10, 20), slice(10, 38))
TOP = (slice(0, 6), slice(None))  # mostly background: no expression signal expected


@pytest.fixture(scope="module")
def split() -> Split:
    return make_synthetic(2000, seed=0)


def test_shapes_dtypes_and_source(split: Split) -> None:
    assert split.images.shape == (2000, IMAGE_SIZE, IMAGE_SIZE)
    assert split.images.dtype == np.uint8
    assert split.labels is not None
    assert split.labels.shape == (2000,)
    assert split.labels.dtype == np.int64
    assert split.source == "synthetic(n=2000, seed=0)"
    assert len(split) == 2000


def test_deterministic_per_seed() -> None:
    a, b, c = make_synthetic(300, seed=7), make_synthetic(300, seed=7), make_synthetic(300, seed=8)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.labels is not None and b.labels is not None and c.labels is not None
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.labels, c.labels)


def test_counts_follow_fer2013_ratios(split: Split) -> None:
    assert split.labels is not None
    counts = np.bincount(split.labels, minlength=len(CLASS_NAMES))
    quota = 2000 * np.array(FER2013_TRAIN_COUNTS) / sum(FER2013_TRAIN_COUNTS)
    assert counts.sum() == 2000
    # Largest-remainder rounding: each count is the floor or ceiling of its exact quota.
    assert np.all(np.abs(counts - quota) < 1.0)
    assert int(np.argmax(counts)) == HAPPY  # majority class ~25 %, as in FER2013


def test_labels_are_shuffled(split: Split) -> None:
    assert split.labels is not None
    assert not np.all(np.diff(split.labels) >= 0)
    assert len(set(split.labels[:100].tolist())) >= 5


@pytest.mark.parametrize("n", [7, 8, 20, 50])
def test_every_class_present_for_small_n(n: int) -> None:
    labels = make_synthetic(n, seed=1).labels
    assert labels is not None
    counts = np.bincount(labels, minlength=7)
    assert counts.sum() == n
    assert np.all(counts >= 1)


def test_custom_class_counts() -> None:
    exact = [5, 0, 3, 10, 2, 1, 4]
    labels = make_synthetic(25, seed=3, class_counts=exact).labels
    assert labels is not None
    assert np.bincount(labels, minlength=7).tolist() == exact
    # Counts are weights: scaled to n by largest remainder.
    labels = make_synthetic(70, seed=3, class_counts=[1] * 7).labels
    assert labels is not None
    assert np.bincount(labels, minlength=7).tolist() == [10] * 7


def test_pixel_range_is_used(split: Split) -> None:
    img = split.images
    assert img.min() < 20 and img.max() > 235
    lo, hi = np.percentile(img, [5, 95])
    assert hi - lo > 100
    # Per image too: faces have contrast, not flat grey.
    assert np.median(img.std(axis=(1, 2))) > 15


def _class_means(split: Split) -> list[np.ndarray]:
    """Per-class mean of per-image standardised images, each (48, 48)."""
    assert split.labels is not None
    x = split.images.astype(np.float64)
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    return [x[split.labels == c].mean(axis=0) for c in range(len(CLASS_NAMES))]


def test_expressions_differ_where_expected(split: Split) -> None:
    means = _class_means(split)

    def gap(a: int, b: int, region: tuple[slice, slice]) -> float:
        return float(np.abs(means[a][region] - means[b][region]).mean())

    # Smile vs frown: a large difference at the mouth, little in the background.
    assert gap(HAPPY, SAD, MOUTH) > 0.15
    assert gap(HAPPY, SAD, MOUTH) > 2.5 * gap(HAPPY, SAD, TOP)
    # Raised vs lowered brows.
    assert gap(FEAR, ANGRY, BROWS) > 0.1
    assert gap(FEAR, ANGRY, BROWS) > 1.5 * gap(FEAR, ANGRY, TOP)


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_invalid_n_raises(n: object) -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        make_synthetic(n)  # type: ignore[arg-type]


@pytest.mark.parametrize("counts", [[1, 2, 3], [1] * 8, [1, 1, 1, 1, 1, 1, -1], [0] * 7])
def test_invalid_class_counts_raise(counts: list[int]) -> None:
    with pytest.raises(ConfigError, match="class_counts"):
        make_synthetic(10, class_counts=counts)
