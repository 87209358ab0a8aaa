"""The settings of one search: every CLI flag, resolved, and saved in ``search.json``."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_ray import storage
from fer_ray.config import TrainConfig, from_dict, merge
from fer_ray.data import FerData, load_data
from fer_ray.data.loaders import read_split
from fer_ray.errors import ConfigError, DataError

SEARCH_JSON = "search.json"
RESULTS_PARQUET = "results.parquet"


@dataclass(frozen=True)
class SearchSettings:
    """Defaults: built-in data, the small space, sized for about 3 minutes on 2 CPU cores."""

    data: str | None = None
    test: str | None = None
    space: str = "small"
    num_samples: int = 16
    max_epochs: int = 6
    grace_period: int = 1
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many trials as the cluster's resources allow
    storage: str = "runs"
    name: str = ""
    address: str | None = None
    top_k: int = 5
    time_budget: float | None = None  # minutes
    seed: int = 0
    val_fraction: float = 0.1
    subsample: int | None = None
    synthetic_size: int = 6000
    metric: str = "val_acc"
    mode: str = "max"
    max_failures: int = 2
    dashboard: bool = False

    def check(self) -> SearchSettings:
        """Refuse values that would only fail later, inside Ray."""
        positive = {"num_samples": self.num_samples, "max_epochs": self.max_epochs,
                    "grace_period": self.grace_period, "top_k": self.top_k}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')}: {value} must be at least 1")
        if self.grace_period > self.max_epochs:
            raise ConfigError(f"--grace-period: {self.grace_period} exceeds --max-epochs "
                              f"{self.max_epochs}")
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor: {self.reduction_factor} must be >= 2")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget: {self.time_budget} minutes must be positive")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode: {self.mode!r} must be 'max' or 'min'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def experiment_location(settings: SearchSettings) -> str:
    """``<storage>/<name>``: an absolute local path (as Ray wants) or a URI."""
    if storage.is_uri(settings.storage):
        return storage.join(settings.storage, settings.name)
    return str(Path(settings.storage).expanduser().resolve() / settings.name)


def read_search_json(location: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved record of an experiment; DataError when ``location`` is not one."""
    path = storage.join(location, SEARCH_JSON)
    if not storage.exists(path):
        raise DataError(f"{location}: not a fer-ray experiment (no {SEARCH_JSON})")
    try:
        return dict(json.loads(storage.read_bytes(path)))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


def read_results(location: str | os.PathLike[str]) -> pd.DataFrame:
    """An experiment's results.parquet (one row per trial, best first)."""
    path = storage.join(location, RESULTS_PARQUET)
    if not storage.exists(path):
        raise DataError(f"{location}: no {RESULTS_PARQUET} (did the search finish?)")
    return pd.read_parquet(io.BytesIO(storage.read_bytes(path)))


def settings_from_record(record: dict[str, Any], location: str | os.PathLike[str]
                         ) -> SearchSettings:
    try:
        return from_dict(SearchSettings, record["settings"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise DataError(f"{storage.join(location, SEARCH_JSON)}: bad settings ({exc})") from None


def base_config(settings: SearchSettings) -> TrainConfig:
    """What every trial starts from: the search's data, seed and epoch budget."""
    return merge(TrainConfig(), {"epochs": settings.max_epochs, "seed": settings.seed,
                                 "data": {"path": settings.data,
                                          "val_fraction": settings.val_fraction,
                                          "subsample": settings.subsample,
                                          "synthetic_size": settings.synthetic_size}})


def load_search_data(settings: SearchSettings) -> FerData:
    """The data of a search: --data (or built-in faces) split into train/val, plus --test."""
    data = load_data(base_config(settings).data, seed=settings.seed)
    if settings.test:
        test = read_split(settings.test, "test")
        # --test repeating a split that --data already holds (e.g. public_test.npz) is shown once.
        if not any(np.array_equal(test.images, t.images) for t in data.tests.values()):
            data.tests["test"] = test
    return data
