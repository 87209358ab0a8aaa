"""Uncertainty of accuracy figures: a seeded paired bootstrap over test images, mean ± sd.

One run per side cannot tell a 0.6-point gain from noise: on FER2013's PublicTest (3,589
faces) one accuracy's standard error is ~0.8 point. Two models scored on the *same* faces are
compared far more precisely by pairing them: most faces are right (or wrong) for both, and
only the faces they disagree on move the difference.

Inputs are per-image correctness: ``correct`` (n_seeds, N) bool, row s = seed s's model,
column i = test image i (the same images, in the same order, in every row and on both
sides). Differences are in accuracy units (0.05 = 5 points). Pure numpy; no Ray, no torch.
"""

from __future__ import annotations

import numpy as np

BOOT_CHUNK = 500  # resamples per vectorised step: 500 x 3,589 int64 indices = 14 MB


def per_image_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
    """(N,) int64: over seeds, how many more times b is right than a on each image.

    correct_a, correct_b: (n_seeds, N) bool (or (N,) for one seed). Divided by n_seeds,
    its mean over images is the mean over seeds of acc_b - acc_a.
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=bool))
    b = np.atleast_2d(np.asarray(correct_b, dtype=bool))
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"correctness arrays of shapes {a.shape} and {b.shape}: expected the "
                         "same (n_seeds, N) with N > 0")
    return b.sum(axis=0, dtype=np.int64) - a.sum(axis=0, dtype=np.int64)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 10000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean_diff, low, high): acc_b - acc_a and its percentile bootstrap interval.

    correct_a, correct_b: (n_seeds, N) bool, per-image correctness of sides a and b; row s of
    both comes from seed s (for one seed, (1, N) or (N,)). mean_diff is the mean over seeds
    of acc_b - acc_a. The interval resamples the N test images with replacement, ``n_boot``
    times, *jointly* for both sides and all seeds (a resampled image counts for every seed's
    pair at once), and takes the mean over seeds of the per-seed differences on each
    resample; low/high are the (1 - level)/2 and (1 + level)/2 order statistics. Seed-to-seed
    variation enters only through the seeds given (resampling images does not resample
    training runs), so with one seed the interval says how much the test set alone could
    move the difference.

    Exact in corner cases (integer sums): identical sides give (0, 0, 0), and swapping a and
    b negates all three numbers. Seeded: the same inputs and ``seed`` give the same interval.
    """
    diff = per_image_difference(correct_a, correct_b)
    n_seeds = np.atleast_2d(correct_a).shape[0]
    n = diff.shape[0]
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"n_boot {n_boot} must be >= 1 and level {level} in (0, 1)")
    rng = np.random.default_rng(seed)
    sums = np.empty(n_boot, dtype=np.int64)
    for start in range(0, n_boot, BOOT_CHUNK):
        stop = min(start + BOOT_CHUNK, n_boot)
        sums[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].sum(axis=1)
    sums.sort()
    # Symmetric order statistics, so that negating every sum exactly swaps low and high.
    k = min(int(np.floor((1.0 - level) / 2 * n_boot)), (n_boot - 1) // 2)
    scale = float(n * n_seeds)
    return (float(diff.sum()) / scale, float(sums[k]) / scale,
            float(sums[n_boot - 1 - k]) / scale)


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """(mean, sample standard deviation, ddof=1) of (n,) values; sd is nan for n < 2."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return float("nan"), float("nan")
    sd = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return float(array.mean()), sd
