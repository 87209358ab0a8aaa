"""FER+ crowd votes (Barsoum et al., ICMI 2016, arXiv 1608.01041) as labels and targets.

FER+ had ten taggers re-label every FER2013 face; a votes file ``<name>_votes.npz`` holds
``votes`` uint8 (N, 10) aligned row for row with the FER2013 file ``<name>.npz``, in the
columns ``VOTE_COLUMNS`` (``csv_row`` -1 and all votes 0 where a face has none). Two uses:

- ``data.labels = "fer2013"``: the 7 FER2013 classes and labels; the votes for FER2013's 7
  emotions (contempt, unknown and not-a-face dropped), normalised, become ``vote_probs``
  and the training targets ``alpha * one_hot(label) + (1 - alpha) * vote_probs``. Faces
  without such votes keep their one-hot label. Evaluation stays on the FER2013 labels.
- ``data.labels = "ferplus"``: FER+'s 8 emotions (``FERPLUS_CLASS_NAMES``, its column
  order); the label is the vote majority (the first of tied columns, so an emotion beats a
  tie with unknown / not-a-face), faces whose majority is unknown or not-a-face, or without
  votes, are left out; ``vote_probs`` is the vote share over the 8 emotions. Test splits get
  their labels the same way, so test accuracy is against the FER+ majority.

Where the votes come from: ``data.votes`` (a folder), else the folder ``ferplus`` beside the
data file's folder (``.../fer2013/train.npz`` -> ``.../ferplus/train_votes.npz``). Only
``.npz`` data can carry votes (the rows must be FER2013's, in its order).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fer_ray.config import DataConfig
from fer_ray.data._types import CLASS_NAMES, FERPLUS_CLASS_NAMES, RawDataset, Split
from fer_ray.data.npz_files import read_npz
from fer_ray.errors import ConfigError, DataError

VOTE_COLUMNS: tuple[str, ...] = (*FERPLUS_CLASS_NAMES, "unknown", "NF")
N_EMOTIONS = len(FERPLUS_CLASS_NAMES)  # vote columns that are emotions (before unknown, NF)
DEFAULT_FOLDER = "ferplus"  # the votes folder's name beside the data's folder
# FER+ vote column -> FER2013 class id, for the 7 emotions FER2013 has (not contempt).
_FER2013_OF_COLUMN = {i: CLASS_NAMES.index(name) for i, name in enumerate(
    ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear"))}


def vote_alpha(config: DataConfig) -> float:
    """The weight of the label in the training targets: ``config.vote_alpha``, or the label
    set's default (1 for fer2013, 0 for ferplus)."""
    if config.vote_alpha is not None:
        return config.vote_alpha
    return 0.0 if config.labels == "ferplus" else 1.0


def needs_votes(config: DataConfig) -> bool:
    """Whether loading ``config``'s data reads votes: for FER+ labels, for targets that use
    them (vote_alpha < 1), or when a votes folder is named."""
    return config.labels == "ferplus" or vote_alpha(config) < 1.0 or config.votes is not None


def votes_file(data_file: str | Path, folder: str | None) -> Path:
    """The votes file of a data file: ``<folder>/<stem>_votes.npz``; folder None: the
    ``ferplus`` folder beside the data file's folder."""
    data_file = Path(data_file)
    where = Path(folder) if folder is not None else data_file.parent.parent / DEFAULT_FOLDER
    return where / f"{data_file.stem}_votes.npz"


def read_votes(path: Path, data_file: Path, n: int) -> np.ndarray:
    """(n, 10) int64 votes from ``path``, checked against the data file it belongs to
    (row count; ``csv_row`` equal where both files hold one). DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: no such votes file (FER+ votes for {data_file}; name the "
                        "folder holding <name>_votes.npz with --votes)")
    arrays, keys = read_npz(path, ("votes", "csv_row", "columns"))
    votes = arrays.get("votes")
    if votes is None:
        raise DataError(f"{path}: no 'votes' array (found: {', '.join(keys) or 'none'})")
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_COLUMNS):
        raise DataError(f"{path}: 'votes' has shape {votes.shape}, expected (N, "
                        f"{len(VOTE_COLUMNS)}): columns {', '.join(VOTE_COLUMNS)}")
    if votes.shape[0] != n:
        raise DataError(f"{path}: 'votes' has {votes.shape[0]} rows for the {n} images of "
                        f"{data_file} (a votes file must match its data file row for row)")
    if not np.issubdtype(votes.dtype, np.integer) or (votes < 0).any():
        raise DataError(f"{path}: 'votes' must be counts (non-negative integers), got "
                        f"dtype {votes.dtype}")
    columns = arrays.get("columns")
    if columns is not None and [str(c) for c in columns] != list(VOTE_COLUMNS):
        raise DataError(f"{path}: 'columns' are {', '.join(map(str, columns))}, expected "
                        f"{', '.join(VOTE_COLUMNS)}")
    _check_rows(path, data_file, arrays.get("csv_row"))
    return votes.astype(np.int64)


def _check_rows(path: Path, data_file: Path, csv_row: np.ndarray | None) -> None:
    """Both files name each face's fer2013.csv row: they must agree where both do."""
    if csv_row is None:
        return
    theirs = read_npz(data_file, ("csv_row",))[0].get("csv_row")
    if theirs is None or theirs.shape != csv_row.shape:
        return
    known = (theirs >= 0) & (csv_row >= 0)
    wrong = np.flatnonzero(known & (theirs != csv_row))
    if wrong.size:
        i = int(wrong[0])
        raise DataError(f"{path}: 'csv_row' {int(csv_row[i])} at row {i}, but {data_file} "
                        f"holds fer2013.csv row {int(theirs[i])} there (not aligned)")


