"""Shared fixtures: small generated data, and the real FER2013 folder when FER2013_DIR is set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fer_ray.config import DataConfig
from fer_ray.data import FerData, RawDataset, prepare
from fer_ray.data.synthetic import make_synthetic


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    """The real FER2013 npz folder; tests using it skip when FER2013_DIR is unset or missing."""
    value = os.environ.get("FER2013_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("FER2013_DIR is not set (real-data test)")
    return Path(value)


@pytest.fixture(scope="session")
def small_data() -> FerData:
    """1,500 synthetic faces split 90/10: enough for a real, seconds-long training run."""
    raw = RawDataset(train=make_synthetic(1500, seed=0), source="synthetic")
    return prepare(raw, DataConfig(val_fraction=0.1), seed=0)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
