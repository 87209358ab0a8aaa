"""The experiment contract: what a search writes and how everything after it reads it.

A search writes, under ``<storage>/<name>/``: ``search.json`` (its settings, resolved, and its
outcome), ``results.parquet`` (one row per trial, best first, with a ``status`` from
``TrialStatus``) and ``trial_<id>/checkpoint_<n>/`` folders holding ``model.safetensors``,
``config.json``, ``val_probs.npy`` and ``val_labels.npy`` (``models.io``). This module
knows those names, the usable-trial rule and how to reload the search's data. It does not
import Ray: the ensemble, the report and predict read finished experiments through it alone.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from fer_ray import storage
from fer_ray.config import (
    MAX_ENSEMBLE_MEMBERS,
    MAX_SYNTHETIC,
    TrainConfig,
    check_config,
    from_dict,
    merge,
)
from fer_ray.data import FerData, add_test_split, load_data
from fer_ray.errors import ConfigError, DataError, reason
from fer_ray.paths import check_name, require_file, shown

SEARCH_JSON = "search.json"
RESULTS_PARQUET = "results.parquet"
TRIAL_PREFIX = "trial_"  # Ray's trial folders, named so by the search's dirname creator


class TrialStatus(str, Enum):
    """A trial's outcome: results.parquet's ``status`` column, and the ``status_flag`` of the
    terminal report of a trial that cannot go on. On disk the plain string (``.value``); a
    member equals, hashes and prints as its value, so read-back columns compare with it."""

    COMPLETED = "completed"  # ran its planned epochs
    EARLY_STOPPED = "early_stopped"  # stopped by ASHA
    OUT_OF_TIME = "out_of_time"  # cut by the deadline; its best checkpoint still counts
    DIVERGED = "diverged"  # non-finite or exploding loss
    INVALID = "invalid"  # a config the model cannot be built from
    OOM = "oom"  # CUDA out of memory
    ERROR = "error"  # any other exception

    def __str__(self) -> str:  # f-strings and messages show the value, as on disk
        return self.value


# The status_flag of every epoch a trial reports (a terminal report carries a TrialStatus).
EPOCH_OK = "ok"

# Only these may enter an ensemble or be reported as the best model.
USABLE = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.OUT_OF_TIME)
DEFAULT_TRIALS = 16  # without --num-samples and without a time budget
DEFAULT_EPOCHS = 6  # epochs per trial without --max-epochs and without a time budget
BUDGET_EPOCH_CAP = 100  # with a budget, trials train as many epochs as their share allows


@dataclass(frozen=True)
class SearchSettings:
    """Defaults: built-in data, the small space, sized for about 3 minutes on 2 CPU cores.

    Without a time budget: num_samples trials (default 16) of max_epochs (default 6), ASHA
    on epochs with grace_period (default a quarter of max_epochs, so ASHA never judges on a
    single noisy epoch of a long schedule). With a budget: trials keep coming until the
    deadline; each gets a time share (``generations``) and plans its epochs (at most
    max_epochs, default 100) to end within it; ASHA compares trials at equal time spent.
    """

    data: str | None = None
    test: str | None = None
    space: str = "small"
    num_samples: int | None = None
    max_epochs: int | None = None
    grace_period: int | None = None
    reduction_factor: int = 3
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many trials as the cluster's resources allow
    storage: str = "runs"
    name: str = ""
    address: str | None = None
    top_k: int = 5
    time_budget: float | None = None  # minutes, the whole run: search, ensemble and scoring
    warm_start: str | None = None  # an earlier experiment whose finished trials seed TPE
    progress_every: float = 30.0  # seconds between status lines during the search
    seed: int = 0
    val_fraction: float = 0.1
    subsample: int | None = None
    synthetic_size: int = 2000  # built-in faces (+ a fifth as many held out for the test)
    labels: str = "fer2013"  # data.labels: fer2013 or ferplus
    votes: str | None = None  # data.votes: the FER+ votes folder
    vote_alpha: float | None = None  # data.vote_alpha (a space may draw it per trial)
    metric: str = "val_acc"
    mode: str = "max"
    max_failures: int = 2
    dashboard: bool = False
    device: str = "auto"  # the driver's work after the search: scoring, the ensemble
    # Every trial's training arithmetic (TrainConfig.precision): "fp32" stands in for a CPU
    # without native bf16 on one that has it.
    precision: str = "auto"

    def trial_limit(self) -> int:
        """Trials to run, for Ray Tune: -1 = keep proposing until the deadline."""
        if self.num_samples is not None:
            return self.num_samples
        return -1 if self.time_budget else DEFAULT_TRIALS

    def epochs_cap(self) -> int:
        """Epochs a trial trains at most."""
        if self.max_epochs is not None:
            return self.max_epochs
        return BUDGET_EPOCH_CAP if self.time_budget else DEFAULT_EPOCHS

    def grace(self) -> int:
        """ASHA's grace period in epochs (searches without a time budget)."""
        return self.grace_period or max(1, round(self.epochs_cap() / 4))

    def generations(self, slots: int = 1) -> int:
        """With a budget: how many trials follow each other in one of ``slots`` slots, each
        taking that share of the search's time (unless stopped early or done sooner).

        With --num-samples, as many as that count needs: ceil(num_samples / slots).
        Otherwise 1 below 90 minutes, 2 from 90, 3 from 150, 4 from 210. A share under
        about 40 minutes leaves even the known-good recipes under-trained on CPUs (measured
        at 45 minutes on 2 cores: BENCHMARKS.md, "Quality"); on GPUs trials end at
        --max-epochs sooner and the next ones start, so the share is only an upper bound."""
        if self.num_samples is not None:
            return max(math.ceil(self.num_samples / max(slots, 1)), 1)
        minutes = self.time_budget or 0.0
        return min(max(int(minutes / 60 + 0.5), 1), 4)

    def check(self) -> SearchSettings:
        """Refuse values that would only fail later, inside Ray."""
        positive = {"num_samples": self.num_samples, "max_epochs": self.max_epochs,
                    "grace_period": self.grace_period, "top_k": self.top_k,
                    "subsample": self.subsample, "synthetic_size": self.synthetic_size}
        for key, value in positive.items():
            if value is not None and value < 1:
                raise ConfigError(f"--{key.replace('_', '-')}: {value} must be at least 1")
        self._check_ranges()
        if self.grace() > self.epochs_cap():
            raise ConfigError(f"--grace-period: {self.grace_period} exceeds --max-epochs "
                              f"{self.epochs_cap()}")
        if self.progress_every <= 0:
            raise ConfigError(f"progress_every: {self.progress_every} must be positive")
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor: {self.reduction_factor} must be >= 2")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget: {self.time_budget} minutes must be positive")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision: {self.precision!r} is not auto, bf16 or fp32")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode: {self.mode!r} must be 'max' or 'min'")
        check_config(base_config(self), {"data.vote_alpha": "--vote-alpha"})
        return self

    def _check_ranges(self) -> None:
        """Counts, fractions, seeds, names: the flags whose bad values Ray or numpy would
        turn into a traceback, or into a search that never ends (max_failures -1)."""
        floats = {"cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial,
                  "time_budget": self.time_budget, "progress_every": self.progress_every,
                  "val_fraction": self.val_fraction}
        for key, number in floats.items():
            if number is not None and not math.isfinite(number):
                raise ConfigError(f"--{key.replace('_', '-')}: {number} is not a finite number")
        for key, count in {"max_concurrent": self.max_concurrent,
                           "max_failures": self.max_failures}.items():
            if count < 0:
                raise ConfigError(f"--{key.replace('_', '-')}: {count} must be 0 or more")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed: {self.seed} must be between 0 and 2**32 - 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction: {self.val_fraction} must be between 0 and 1")
        if self.top_k > MAX_ENSEMBLE_MEMBERS:
            raise ConfigError(f"--top-k: {self.top_k} is more than the {MAX_ENSEMBLE_MEMBERS} "
                              "members an ensemble may have")
        if self.synthetic_size > MAX_SYNTHETIC:
            raise ConfigError(f"--synthetic-size: {self.synthetic_size} is more than the "
                              f"{MAX_SYNTHETIC:,} faces fer-ray generates")
        if not self.storage:
            raise ConfigError("--storage: empty (give a folder or a URI)")
        space_path = "/" in self.space or self.space.endswith((".yaml", ".yml"))
        if space_path and os.path.exists(self.space) and not os.path.isfile(self.space):
            require_file(self.space)  # a named pipe or a folder: refused, never read
        warm = self.warm_start
        if warm is not None and not storage.is_uri(warm) and not Path(warm).is_dir():
            raise ConfigError(f"--warm-start {warm}: no such experiment folder")
        if self.name:
            check_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def trials_that_fit(settings: SearchSettings, cpus: float, gpus: float, where: str) -> int:
    """Trials that run at once on ``cpus``/``gpus`` (``where``: "the Ray cluster", "this
    machine"), at most --max-concurrent when set; ConfigError when not even one fits."""
    if settings.gpus_per_trial > 0 and gpus <= 0:
        raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial}: {where} has "
                          "no GPU (use --gpus-per-trial 0 to train on CPUs)")
    fit = math.floor(cpus / settings.cpus_per_trial + 1e-9)
    if settings.gpus_per_trial > 0:
        if math.floor(gpus / settings.gpus_per_trial + 1e-9) < 1:
            raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial}: {where} has "
                              f"only {gpus:g} GPUs")
        fit = min(fit, math.floor(gpus / settings.gpus_per_trial + 1e-9))
    if fit < 1:
        raise ConfigError(f"--cpus-per-trial {settings.cpus_per_trial}: {where} has "
                          f"only {cpus:g} CPUs")
    return min(fit, settings.max_concurrent) if settings.max_concurrent else fit


