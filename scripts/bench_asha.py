"""ASHA vs FIFO on the same seeded configurations: epochs trained, wall time, best accuracy.

    .venv/bin/python scripts/bench_asha.py [--configs 24] [--max-epochs 9] [--reduction-factor 3]

N configurations are drawn once, up front, from a search space with a seeded Optuna
RandomSampler (so TPE's adaptivity is out of the comparison). Both runs then train exactly
those configs through the real search wiring (``build_trainable`` -> ``fer_trainable``, the
search's ``RunConfig`` and checkpointing, Ray Tune trials) on the built-in synthetic faces;
only the scheduler differs: ``FIFOScheduler`` (every trial runs --max-epochs) vs
``ASHAScheduler(time_attr="epoch", grace_period, reduction_factor)``. Each config is trained
with the same seed in both runs, so a trial ASHA lets finish reproduces its FIFO curve.

Goal: ASHA trains <= 1/3 of FIFO's epochs and keeps >= 99 % of FIFO's best validation accuracy.
"""

from __future__ import annotations

import os

# Before anything imports Ray: a local cluster must agree on auth; no usage reporting.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from fer_ray.data import FerData
from fer_ray.experiment import EPOCH_OK, SearchSettings, base_config, load_search_data
from fer_ray.search.tuner import build_trainable, init_ray, run_config
from fer_ray.space import SearchSpace, load_space


def sample_configs(space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """n flat param dicts drawn define-by-run from ``space`` by a seeded RandomSampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


class FixedConfigs(Searcher):
    """A searcher proposing a given list of configs in order, then finishing."""

    def __init__(self, configs: list[dict[str, Any]], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.configs, self.given = list(configs), 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return True  # metric and mode are fixed at construction; there is no space to set

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.given >= len(self.configs):
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's sentinel
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        pass


def config_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@dataclass
class RunSummary:
    """One scheduler's run: per-config (epochs trained, best val_acc), in sampling order."""

    name: str
    epochs: list[int]
    best: list[float]
    wall_s: float


def run_fixed(settings: SearchSettings, space: SearchSpace, data: FerData,
              configs: list[dict[str, Any]], scheduler: TrialScheduler, name: str
              ) -> RunSummary:
    """Train ``configs`` as Ray Tune trials under ``scheduler``; epochs and best val_acc each."""
    settings = SearchSettings(**{**settings.to_dict(), "name": name})
    trainable = build_trainable(settings, space, base_config(settings), data)
    concurrent = max(1, int((os.cpu_count() or 1) // settings.cpus_per_trial))
    tuner = tune.Tuner(
        trainable, param_space={},
        tune_config=tune.TuneConfig(
            metric=settings.metric, mode=settings.mode, scheduler=scheduler,
            search_alg=ConcurrencyLimiter(FixedConfigs(configs, settings.metric, settings.mode),
                                          max_concurrent=concurrent),
            num_samples=len(configs), reuse_actors=True),
        run_config=run_config(settings))
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    index = {config_key(c): i for i, c in enumerate(configs)}
    epochs, best = [0] * len(configs), [0.0] * len(configs)
    for result in (grid[j] for j in range(len(grid))):
        i = index[config_key(result.config or {})]
        df = result.metrics_dataframe
        if result.error is None and df is not None and len(df):
            ok = df[df["status_flag"] == EPOCH_OK]
            epochs[i], best[i] = int(df["epoch"].max()), float(ok["val_acc"].max())
    return RunSummary(name, epochs, best, wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="small", help="search space to sample configs from")
    p.add_argument("--configs", type=int, default=24, help="configurations (trials per run)")
    p.add_argument("--max-epochs", type=int, default=9)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--images", type=int, default=1500, help="synthetic faces (train + val)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="a larger validation split than the search default makes 'best "
                        "accuracy' less noisy")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="config sampling and training seed")
    p.add_argument("--storage", help="Ray results folder (default: a temporary one, removed)")
    p.add_argument("--quick", action="store_true",
                   help="smoke space, 4 configs, 3 epochs, 600 images")
    args = p.parse_args()
    if args.quick:
        args.space, args.configs, args.max_epochs, args.images = "smoke", 4, 3, 600
    storage = args.storage or tempfile.mkdtemp(prefix="bench_asha_")
    settings = SearchSettings(
        space=args.space, num_samples=args.configs, max_epochs=args.max_epochs,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        cpus_per_trial=args.cpus_per_trial, storage=storage, seed=args.seed,
        synthetic_size=args.images, val_fraction=args.val_fraction).check()
    space = load_space(args.space)
    configs = sample_configs(space, args.configs, args.seed)
    data = load_search_data(settings)
    print(f"space {args.space}: {args.configs} configs, max {args.max_epochs} epochs, ASHA grace "
          f"{args.grace_period} reduction {args.reduction_factor}; {len(data.train)} train / "
          f"{len(data.val)} val synthetic images, {args.cpus_per_trial:g} CPU per trial",
          flush=True)
    init_ray(settings)
    try:
        fifo = run_fixed(settings, space, data, configs, FIFOScheduler(), "fifo")
        asha = run_fixed(settings, space, data, configs, ASHAScheduler(
            time_attr="epoch", max_t=args.max_epochs, grace_period=args.grace_period,
            reduction_factor=args.reduction_factor), "asha")
    finally:
        if not args.storage:
            shutil.rmtree(storage, ignore_errors=True)

    print(f"\n{'config':>6}{'FIFO best':>11}{'ASHA epochs':>13}{'ASHA best':>11}")
    for i in range(len(configs)):
        print(f"{i:6d}{fifo.best[i]:11.4f}{asha.epochs[i]:13d}{asha.best[i]:11.4f}")
    print(f"\n{'scheduler':10}{'epochs':>8}{'wall s':>9}{'best val_acc':>14}")
    for run in (fifo, asha):
        print(f"{run.name:10}{sum(run.epochs):8d}{run.wall_s:9.1f}{max(run.best):14.4f}")
    epochs = sum(asha.epochs) / max(sum(fifo.epochs), 1)
    acc = max(asha.best) / max(max(fifo.best), 1e-9)
    print(f"\nratio ASHA/FIFO epochs:       {epochs:.3f} (goal <= 0.333: "
          f"{'met' if epochs <= 1 / 3 + 1e-9 else 'not met'})")
    print(f"ratio ASHA/FIFO best val_acc: {acc:.4f} (goal >= 0.99: "
          f"{'met' if acc >= 0.99 else 'not met'})")
    print(f"ratio ASHA/FIFO wall time:    {asha.wall_s / fifo.wall_s:.3f} (FIFO ran first)")
    top = max(range(len(configs)), key=lambda i: fifo.best[i])
    print(f"FIFO's best config ({top}) got {asha.epochs[top]} of {args.max_epochs} epochs "
          "under ASHA")


if __name__ == "__main__":
    main()
