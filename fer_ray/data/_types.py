"""Plain containers for FER data: uint8 image arrays and int64 labels, nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fer_ray.errors import ConfigError

# FER2013's classes, in its label order: the default task, and the classes of every file
# format fer-ray reads labels from (CSV emotion ids, class folders, npz labels).
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
# FER+'s eight emotions, in the order of its vote columns (Barsoum et al. 2016).
FERPLUS_CLASS_NAMES: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger",
                                        "disgust", "fear", "contempt")
# The label sets a model can be trained on (``data.labels``) and their class names.
LABEL_SETS: dict[str, tuple[str, ...]] = {"fer2013": CLASS_NAMES, "ferplus": FERPLUS_CLASS_NAMES}
IMAGE_SIZE = 48

# FER2013 "Training" class counts: the built-in data copies these ratios.
FER2013_TRAIN_COUNTS: tuple[int, ...] = (3995, 436, 4097, 7215, 4830, 3171, 4965)


@dataclass(frozen=True)
class Split:
    """One set of images.

    images: (N, 48, 48) uint8, grayscale.
    labels: (N,) int64 class ids of the task (0..6 for FER2013), or None when the source has
        no labels (e.g. Kaggle test.csv).
    source: where it came from (a path, or a description such as "synthetic(seed=0)").
    vote_probs: (N, C) float32, rows summing to 1: the FER+ crowd's votes over the task's C
        classes, and the one-hot label where a face has none (``fer_ray.data.votes``); the
        training targets mix them with the labels (``data.vote_alpha``). None: no votes read.
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    vote_probs: np.ndarray | None = None

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
    left_out: faces left out per split by the task (FER+: unknown / not-a-face majorities).
    """

    train: Split | None
    val: Split | None = None
    tests: dict[str, Split] = field(default_factory=dict)
    converted: int = 0
    source: str = ""
    left_out: dict[str, int] = field(default_factory=dict)


def class_names(labels: str) -> tuple[str, ...]:
    """The class names of a label set (``data.labels``: "fer2013" or "ferplus")."""
    try:
        return LABEL_SETS[labels]
    except KeyError:
        raise ConfigError(f"data.labels: unknown label set {labels!r} (known: "
                          f"{', '.join(LABEL_SETS)})") from None
