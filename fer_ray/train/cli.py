"""``python -m fer_ray.train``: train one model, save weights + config + history, print metrics."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fer_ray import storage
from fer_ray._cli import ArgumentParser, add_vote_flags, run_main, versions
from fer_ray.config import TrainConfig, check_config
from fer_ray.data import (
    add_test_split,
    fingerprint,
    format_class_table,
    load_data,
)
from fer_ray.errors import ConfigError
from fer_ray.models.inference import resolve_device, score_splits
from fer_ray.models.io import VAL_LABELS, VAL_PROBS, save_model
from fer_ray.models.vgg_fer import check_model
from fer_ray.paths import check_output_dir
from fer_ray.train.loop import fit
from fer_ray.train.presets import FLAG_KEYS, PRESETS, resolve_config

# What a run folder holds: --out may replace a folder holding only these (an earlier run).
RUN_FILES = ("model.safetensors", "config.json", "history.csv", VAL_PROBS,
             VAL_LABELS)
# Config keys set by a flag, named in range errors.
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m fer_ray.train",
        description="Train one CNN on FER data (built-in synthetic faces when --data is omitted).",
    )
    p.add_argument("--data", help="fer2013.csv, train.csv, an image-folder tree, .npz or folder")
    p.add_argument("--test", help="an extra labelled test set, evaluated once at the end")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--config", help="JSON config (full or partial) applied over the preset")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--subsample", type=int, help="use this many training images (stratified)")
    p.add_argument("--synthetic-size", type=int, help="built-in data: images to generate")
    add_vote_flags(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="training arithmetic (default auto: bf16 where the hardware has it)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="plan the epochs (at most --epochs) so that the whole run ends within "
                        "this many minutes; the schedule anneals by the planned end")
    p.add_argument("--tta", action="store_true",
                   help="score the test splits with flip test-time augmentation")
    p.add_argument("--out", help="output folder (default runs/train-<preset>-<time>)")
    return p


def check_run(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """Everything a run was given, checked before data is loaded or anything written:
    (the resolved config, the output folder)."""
    if args.time_budget is not None and not (math.isfinite(args.time_budget)
                                             and args.time_budget > 0):
        raise ConfigError(f"--time-budget: {args.time_budget} minutes must be positive")
    overrides = {
        "epochs": args.epochs, "patience": args.patience, "seed": args.seed,
        "precision": args.precision, "optim": {"batch_size": args.batch_size, "lr": args.lr},
        "data": {"path": args.data, "val_fraction": args.val_fraction,
                 "subsample": args.subsample, "synthetic_size": args.synthetic_size,
                 "labels": args.labels, "votes": args.votes, "vote_alpha": args.vote_alpha},
    }
    config = check_config(resolve_config(args.preset, args.config, overrides), FLAG_KEYS)
    check_model(config.model)
    out = Path(args.out or f"runs/train-{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    inputs = [p for p in (args.data, args.test, args.config) if p]
    check_output_dir(out, "--out", RUN_FILES, inputs)
    return config, out


def train_main(args: argparse.Namespace, started: float) -> int:
    config, out = check_run(args)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    data = load_data(config.data, seed=config.seed)
    if args.test:
        add_test_split(data, args.test, config=config.data)
    print(f"data: {data.source} ({time.perf_counter() - t0:.1f} s to load)"
          + (f"; {data.converted} images converted to 48x48 grayscale" if data.converted else ""))
    print(format_class_table(data))
    budget = f" at most, within {args.time_budget:g} min" if args.time_budget else ""
    print(f"device: {device}; model: {config.model.filters} filters, "
          f"{config.epochs} epochs{budget}, batch {config.optim.batch_size}")

    def show(m: dict[str, float]) -> None:
        planned = f"/{int(m['planned_epochs'])}" if "planned_epochs" in m else ""
        # A budgeted run evaluates from half-way on: the epochs before have no val figures.
        val = (f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  "
               f"val_f1 {m['val_macro_f1']:.4f}" if "val_acc" in m else
               "(not evaluated: the schedule's best epoch comes later)")
        print(f"epoch {int(m['epoch']):3d}{planned}  train_loss {m['train_loss']:.4f}  "
              f"train_acc {m['train_acc']:.4f}  {val}  "
              f"{m['images_per_s']:.0f} img/s  {m['epoch_seconds']:.1f} s", flush=True)

    deadline = None
    if args.time_budget is not None:
        # Kept for scoring the test splits after training: a few percent of the budget.
        deadline = started + 60 * args.time_budget * 0.97 - 10
    t_fit = time.perf_counter()
    result = fit(config, data, device, on_epoch=show, deadline=deadline)
    train_seconds = time.perf_counter() - t_fit
    config = result.extra.get("config", config)  # with a budget: the epochs it planned
    tests = score_splits(result.model, data.tests, device, tta="flip" if args.tta else "none")

    record = {"best": result.best, "tests": tests, "test_tta": args.tta,
              "train_seconds": train_seconds, "wall_seconds": time.time() - started,
              "data": {"source": data.source, "fingerprint": fingerprint(data),
                       "n_train": len(data.train), "n_val": len(data.val),
                       "left_out": data.left_out},
              "versions": versions()}
    with storage.replace_dir(out, RUN_FILES) as tmp:  # all files, or none
        save_model(result.model, tmp, config, extra=record)
        pd.DataFrame(result.history).to_csv(tmp / "history.csv", index=False)
        np.save(tmp / VAL_PROBS, result.val_probs)
        np.save(tmp / VAL_LABELS, result.val_labels)

    print(f"best val_acc {result.best.get('val_acc', float('nan')):.4f} "
          f"(epoch {int(result.best.get('epoch', 0))}), val_macro_f1 "
          f"{result.best.get('val_macro_f1', float('nan')):.4f}, trained in {train_seconds:.1f} s")
    tta = " with flip TTA" if args.tta else ""
    for name, s in tests.items():
        print(f"test[{name}]{tta} acc {s['acc']:.4f}  macro_f1 {s['macro_f1']:.4f}  "
              f"(n={int(s['n'])})")
    print(f"saved to {out}/ (model.safetensors, config.json, history.csv); classes: "
          f"{', '.join(data.classes)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = build_parser().parse_args(argv)
    return run_main(lambda: train_main(args, started))
