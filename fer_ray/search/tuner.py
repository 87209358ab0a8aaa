"""Run a search: Ray Tune trials, Optuna TPE proposals, ASHA early stopping.

The dataset goes into Ray's object store once (``tune.with_parameters``); Optuna samples
each trial's config define-by-run from the search space (so per-block parameters exist only
for the blocks drawn); ASHA stops weak trials on the epoch counter; every trial keeps its best
checkpoint by the metric (plus its latest, for retries).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_ray import storage
from fer_ray.config import TrainConfig
from fer_ray.data import FerData
from fer_ray.errors import DataError
from fer_ray.space import SearchSpace

# Every process of a local cluster must agree on auth, and nobody asked for usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# A reused actor (reuse_actors=True) waits this long for the previous trial's thread to end
# (it frees that trial's model and device-resident data); Ray's 2 s was too short on a busy
# 2-core machine, and the next trial then failed ("Trainable runner reuse requires
# reset_config() ..."). Workers of a local cluster inherit it from the driver.
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from fer_ray.experiment import (
    EPOCH_OK,
    TRIAL_PREFIX,
    SearchSettings,
    base_config,
    experiment_location,
    trials_that_fit,
)
from fer_ray.search.proposals import WarmStart, build_searcher, warm_start
from fer_ray.train.loop import pixel_stats
from fer_ray.trainable import TrialData, TrialSetup, fer_trainable


class _DropTempFileSyncRace(logging.Filter):
    """Ray's state sync can list a temp file that is renamed before it is copied; the next
    snapshot syncs the renamed file, so this one error (with a traceback) is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, FileNotFoundError) and "-tmp-" in str(exc))


class BudgetedLimiter(ConcurrencyLimiter):
    """A concurrency limit that also stops proposing trials when too little time is left.

    ``stop_at`` is absolute (epoch seconds; a resumed search keeps it). A new trial is only
    started while it can still get a useful share of the time: ``MIN_SHARE`` of a trial's
    time share (``trial_seconds``), and at least ``MIN_EPOCHS`` of the fastest epoch seen so
    far. Time comes from ``clock`` (a fake one in tests).
    """

    MIN_EPOCHS = 2
    # A trial started with less than a quarter of a slot's time trains a few epochs that the
    # ensemble ignores (3-epoch trials at 53-57 % next to 30-epoch members at 67 %, measured
    # at 45 minutes on 2 cores); the members already running use that time better.
    MIN_SHARE = 0.25

    def __init__(self, searcher: Searcher, max_concurrent: int, stop_at: float | None,
                 trial_seconds: float | None = None, clock: Callable[[], float] = time.time
                 ) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.deadline, self.trial_seconds, self.clock = stop_at, trial_seconds, clock
        self.fastest_epoch = 0.0

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        seconds = float(result.get("time_this_iter_s") or 0.0)
        if result.get("status_flag") == EPOCH_OK and seconds > 0:
            self.fastest_epoch = min(self.fastest_epoch or seconds, seconds)
        super().on_trial_result(trial_id, result)

    def seconds_needed(self) -> float:
        """The least time before the deadline at which a new trial is still started."""
        return max(self.MIN_EPOCHS * self.fastest_epoch,
                   self.MIN_SHARE * (self.trial_seconds or 0.0))

    def suggest(self, trial_id: str) -> dict[Any, Any] | None:
        if self.deadline is not None and \
                self.deadline - self.clock() <= self.seconds_needed():
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's documented sentinel
        return super().suggest(trial_id)


class DeadlineStopper(tune.Stopper):
    """Stops every trial at ``stop_at`` (epoch seconds); their checkpoints so far still count.

    Trials plan their schedules to end before it (``fer_trainable``), so this only catches
    epochs that ran slower than planned.
    """

    def __init__(self, stop_at: float | None, clock: Callable[[], float] = time.time) -> None:
        self.stop_at, self.clock = stop_at, clock

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stop_at is not None and self.clock() >= self.stop_at


