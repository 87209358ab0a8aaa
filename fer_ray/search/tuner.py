"""Run a search: Ray Tune trials, Optuna TPE proposals, ASHA early stopping.

The dataset goes into Ray's object store once (``tune.with_parameters``); Optuna samples
each trial's config define-by-run from the search space (so per-block parameters exist only
for the blocks drawn); ASHA stops weak trials on the epoch counter; every trial keeps its best
checkpoint by the metric (plus its latest, for retries).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_ray import storage
from fer_ray.config import TrainConfig
from fer_ray.data import FerData
from fer_ray.errors import ConfigError, DataError
from fer_ray.space import SearchSpace

# Every process of a local cluster must agree on auth, and nobody asked for usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from fer_ray.search.settings import SearchSettings, base_config, experiment_location
from fer_ray.trainable import TrialData, TrialSetup, fer_trainable


class _DropTempFileSyncRace(logging.Filter):
    """Ray's state sync can list a temp file that is renamed before it is copied; the next
    snapshot syncs the renamed file, so this one error (with a traceback) is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, FileNotFoundError) and "-tmp-" in str(exc))


class BudgetedLimiter(ConcurrencyLimiter):
    """A concurrency limit that also stops proposing trials once a wall-clock deadline passes.

    Running trials finish normally, so the search ends cleanly and the ensemble is still built.
    The deadline is absolute (epoch seconds): a resumed search keeps the original budget.
    """

    def __init__(self, searcher: Searcher, max_concurrent: int, deadline: float | None) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.deadline = deadline

    def suggest(self, trial_id: str) -> dict[Any, Any] | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's documented sentinel
        return super().suggest(trial_id)


class TrialPrinter(tune.Callback):
    """One line per finished trial instead of Ray's periodic status tables."""

    def __init__(self, num_samples: int, max_epochs: int, metric: str, mode: str) -> None:
        self.total, self.max_epochs, self.metric, self.done = num_samples, max_epochs, metric, 0
        self.sign = 1.0 if mode == "max" else -1.0
        self.best: dict[str, float] = {}

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if result.get("status_flag") == "ok" and self.metric in result:
            value = float(result[self.metric])
            old = self.best.get(trial.trial_id)
            if old is None or self.sign * value > self.sign * old:
                self.best[trial.trial_id] = value

    def _line(self, trial: Any, what: str) -> None:
        self.done += 1
        print(f"[{self.done:3d}/{self.total}] trial {trial.trial_id}: {what}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        result = trial.last_result or {}
        flag = result.get("status_flag", "ok")
        epochs = int(result.get("epoch", 0))
        if flag != "ok":
            self._line(trial, f"{flag} ({result.get('error', 'loss is not finite')})"[:200])
            return
        early = f", stopped early by ASHA at {epochs}/{self.max_epochs}" \
            if epochs < self.max_epochs else ""
        best = self.best.get(trial.trial_id, float("nan"))
        self._line(trial, f"best {self.metric} {best:.4f}, {epochs} epochs{early}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trial, "error (see results.parquet)")


@dataclass
class SearchRun:
    """What a finished search leaves for the next stages."""

    settings: SearchSettings
    space: SearchSpace
    base: TrainConfig
    data: FerData
    results: Any  # ray.tune.ResultGrid
    wall_seconds: float


def init_ray(settings: SearchSettings) -> None:
    """Start a local Ray (dashboard off unless asked) or join the cluster at --address."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.execution.experiment_state").addFilter(_DropTempFileSyncRace())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module="ray")
    if ray.is_initialized():
        return
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                              "include_dashboard": settings.dashboard}
    if settings.address:
        ray.init(address=settings.address, **common)
    else:
        ray.init(**common)


def _max_concurrent(settings: SearchSettings) -> int:
    """Trials that fit at once on the cluster (or --max-concurrent, if smaller)."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if settings.gpus_per_trial > 0 and gpus <= 0:
        raise ConfigError(f"--gpus-per-trial {settings.gpus_per_trial}: the Ray cluster has "
                          "no GPU (use --gpus-per-trial 0 to train on CPUs)")
    fit = math.floor(cpus / settings.cpus_per_trial + 1e-9)
    if settings.gpus_per_trial > 0:
        fit = min(fit, math.floor(gpus / settings.gpus_per_trial + 1e-9))
    if fit < 1:
        raise ConfigError(f"--cpus-per-trial {settings.cpus_per_trial}: the Ray cluster has "
                          f"only {cpus:g} CPUs")
    return min(fit, settings.max_concurrent) if settings.max_concurrent else fit


def build_trainable(settings: SearchSettings, space: SearchSpace, base: TrainConfig,
                    data: FerData, fault: tuple[int, str] = (0, "once")) -> Any:
    """The trainable with data in the object store and per-trial resources attached."""
    assert data.train.labels is not None and data.val.labels is not None
    arrays = TrialData(data.train.images, data.train.labels, data.val.images, data.val.labels)
    setup = TrialSetup(space=space, base=base, max_epochs=settings.max_epochs,
                       cpus_per_trial=settings.cpus_per_trial, fail_at_epoch=fault[0],
                       fail_mode=fault[1])
    trainable = tune.with_parameters(fer_trainable, data=arrays, setup=setup)
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial,
                                           "gpu": settings.gpus_per_trial})


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def run_config(settings: SearchSettings) -> tune.RunConfig:
    return tune.RunConfig(
        name=settings.name,
        storage_path=settings.storage if storage.is_uri(settings.storage)
        else str(Path(experiment_location(settings)).parent),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=settings.metric,
            checkpoint_score_order=settings.mode),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        # Ray stages experiment state on the driver and syncs it to storage; a short period
        # keeps what a killed driver can lose (the last few seconds of state) small.
        sync_config=tune.SyncConfig(sync_period=5),
        callbacks=[TrialPrinter(settings.num_samples, settings.max_epochs, settings.metric,
                                settings.mode)],
        verbose=0,
    )


def run_search(settings: SearchSettings, space: SearchSpace, data: FerData,
               resume: bool = False, fault: tuple[int, str] = (0, "once")) -> SearchRun:
    """Run (or resume) the search described by ``settings`` on ``data``.

    fault: (epoch, "once"|"always") fault injection for tests: each trial raises after that
    epoch, on its first attempt or on every attempt.
    """
    start = time.time()
    base = base_config(settings)
    init_ray(settings)
    max_concurrent = _max_concurrent(settings)
    trainable = build_trainable(settings, space, base, data, fault)
    path = experiment_location(settings)

    if resume:
        if not tune.Tuner.can_restore(path):
            raise DataError(f"{path}: no Ray Tune experiment state to resume")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        searcher = OptunaSearch(space=space.sample, metric=settings.metric,
                                mode=settings.mode, seed=settings.seed)
        deadline = start + 60 * settings.time_budget if settings.time_budget else None
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=settings.metric, mode=settings.mode,
                search_alg=BudgetedLimiter(searcher, max_concurrent, deadline),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=settings.max_epochs,
                                        grace_period=settings.grace_period,
                                        reduction_factor=settings.reduction_factor),
                num_samples=settings.num_samples,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=run_config(settings),
        )
    results = tuner.fit()
    return SearchRun(settings, space, base, data, results, time.time() - start)