def experiment_location(settings: SearchSettings) -> str:
    """``<storage>/<name>``: an absolute local path (as Ray wants) or a URI.

    The name must be a plain name (``paths.check_name``), so the experiment stays inside
    ``--storage``.
    """
    check_name(settings.name)
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
    try:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(path)))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: unreadable ({reason(exc)})") from None


def checkpoint_location(experiment: str | os.PathLike[str], trial_id: str, recorded: str
                        ) -> str:
    """Where a checkpoint that results.parquet records lies: always inside ``experiment``, at
    ``trial_<id>/checkpoint_<n>`` (Ray's layout), whatever folder the recorded path names, so
    a moved experiment still finds its checkpoints and a tampered table cannot point a
    reader outside the experiment. DataError for ids or names that are not plain."""
    name = str(recorded).rstrip("/").rsplit("/", 1)[-1]
    if not (name.startswith("checkpoint_") and name.removeprefix("checkpoint_").isdigit()):
        raise DataError(f"{experiment}: results.parquet records checkpoint {shown(recorded)!r}, "
                        "not a trial checkpoint")
    try:
        check_name(str(trial_id), "trial id")
    except ConfigError as exc:
        raise DataError(f"{experiment}: results.parquet: {exc}") from None
    return storage.join(trial_dir(experiment, trial_id), name)


