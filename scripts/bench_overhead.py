"""Ray Tune overhead: one config trained as a bare loop and as one Ray Tune trial, side by side.

    .venv/bin/python scripts/bench_overhead.py [--preset small] [--images 3000] [--epochs 4]

Both sides train the same TrainConfig on the same data for the same epochs with the same torch
thread count. The bare side calls ``Trainer.run_epoch`` directly; the trial side is the real
search wiring (``build_trainable`` -> ``fer_trainable`` in a Ray worker, the search's
``RunConfig`` with its checkpointing), driven by ``tune.Tuner`` with one trial. Rounds
alternate bare, trial, bare, trial, ... so machine load hits both sides alike.

Printed: mean training seconds per epoch (the trial's own reported ``epoch_seconds``), mean wall
seconds per epoch (bare: train + eval; trial: Ray's ``time_this_iter_s`` = train + eval +
checkpoint + report), their ratios, the checkpoint-writing cost measured in the bare loop, and
Ray's start-up costs (``ray.init``, time to the first result).
"""

from __future__ import annotations

import os

# Before anything imports Ray: a local cluster must agree on auth; no usage reporting.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_ray.config import DataConfig, TrainConfig, merge
from fer_ray.data import FerData, RawDataset, prepare
from fer_ray.data.synthetic import make_synthetic
from fer_ray.models.io import save_model
from fer_ray.space import SearchSpace, space_from_dict
from fer_ray.train import Trainer, get_preset


def fixed_space() -> SearchSpace:
    """A space with nothing to sample: every trial trains ``TrialSetup.base`` unchanged."""
    return space_from_dict({"description": "one fixed config (benchmarks)", "params": {}},
                           name="fixed", source="<bench>")


def synthetic_data(n: int, seed: int = 0) -> FerData:
    """n built-in synthetic faces split 90/10 (stratified), as a search would split them."""
    raw = RawDataset(train=make_synthetic(n, seed=seed), source="synthetic")
    return prepare(raw, DataConfig(val_fraction=0.1), seed=seed)


def worker_niceness() -> int:
    """The nice value of a Ray worker process (Ray starts workers at RAY_worker_niceness)."""
    import ray

    return int(ray.get(ray.remote(num_cpus=0)(_own_niceness).remote()))


def _own_niceness() -> int:
    return os.nice(0)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def write_checkpoint(trainer: Trainer, config: TrainConfig, directory: Path) -> None:
    """The files ``fer_trainable`` writes each epoch, so their cost can be timed without Ray."""
    save_model(trainer.model, directory, config, extra={"epoch": trainer.epoch})
    np.save(directory / "val_probs.npy", trainer.val_probs)
    np.save(directory / "val_labels.npy", trainer.val_labels)
    torch.save(trainer.state_dict(), directory / "trainer_state.pt")