class SearchPrinter(tune.Callback):
    """One line per finished trial, and a status line every ``every`` seconds.

    Also remembers which trials the deadline cut short (``out_of_time``).
    """

    def __init__(self, settings: SearchSettings, started: float, deadline: float | None,
                 stop_at: float | None) -> None:
        self.total, self.max_epochs = settings.trial_limit(), settings.epochs_cap()
        self.metric, self.every = settings.metric, settings.progress_every
        self.sign = 1.0 if settings.mode == "max" else -1.0
        self.started, self.deadline, self.stop_at = started, deadline, stop_at
        self.best: dict[str, tuple[float, int]] = {}  # trial -> (best metric, its epoch)
        self.done, self.asha_stopped, self.last_line = 0, 0, time.time()
        self.out_of_time: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if result.get("status_flag") == EPOCH_OK and self.metric in result:
            value = float(result[self.metric])
            old = self.best.get(trial.trial_id)
            if old is None or self.sign * value > self.sign * old[0]:
                self.best[trial.trial_id] = (value, int(result.get("epoch", 0)))

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.time()
        if now - self.last_line >= self.every:
            self.last_line = now
            print(self.status_line(trials, now), flush=True)

    def status_line(self, trials: list[Any], now: float) -> str:
        """``[ 12:30 / 45:00] 2 running, 7 done (4 stopped early), best val_acc ...``."""
        elapsed = _clock(now - self.started)
        budget = f" / {_clock(self.deadline - self.started)}" if self.deadline else ""
        running = sum(t.status == "RUNNING" for t in trials)
        best = ""
        if self.best:
            trial_id, (value, epoch) = max(self.best.items(), key=lambda kv: self.sign * kv[1][0])
            best = f", best {self.metric} {value:.4f} (trial {trial_id}, epoch {epoch})"
        return (f"[{elapsed}{budget}] {running} running, {self.done} done "
                f"({self.asha_stopped} stopped early){best}")

    def _line(self, trial: Any, what: str) -> None:
        self.done += 1
        total = "" if self.total < 0 else f"/{self.total}"
        print(f"[{self.done:3d}{total}] trial {trial.trial_id}: {what}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        result = trial.last_result or {}
        flag = result.get("status_flag", EPOCH_OK)
        epochs = int(result.get("epoch", 0))
        if flag != EPOCH_OK:
            self._line(trial, f"{flag} ({result.get('error', 'loss is not finite')})"[:200])
            return
        planned = int(result.get("planned_epochs", self.max_epochs))
        early = ""
        if epochs < planned and self.stop_at is not None and time.time() >= self.stop_at:
            self.out_of_time.add(trial.trial_id)
            early = f", stopped at the deadline at {epochs}/{planned}"
        elif epochs < planned:
            self.asha_stopped += 1
            early = f", stopped early by ASHA at {epochs}/{planned}"
        elif planned < self.max_epochs:
            early = " (as many as its time share allowed)"
        best = self.best.get(trial.trial_id, (float("nan"), 0))[0]
        self._line(trial, f"best {self.metric} {best:.4f}, {epochs} epochs{early}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trial, "error (see results.parquet)")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(int(seconds), 0), 60)
    return f"{minutes:3d}:{secs:02d}"


@dataclass(frozen=True)
class Timing:
    """Absolute times (epoch seconds) of a run: when it started, when its budget ends
    (``deadline``, None without a budget) and when its trials must stop (``stop_at``: the
    deadline minus what the ensemble and the test scoring need); and the seconds each trial
    may take (``trial_seconds``: the search's time over ``SearchSettings.generations``)."""

    started: float
    deadline: float | None = None
    stop_at: float | None = None
    trial_seconds: float | None = None  # each trial's share of the search's time


@dataclass
class SearchRun:
    """What a finished search leaves for the next stages."""

    settings: SearchSettings
    space: SearchSpace
    base: TrainConfig
    data: FerData
    results: Any  # ray.tune.ResultGrid
    wall_seconds: float
    warm: WarmStart | None = None
    out_of_time: set[str] = field(default_factory=set)  # trials the deadline cut short


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
    return trials_that_fit(settings, resources.get("CPU", 0.0), resources.get("GPU", 0.0),
                           "the Ray cluster")


def build_trainable(settings: SearchSettings, space: SearchSpace, base: TrainConfig,
                    data: FerData, timing: Timing | None = None, early_stopping: bool = True
                    ) -> Any:
    """The trainable with data in the object store and per-trial resources attached."""
    assert data.train.labels is not None and data.val.labels is not None
    arrays = TrialData(data.train.images, data.train.labels, data.val.images, data.val.labels,
                       pixel_stats(data.train.images), data.train.vote_probs)
    setup = TrialSetup(space=space, base=base, max_epochs=settings.epochs_cap(),
                       cpus_per_trial=settings.cpus_per_trial,
                       gpus_per_trial=settings.gpus_per_trial,
                       stop_at=timing.stop_at if timing else None,
                       trial_seconds=timing.trial_seconds if timing else None,
                       early_stopping=early_stopping)
    trainable = tune.with_parameters(fer_trainable, data=arrays, setup=setup)
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial,
                                           "gpu": settings.gpus_per_trial})


def _trial_dirname(trial: Any) -> str:
    return f"{TRIAL_PREFIX}{trial.trial_id}"