def trial_dir(experiment: str | os.PathLike[str], trial_id: str) -> str:
    """A trial's folder (Ray's ``trial_<id>`` layout, set by the search's dirname creator)."""
    return storage.join(experiment, f"{TRIAL_PREFIX}{trial_id}")


def settings_from_record(record: dict[str, Any], location: str | os.PathLike[str]
                         ) -> SearchSettings:
    try:
        return from_dict(SearchSettings, record["settings"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise DataError(f"{storage.join(location, SEARCH_JSON)}: bad settings ({exc})") from None


def base_config(settings: SearchSettings) -> TrainConfig:
    """What every trial starts from: the search's data, seed and epoch budget."""
    return merge(TrainConfig(), {"epochs": settings.epochs_cap(), "seed": settings.seed,
                                 "precision": settings.precision,
                                 "data": {"path": settings.data,
                                          "val_fraction": settings.val_fraction,
                                          "subsample": settings.subsample,
                                          "synthetic_size": settings.synthetic_size,
                                          "labels": settings.labels, "votes": settings.votes,
                                          "vote_alpha": settings.vote_alpha}})


def load_search_data(settings: SearchSettings) -> FerData:
    """The data of a search: --data (or built-in faces) split into train/val, plus --test."""
    config = base_config(settings).data
    data = load_data(config, seed=settings.seed)
    if settings.test:
        add_test_split(data, settings.test, config=config)
    return data


# The searcher adds its trial number to every trial's params: the trial's seed offset.
TRIAL_NUMBER = "trial_number"


def split_trial_number(params: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A trial's sampled params without the searcher's trial number, and that number."""
    rest = {k: v for k, v in params.items() if k != TRIAL_NUMBER}
    return rest, int(params.get(TRIAL_NUMBER, 0))


def trial_seed(search_seed: int, trial_number: int) -> int:
    """The search's seed plus the trial's number (0, 1, 2, ... in proposal order).

    Trials with the same architecture must not share initial weights and batch order: an
    ensemble of copies is no ensemble. Reproducible, as the proposal order is.
    """
    return search_seed + trial_number