def fer2013_vote_probs(votes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 7) float32: the votes (N, 10) for FER2013's 7 emotions, in its class order and
    normalised; the one-hot FER2013 label (N,) where a face has no such vote."""
    mapped = np.zeros((len(votes), len(CLASS_NAMES)), np.float64)
    for column, cls in _FER2013_OF_COLUMN.items():
        mapped[:, cls] = votes[:, column]
    total = mapped.sum(1, keepdims=True)
    one_hot = np.eye(len(CLASS_NAMES))[labels]
    probs = np.where(total > 0, mapped / np.maximum(total, 1), one_hot)
    return probs.astype(np.float32)


def ferplus_labels(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FER+ labels from votes (N, 10): (keep (N,) bool: a face with an emotion majority,
    labels (K,) int64 in 0..7 of the kept faces, vote_probs (K, 8) float32)."""
    majority = votes.argmax(1)
    keep = (votes.sum(1) > 0) & (majority < N_EMOTIONS)
    emotions = votes[keep, :N_EMOTIONS].astype(np.float64)
    probs = emotions / emotions.sum(1, keepdims=True)
    return keep, majority[keep].astype(np.int64), probs.astype(np.float32)


def _data_file(split: Split) -> Path:
    """The .npz file a split was read from (its source); ConfigError for any other data."""
    source = Path(split.source)
    if source.suffix.lower() != ".npz" or not source.is_file():
        raise ConfigError(f"FER+ votes need FER2013 .npz data (train.npz, public_test.npz, "
                          f"...), row for row as in fer2013.csv; got {split.source}")
    return source


def with_votes(split: Split, config: DataConfig, training: bool) -> tuple[Split, int]:
    """The split for ``config.labels``, with its votes: (split, faces left out).

    training: a split the model trains on (fer2013 labels then read votes only when the
    targets use them); test splits read votes for FER+ labels only.
    """
    if config.labels == "fer2013" and not training:
        return split, 0
    data_file = _data_file(split)
    votes = read_votes(votes_file(data_file, config.votes), data_file, len(split))
    if config.labels == "fer2013":
        if split.labels is None:
            raise DataError(f"{data_file}: no labels to train on")
        probs = fer2013_vote_probs(votes, split.labels)
        return dataclasses.replace(split, vote_probs=probs), 0
    keep, labels, probs = ferplus_labels(votes)
    images = np.ascontiguousarray(split.images[keep])
    return Split(images, labels, split.source, probs), int((~keep).sum())


def apply_votes(raw: RawDataset, config: DataConfig) -> RawDataset:
    """``raw`` with its splits relabelled / given votes for ``config`` (module doc), and the
    faces each split left out in ``left_out``. Unchanged when no votes are needed."""
    if not needs_votes(config):
        return raw
    if raw.train is None:
        raise DataError(f"{raw.source}: no training data")
    left_out: dict[str, int] = {}
    train, left_out["train"] = with_votes(raw.train, config, training=True)
    val = None
    if raw.val is not None:
        val, left_out["val"] = with_votes(raw.val, config, training=True)
    tests: dict[str, Split] = {}
    for name, split in raw.tests.items():
        tests[name], left_out[name] = with_votes(split, config, training=False)
    return dataclasses.replace(raw, train=train, val=val, tests=tests,
                               left_out={k: v for k, v in left_out.items() if v})


def soft_targets(labels: np.ndarray, vote_probs: np.ndarray, alpha: float) -> np.ndarray:
    """(N, C) float32 training targets ``alpha * one_hot(labels) + (1 - alpha) * vote_probs``.

    labels: (N,) int in 0..C-1; vote_probs: (N, C) rows summing to 1 (one-hot where a face
    has no votes, so such rows stay one-hot for any alpha).
    """
    one_hot = np.eye(vote_probs.shape[1], dtype=np.float64)[labels]
    return (alpha * one_hot + (1.0 - alpha) * vote_probs).astype(np.float32)
