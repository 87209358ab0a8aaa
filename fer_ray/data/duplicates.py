"""Exact pixel copies between two image stacks: which test faces are also training faces.

FER2013's PublicTest shares 270 images byte for byte with Training (``manifest.json``,
``known_quirks.images_in_both_train_and_public_test``); 10 of them appear twice in PublicTest,
so 280 of its 3,589 faces are copies. Accuracy on them rewards memory as much as recognition,
so benchmarks also report accuracy without them.
Copies are found by hashing each image's bytes (sha256), so near-copies (one pixel off) are
not copies. No torch.
"""

from __future__ import annotations

import hashlib

import numpy as np


def image_digests(images: np.ndarray) -> list[bytes]:
    """sha256 digest of each image's bytes; images: (N, H, W) (uint8 for FER faces)."""
    stack = np.ascontiguousarray(images)
    return [hashlib.sha256(image.tobytes()).digest() for image in stack]


def copies_of(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) bool: which of ``images`` (N, H, W) have an exact copy in ``reference`` (M, H, W).

    A copy has the same pixel values in every position; stacks of different image shapes
    or dtypes share no copies.
    """
    images, reference = np.asarray(images), np.asarray(reference)
    if images.shape[1:] != reference.shape[1:] or images.dtype != reference.dtype:
        return np.zeros(len(images), dtype=bool)
    known = set(image_digests(reference))
    return np.array([d in known for d in image_digests(images)], dtype=bool)


def count_distinct(images: np.ndarray) -> int:
    """How many different images (N, H, W) holds: exact copies count once."""
    return len(set(image_digests(images)))
