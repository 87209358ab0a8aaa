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
from fer_ray.data._types import CLASS_NAMES, NUM_CLASSES, RawDataset, Split
from fer_ray.errors import ConfigError, DataError

if TYPE_CHECKING:  # pandas is imported where a table is made: predict starts without it
    import pandas as pd


@dataclass(frozen=True)
class FerData:
    """Ready-to-train arrays: train and val labelled, tests by name (labels may be None)."""

    train: Split
    val: Split
    tests: dict[str, Split] = field(default_factory=dict)
    converted: int = 0
    source: str = ""


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
    return Split(np.ascontiguousarray(split.images[idx]), labels, source)


def prepare(raw: RawDataset, config: DataConfig, seed: int) -> FerData:
    """Split the training pool (unless the source ships a validation split) and subsample."""
    if raw.train is None or raw.train.labels is None:
        raise DataError(f"{raw.source}: no labelled training data found")
    train = raw.train
    assert train.labels is not None
    if config.subsample is not None:
        if config.subsample < 2 * NUM_CLASSES:
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
    return FerData(train, val, dict(raw.tests), raw.converted, raw.source)


def load_data(config: DataConfig, seed: int) -> FerData:
    """Load ``config.path`` (any supported format) or generate the built-in synthetic faces."""
    if config.path is None:
        from fer_ray.data.synthetic import make_synthetic

        raw = RawDataset(train=make_synthetic(config.synthetic_size, seed=seed),
                         source="built-in synthetic faces")
    else:
        from fer_ray.data.loaders import read_source

        raw = read_source(config.path)
    return prepare(raw, config, seed)


def add_test_split(data: FerData, path: str, name: str = "test") -> None:
    """Read ``path`` as an extra test split of ``data``, unless ``data`` already holds the same
    images (``--data folder --test folder/public_test.npz``: one split, scored once)."""
    from fer_ray.data.loaders import read_split

    split = read_split(path, name)
    if not any(np.array_equal(split.images, t.images) for t in data.tests.values()):
        data.tests[name] = split


def class_distribution(data: FerData) -> pd.DataFrame:
    """Counts and ratios per class and split: rows = class names, columns '<split> n/%'."""
    splits: dict[str, Split] = {"train": data.train, "val": data.val, **data.tests}
    import pandas as pd

    table = pd.DataFrame(index=list(CLASS_NAMES))
    for name, split in splits.items():
        if split.labels is None:
            continue
        counts = np.bincount(split.labels, minlength=NUM_CLASSES)
        table[f"{name} n"] = counts
        table[f"{name} %"] = np.round(100.0 * counts / max(counts.sum(), 1), 1)
    table.loc["total"] = [table[c].sum() if c.endswith(" n") else 100.0 for c in table.columns]
    return table


def format_class_table(data: FerData) -> str:
    table = class_distribution(data)
    return table.to_string(float_format=lambda v: f"{v:.1f}")


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
