"""Exact copies between image stacks (``fer_ray.data.duplicates``), and FER2013's known count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fer_ray.data.duplicates import copies_of, count_distinct


def test_finds_exactly_the_copied_rows_not_near_copies() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    test[1] = train[4]  # an exact copy
    test[3] = train[0]  # another
    test[2] = train[2]
    test[2, 10, 20] ^= 1  # a near-copy: one pixel differs by one grey level
    assert copies_of(test, train).tolist() == [False, True, False, True, False]
    assert count_distinct(np.stack([train[0], train[0], train[1]])) == 2


def test_stacks_of_other_shapes_share_no_copies() -> None:
    images = np.zeros((2, 48, 48), np.uint8)
    assert not copies_of(images, np.zeros((2, 24, 24), np.uint8)).any()


def test_fer2013_public_test_copies_agree_with_the_manifest(fer2013_dir: Path) -> None:
    manifest = json.loads((fer2013_dir / "manifest.json").read_text())
    train = np.load(fer2013_dir / "train.npz")["images"]
    test = np.load(fer2013_dir / "public_test.npz")["images"]
    copy = copies_of(test, train)
    shared = manifest["known_quirks"]["images_in_both_train_and_public_test"]
    assert count_distinct(test[copy]) == shared == 270
    assert copy.sum() == 280  # 10 of the shared images appear twice in PublicTest