def run_config(settings: SearchSettings, printer: SearchPrinter | None = None,
               stop_at: float | None = None) -> tune.RunConfig:
    """The search's RunConfig: storage, checkpoints, retries, the deadline, the printer."""
    printer = printer or SearchPrinter(settings, time.time(), None, stop_at)
    return tune.RunConfig(
        name=settings.name,
        storage_path=settings.storage if storage.is_uri(settings.storage)
        else str(Path(experiment_location(settings)).parent),
        # The best epoch's checkpoint; Ray also keeps the latest (for retries), and both are
        # ensemble candidates.
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=settings.metric,
            checkpoint_score_order=settings.mode),
        stop=DeadlineStopper(stop_at),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        # Ray stages experiment state on the driver and syncs it to storage; a short period
        # keeps what a killed driver can lose (the last few seconds of state) small.
        sync_config=tune.SyncConfig(sync_period=5),
        callbacks=[printer],
        verbose=0,
    )


# Trials of a budgeted search (slots x generations) below which early stopping is off.
MIN_ASHA_POPULATION = 8


def uses_asha(settings: SearchSettings, timing: Timing, slots: int) -> bool:
    """Whether the search stops trials early: always, except a budgeted search that runs
    fewer than MIN_ASHA_POPULATION trials in all (``scheduler`` says why)."""
    return not (timing.trial_seconds
                and slots * settings.generations(slots) < MIN_ASHA_POPULATION)


def scheduler(settings: SearchSettings, timing: Timing, slots: int) -> TrialScheduler:
    """ASHA on epochs; with a time budget, ASHA on seconds spent, so that trials are compared
    at equal cost (a cheap net's fourth epoch against a wide net's second) and at the same
    point of schedules that all end with their time share.

    A budget that runs fewer than MIN_ASHA_POPULATION full trials (2 CPU slots for 45
    minutes: 2) gets no early stopping: its rungs hold only the first trials (the space's
    points, hand-picked recipes), every proposal after them was stopped against those on
    2 cores, and the ensemble lost its members (measured in BENCHMARKS.md).
    """
    share = f"each trial up to {timing.trial_seconds / 60:.1f} min and " \
        if timing.trial_seconds else ""
    print(f"{slots} trial(s) at a time, {share}{settings.epochs_cap()} epochs; ", end="")
    if not uses_asha(settings, timing, slots):
        print(f"no early stopping (fewer than {MIN_ASHA_POPULATION} trials fit the budget)",
              flush=True)
        return FIFOScheduler()
    if timing.trial_seconds:
        print(f"ASHA on time: rungs from {timing.trial_seconds / 240:.1f} min, reduction "
              f"{settings.reduction_factor}", flush=True)
        # Whole seconds: ASHA's signature wants ints (its rung arithmetic takes any number).
        return ASHAScheduler(time_attr="time_total_s", max_t=round(1.25 * timing.trial_seconds),
                             grace_period=max(round(timing.trial_seconds / 4), 1),
                             reduction_factor=settings.reduction_factor)
    print(f"ASHA on epochs: grace {settings.grace()}, reduction {settings.reduction_factor}",
          flush=True)
    return ASHAScheduler(time_attr="epoch", max_t=settings.epochs_cap(),
                         grace_period=settings.grace(),
                         reduction_factor=settings.reduction_factor)


def run_search(settings: SearchSettings, space: SearchSpace, data: FerData, timing: Timing,
               warm: WarmStart | None = None, resume: bool = False) -> SearchRun:
    """Run (or resume) the search described by ``settings`` on ``data``.

    timing: the run's start and deadlines (a resumed run passes the original ones).
    warm: what the searcher starts from (default: the space's points).
    """
    start = time.time()
    base = base_config(settings)
    if warm is None and not resume:
        warm = warm_start(settings, space, base)
    init_ray(settings)
    max_concurrent = _max_concurrent(settings)
    trainable = build_trainable(settings, space, base, data, timing,
                                early_stopping=uses_asha(settings, timing, max_concurrent))
    path = experiment_location(settings)
    printer = SearchPrinter(settings, timing.started, timing.deadline, timing.stop_at)

    if resume:
        if not tune.Tuner.can_restore(path):
            raise DataError(f"{path}: no Ray Tune experiment state to resume")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        assert warm is not None
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=settings.metric, mode=settings.mode,
                search_alg=BudgetedLimiter(build_searcher(settings, space, warm),
                                           max_concurrent, timing.stop_at,
                                           timing.trial_seconds),
                scheduler=scheduler(settings, timing, max_concurrent),
                num_samples=settings.trial_limit(),
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=run_config(settings, printer, timing.stop_at),
        )
    results = tuner.fit()
    return SearchRun(settings, space, base, data, results, time.time() - start, warm,
                     printer.out_of_time)
