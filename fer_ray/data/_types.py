"""Plain containers for FER data: uint8 image arrays and int64 labels, nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48

# FER2013 "Training" class counts: the built-in data copies these ratios.
FER2013_TRAIN_COUNTS: tuple[int, ...] = (3995, 436, 4097, 7215, 4830, 3171, 4965)


@dataclass(frozen=True)
class Split:
    """One set of images.

    images: (N, 48, 48) uint8, grayscale.
    labels: (N,) int64 in 0..6, or None when the source has no labels (e.g. Kaggle test.csv).
    source: where it came from (a path, or a description such as "synthetic(seed=0)").
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class RawDataset:
    """What a loader found at a path, before any train/validation split.

    train: the training pool (split later into train/validation), or None.
    val: an explicit validation split shipped with the data (e.g. an image-folder "val" split).
    tests: held-out test splits by name ("public_test", "private_test", "test", ...);
        they are never used for any choice, only reported.
    converted: how many images were converted (colour to grayscale, or resized to 48x48).
    """

    train: Split | None
    val: Split | None = None
    tests: dict[str, Split] = field(default_factory=dict)
    converted: int = 0
    source: str = ""