def bare_run(config: TrainConfig, data: FerData, epochs: int, threads: int) -> dict[str, Any]:
    """Train without Ray; per-epoch train seconds, wall seconds and checkpoint seconds."""
    torch.set_num_threads(threads)  # what fer_trainable does with cpus_per_trial
    start = time.perf_counter()
    trainer = Trainer(config, data.train, data.val, "cpu")
    train_s, wall_s, ckpt_s, acc = [], [], [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        metrics = trainer.run_epoch()
        wall_s.append(time.perf_counter() - t0)
        train_s.append(metrics["epoch_seconds"])
        acc.append(metrics["val_acc"])
        # Timed apart from the epoch: the bare loop needs no checkpoints, the trial does.
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            write_checkpoint(trainer, config, Path(tmp))
            ckpt_s.append(time.perf_counter() - t1)
    return {"train_s": train_s, "wall_s": wall_s, "ckpt_s": ckpt_s, "val_acc": acc,
            "total_s": time.perf_counter() - start - sum(ckpt_s)}


def trial_run(config: TrainConfig, data: FerData, epochs: int, threads: int, storage: str,
              name: str) -> dict[str, Any]:
    """The same training as one Ray Tune trial; per-epoch figures from its reported results."""
    from ray import tune

    from fer_ray.experiment import SearchSettings
    from fer_ray.search.tuner import build_trainable, run_config

    settings = SearchSettings(num_samples=1, max_epochs=epochs, cpus_per_trial=threads,
                              storage=storage, name=name, seed=config.seed)
    trainable = build_trainable(settings, fixed_space(), config, data)
    arrivals: list[float] = []

    class FirstResult(tune.Callback):
        """Driver-side arrival time of each result (time to first result = start-up cost)."""

        def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
            arrivals.append(time.perf_counter())

    rc = run_config(settings)
    rc.callbacks = [FirstResult()]  # the search's printer would add a line per trial
    tuner = tune.Tuner(trainable, param_space={},
                       tune_config=tune.TuneConfig(metric="val_acc", mode="max", num_samples=1),
                       run_config=rc)
    start = time.perf_counter()
    grid = tuner.fit()
    total = time.perf_counter() - start
    result = grid[0]
    df = result.metrics_dataframe
    if result.error is not None or df is None:
        raise RuntimeError(f"the trial failed: {result.error}")
    return {"train_s": list(df["epoch_seconds"]), "wall_s": list(df["time_this_iter_s"]),
            "val_acc": list(df["val_acc"]), "total_s": total,
            "first_result_s": arrivals[0] - start if arrivals else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="training preset (tiny, small, seed_hw3)")
    p.add_argument("--images", type=int, default=3000, help="synthetic images (10%% val)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (first is warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="bare/trial pairs, interleaved")
    # 1 = the search's default cpus_per_trial; also, on a shared machine a second intra-op
    # thread that has to wait for a busy core slows small nets down many times over.
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads = the trial's cpus_per_trial (default 1, as in a search)")
    p.add_argument("--storage", help="Ray results folder (default: a temporary one, removed)")
    p.add_argument("--worker-niceness", type=int,
                   help="set RAY_worker_niceness (Ray's default, 15, makes trials yield the CPU "
                        "to any other busy process on the machine)")
    p.add_argument("--quick", action="store_true", help="tiny preset, 600 images, 2 epochs")
    args = p.parse_args()
    if args.quick:
        args.preset, args.images, args.epochs, args.rounds = "tiny", 600, 2, 1
    if args.worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112 (Ray's name)
    config = merge(get_preset(args.preset), {"epochs": args.epochs})
    data = synthetic_data(args.images)
    storage = args.storage or tempfile.mkdtemp(prefix="bench_overhead_")
    print(f"preset {args.preset}, {len(data.train)} train / {len(data.val)} val images, "
          f"{args.epochs} epochs x {args.rounds} rounds, {args.threads} threads, "
          f"torch {torch.__version__}", flush=True)

    from fer_ray.experiment import SearchSettings
    from fer_ray.search.tuner import init_ray

    t0 = time.perf_counter()
    init_ray(SearchSettings())
    init_s = time.perf_counter() - t0
    nice = worker_niceness()
    print(f"Ray worker niceness {nice} (this process {os.nice(0)})", flush=True)

    bare: list[dict[str, Any]] = []
    trial: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            bare.append(bare_run(config, data, args.epochs, args.threads))
            trial.append(trial_run(config, data, args.epochs, args.threads, storage,
                                   f"overhead-{r}"))
            print(f"round {r + 1}: bare {bare[-1]['total_s']:.1f} s, "
                  f"trial {trial[-1]['total_s']:.1f} s", flush=True)
    finally:
        if not args.storage:
            shutil.rmtree(storage, ignore_errors=True)

    # The first epoch of every run pays allocation/warm-up costs: compare steady epochs only
    # (unless there is just one epoch).
    skip = 1 if args.epochs > 1 else 0

    def steady(runs: list[dict[str, Any]], key: str) -> float:
        return mean([v for run in runs for v in run[key][skip:]])

    rows = [("train s/epoch (epoch_seconds)", steady(bare, "train_s"), steady(trial, "train_s")),
            ("wall s/epoch (+eval, +ckpt/report)", steady(bare, "wall_s"),
             steady(trial, "wall_s")),
            ("first epoch wall s (trial: + setup)", mean([r["wall_s"][0] for r in bare]),
             mean([r["wall_s"][0] for r in trial])),
            ("end to end s (init + epochs)", mean([r["total_s"] for r in bare]),
             mean([r["total_s"] for r in trial])),
            ("final val_acc", mean([r["val_acc"][-1] for r in bare]),
             mean([r["val_acc"][-1] for r in trial]))]
    print(f"\n{'':36}{'bare loop':>12}{'Ray trial':>12}{'ratio':>9}")
    for label, b, t in rows:
        print(f"{label:36}{b:12.3f}{t:12.3f}{t / b:8.3f}x")
    ratio_train = rows[0][2] / rows[0][1]
    ratio_wall = rows[1][2] / rows[1][1]
    ckpt = steady(bare, "ckpt_s")
    print(f"\nratio trial/bare train epoch_seconds: {ratio_train:.3f} (goal <= 1.03: "
          f"{'met' if ratio_train <= 1.03 else 'not met'})")
    print(f"ratio trial/bare wall per epoch:      {ratio_wall:.3f} (incl. checkpoint + report)")
    print(f"checkpoint write (bare, same files):  {ckpt:.3f} s/epoch "
          f"= {ckpt / rows[1][1]:.1%} of a bare epoch")
    print(f"ray.init:                             {init_s:.2f} s")
    firsts = [r["first_result_s"] for r in trial]
    print("time to first result (fit -> 1st):   " + ", ".join(f"{f:.2f} s" for f in firsts)
          + "  (minus the first epoch's wall: "
          + ", ".join(f"{f - r['wall_s'][0]:.2f} s" for f, r in zip(firsts, trial, strict=True))
          + ")")


if __name__ == "__main__":
    main()
