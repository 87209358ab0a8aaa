"""From a loaded source to train / validation / test arrays, and the class-balance table.

The validation split is carved from the training pool, stratified and seeded; test splits
stay untouched, so no choice (early stopping, search, ensemble) ever sees them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fer_ray.config import DataConfig
from fer_ray.data._types import CLASS_NAMES, RawDataset, Split, class_names
from fer_ray.errors import ConfigError, DataError

if TYPE_CHECKING:  # pandas is imported where a table is made: predict starts without it
    import pandas as pd


@dataclass(frozen=True)
class FerData:
    """Ready-to-train arrays: train and val labelled, tests by name (labels may be None).

    classes: the names of the label ids (``data.labels``); left_out: faces each split left
    out for its labels (FER+: no emotion majority).
    """

    train: Split
    val: Split
    tests: dict[str, Split] = field(default_factory=dict)
    converted: int = 0
    source: str = ""
    classes: tuple[str, ...] = CLASS_NAMES
    left_out: dict[str, int] = field(default_factory=dict)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train_idx, val_idx), sorted, with each class split in the same proportion.

    labels: (N,) int. Every class with >= 2 samples gets at least one validation sample.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: {val_fraction} must be between 0 and 1")
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = round(len(idx) * val_fraction)
        # Keep at least one sample of a class on each side when the class allows it.
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about n samples keeping the class ratios (every class kept >= 1)."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, keep = stratified_split(labels, n / len(labels), seed)
    return keep


def _take(split: Split, idx: np.ndarray, source: str) -> Split:
    labels = None if split.labels is None else split.labels[idx]
    votes = None if split.vote_probs is None else split.vote_probs[idx]
    return Split(np.ascontiguousarray(split.images[idx]), labels, source, votes)


def prepare(raw: RawDataset, config: DataConfig, seed: int) -> FerData:
    """Split the training pool (unless the source ships a validation split) and subsample."""
    if raw.train is None or raw.train.labels is None:
        raise DataError(f"{raw.source}: no labelled training data found")
    train = raw.train
    assert train.labels is not None
    if config.subsample is not None:
        if config.subsample < 2 * len(class_names(config.labels)):
            raise ConfigError(f"data.subsample: {config.subsample} is too small")
        keep = stratified_subsample(train.labels, config.subsample, seed)
        train = _take(train, keep, f"{train.source} (subsample {len(keep)})")
    assert train.labels is not None
    if raw.val is not None:
        val = raw.val
    else:
        tr_idx, va_idx = stratified_split(train.labels, config.val_fraction, seed)
        val = _take(train, va_idx, f"{train.source} [val {config.val_fraction:g}, seed {seed}]")
        train = _take(train, tr_idx, f"{train.source} [train]")
    return FerData(train, val, dict(raw.tests), raw.converted, raw.source,
                   class_names(config.labels), dict(raw.left_out))


# The built-in faces' test split: a fifth as many faces as --synthetic-size, from seed + this.
BUILT_IN_TEST_SHARE = 5
BUILT_IN_TEST_SEED = 1_000_003


def load_data(config: DataConfig, seed: int) -> FerData:
    """Load ``config.path`` (any supported format) or generate the built-in synthetic faces,
    with FER+ votes where ``config`` asks for them (``fer_ray.data.votes``)."""
    from fer_ray.data.votes import apply_votes, needs_votes

    if config.path is None:
        if needs_votes(config):
            raise ConfigError("FER+ votes (data.labels ferplus, data.vote_alpha < 1 or "
                              "data.votes) need --data: FER2013 .npz files; the built-in "
                              "synthetic faces have no votes")
        from fer_ray.data.synthetic import make_synthetic

        n = config.synthetic_size
        # A held-out test split from another seed: the built-in faces get a test figure like
        # FER2013's PublicTest, never used for a choice (other faces, same distribution).
        held_out = make_synthetic(max(n // BUILT_IN_TEST_SHARE, 1), seed=seed + BUILT_IN_TEST_SEED)
        raw = RawDataset(train=make_synthetic(n, seed=seed), tests={"test": held_out},
                         source="built-in synthetic faces")
    else:
        from fer_ray.data.loaders import read_source

        raw = apply_votes(read_source(config.path), config)
    return prepare(raw, config, seed)


def add_test_split(data: FerData, path: str, name: str = "test",
                   config: DataConfig | None = None) -> None:
    """Read ``path`` as an extra test split of ``data``, unless ``data`` already holds the same
    images (``--data folder --test folder/public_test.npz``: one split, scored once).

    config: the data's config; with FER+ labels the split's labels come from its votes.
    """
    from fer_ray.data.loaders import read_split
    from fer_ray.data.votes import with_votes

    split, left_out = with_votes(read_split(path, name), config or DataConfig(),
                                 training=False)
    if not any(np.array_equal(split.images, t.images) for t in data.tests.values()):
        data.tests[name] = split
        if left_out:
            data.left_out[name] = left_out


def class_distribution(data: FerData) -> pd.DataFrame:
    """Counts and ratios per class and split: rows = class names, columns '<split> n/%'."""
    splits: dict[str, Split] = {"train": data.train, "val": data.val, **data.tests}
    import pandas as pd

    table = pd.DataFrame(index=list(data.classes))
    for name, split in splits.items():
        if split.labels is None:
            continue
        counts = np.bincount(split.labels, minlength=len(data.classes))
        table[f"{name} n"] = counts
        table[f"{name} %"] = np.round(100.0 * counts / max(counts.sum(), 1), 1)
    table.loc["total"] = [table[c].sum() if c.endswith(" n") else 100.0 for c in table.columns]
    return table


def format_class_table(data: FerData) -> str:
    """The class table, and the faces the labels left out (FER+), as the CLIs print them."""
    table = class_distribution(data).to_string(float_format=lambda v: f"{v:.1f}")
    if not data.left_out:
        return table
    counts = ", ".join(f"{n} of {name}" for name, n in data.left_out.items())
    return f"{table}\nleft out (no FER+ emotion majority: unknown, not a face or no votes): " \
           f"{counts}"


def fingerprint(data: FerData) -> str:
    """Short sha256 of the train and validation arrays: says whether two runs saw the same data."""
    return _digest(data.train, data.val)


def split_fingerprint(split: Split) -> str:
    """Short sha256 of one split's images and labels: says whether two runs were scored on the
    same test set (the same faces, labels and order)."""
    return _digest(split)


def _digest(*splits: Split) -> str:
    digest = hashlib.sha256()
    for split in splits:
        digest.update(np.ascontiguousarray(split.images).tobytes())
        if split.labels is not None:
            digest.update(split.labels.astype(np.int64).tobytes())
    return digest.hexdigest()[:16]
