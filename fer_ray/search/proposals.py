"""What the searcher proposes: Optuna TPE, started from known-good configurations.

A search does not start cold. Its first trials are the space's ``points`` (recipes known to
work, e.g. the seed network for ``paper``), then, with ``--warm-start EXPERIMENT``, the best
configurations of that earlier experiment; and the earlier experiment's finished trials are
told to TPE as history, so its first proposals already lean towards what worked.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from fer_ray.config import TrainConfig, from_dict
from fer_ray.errors import ConfigError, DataError
from fer_ray.experiment import TRIAL_NUMBER, USABLE, SearchSettings, read_results
from fer_ray.space import SearchSpace

STUDY_NAME = "fer-ray"
# Finished trials before TPE models the space (Optuna's default: 10 random ones). A budgeted
# search on a CPU runs a handful of trials, and random draws from a wide space are mostly
# poor: after the points, TPE already proposes around the best of them.
TPE_STARTUP_TRIALS = 2
EARLIER_BEST_POINTS = 2  # an earlier experiment's best configs re-run first


@dataclass
class WarmStart:
    """points: flat params evaluated first, in order; history: (params, value) told to TPE."""

    points: list[dict[str, Any]] = field(default_factory=list)
    history: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    skipped: int = 0  # earlier trials whose config the current space cannot express


def earlier_trials(location: str, space: SearchSpace, metric: str
                   ) -> tuple[list[tuple[dict[str, Any], float]], int]:
    """An earlier experiment's usable trials as (flat params in ``space``, metric), best first;
    and how many were skipped because ``space`` cannot express them."""
    df = read_results(location)
    rows = df[df["status"].isin(USABLE)]
    found, skipped = [], 0
    for _, row in rows.iterrows():
        try:
            config = from_dict(TrainConfig, json.loads(row["config_json"]))
        except (ConfigError, ValueError, TypeError):
            skipped += 1
            continue
        if not space.contains(config):
            skipped += 1
            continue
        found.append((space.params_of(config), float(row[metric])))
    return found, skipped


def warm_start(settings: SearchSettings, space: SearchSpace, base: TrainConfig) -> WarmStart:
    """The space's points, then (with ``settings.warm_start``) an earlier experiment's."""
    start = WarmStart(points=[space.params_of(c) for c in space.point_configs(base)])
    if settings.warm_start:
        history, start.skipped = earlier_trials(settings.warm_start, space, settings.metric)
        if not history:
            raise DataError(f"--warm-start {settings.warm_start}: none of its finished trials "
                            f"lies in space {space.name}")
        ranked = sorted(history, key=lambda h: h[1], reverse=settings.mode == "max")
        known = [json.dumps(p, sort_keys=True) for p in start.points]
        earlier_best = [params for params, _ in ranked[:EARLIER_BEST_POINTS]
                        if json.dumps(params, sort_keys=True) not in known]
        start.points = earlier_best + start.points
        start.history = history
    return start


class NumberedSampler:
    """``space.sample`` (define-by-run) that also returns the Optuna trial's number, from
    which the trial's seed is derived (``experiment.trial_seed``). A class, not a closure, so
    that Ray can pickle the searcher with it."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        return {**self.space.sample(trial), TRIAL_NUMBER: int(trial.number)}


def _told_study(space: SearchSpace, history: list[tuple[dict[str, Any], float]],
                mode: str, sampler: optuna.samplers.BaseSampler) -> optuna.storages.BaseStorage:
    """An in-memory study holding ``history`` as finished trials (define-by-run spaces have
    no distributions up front, so each one is replayed through ``space.sample``)."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, sampler=sampler,
                                direction="maximize" if mode == "max" else "minimize")
    for params, value in history:
        study.enqueue_trial(params)
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, value)
    return storage


def build_searcher(settings: SearchSettings, space: SearchSpace, start: WarmStart
                   ) -> OptunaSearch:
    """Optuna TPE (multivariate, grouped for define-by-run, constant liar for concurrent
    trials), seeded, with the warm start's points first and its history told."""
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True,
            group=True, constant_liar=True)
    storage = _told_study(space, start.history, settings.mode, sampler)
    return OptunaSearch(space=NumberedSampler(space), metric=settings.metric, mode=settings.mode,
                        sampler=sampler, storage=storage, study_name=STUDY_NAME,
                        points_to_evaluate=start.points or None)
