"""``python -m fer_ray.ablate``: what augmentation and early stopping are worth, over seeds.

One network (a preset, or a saved config such as a trial's ``config.json``) trained as four
variants, each with seeds 0..S-1 on the same train/validation split:

- no augmentation, fixed epochs
- flip only, fixed epochs
- full augmentation (the config's own), fixed epochs
- full augmentation, early stopping (patience max(2, epochs // 4))

"Fixed epochs" keeps the last epoch's weights; "early stopping" stops after ``patience``
epochs without a better validation accuracy and keeps the best epoch's weights. The first
three isolate augmentation, the last two early stopping. Writes ``ablation.csv`` (one row per
run), ``ablation.md`` (mean ± std per variant) and ``ablation.png``. No Ray.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main
from fer_ray.config import AugmentConfig, TrainConfig, check_config, merge
from fer_ray.data import FerData, load_data
from fer_ray.data.loaders import read_split
from fer_ray.errors import ConfigError
from fer_ray.models import build_model
from fer_ray.models.inference import resolve_device, score_splits, to_device_images
from fer_ray.models.vgg_fer import check_model
from fer_ray.paths import check_output_dir
from fer_ray.report.analysis import summarize
from fer_ray.report.document import markdown_table
from fer_ray.report.figures import plot_ablation
from fer_ray.train.loop import fit
from fer_ray.train.presets import FLAG_KEYS, PRESETS, resolve_config

ABLATION_FILES = ("ablation.csv", "ablation.md", "ablation.png")  # what --out may hold
NO_AUGMENT = AugmentConfig(hflip=0.0, rotation=0.0, scale=0.0, translate=0.0)
METRICS = ("val_acc", "val_macro_f1", "best_val_acc", "epochs_run", "seconds")


def variants(config: TrainConfig, patience: int) -> dict[str, TrainConfig]:
    """The four configs by variant name (see the module docstring); seeds are set later."""
    full = config.augment
    flip = replace(NO_AUGMENT, hflip=full.hflip if full.hflip > 0 else 0.5)
    fixed = replace(config, patience=0)
    return {
        "no augmentation, fixed epochs": replace(fixed, augment=NO_AUGMENT),
        "flip only, fixed epochs": replace(fixed, augment=flip),
        "full augmentation, fixed epochs": fixed,
        f"full augmentation, early stopping (patience {patience})":
            replace(config, patience=patience),
    }


def train_once(config: TrainConfig, data: FerData, device: torch.device) -> dict[str, Any]:
    """One run: fixed epochs (patience 0, last weights) or early stopping (best weights).

    Returns val_acc / val_macro_f1 of the kept weights, best_val_acc over epochs, epochs_run,
    best_epoch, seconds and test_acc.<split> for every labelled test split.
    """
    start = time.perf_counter()
    result = fit(config, data, device, keep_best=bool(config.patience))
    kept = result.best if config.patience or not result.history else result.history[-1]
    row: dict[str, Any] = {
        "val_acc": kept.get("val_acc", 0.0), "val_macro_f1": kept.get("val_macro_f1", 0.0),
        "best_val_acc": result.best.get("val_acc", 0.0),
        "best_epoch": int(result.best.get("epoch", 0)), "epochs_run": len(result.history),
        "seconds": time.perf_counter() - start}
    for name, scores in score_splits(result.model, data.tests, device).items():
        row[f"test_acc.{name}"] = scores["acc"]
        row[f"test_macro_f1.{name}"] = scores["macro_f1"]
    return row


def warm_up(config: TrainConfig, data: FerData, device: torch.device) -> None:
    """One untimed forward/backward pass, so torch's one-off start-up cost does not land in
    the first variant's seconds."""
    model = build_model(config.model).to(device)
    x = to_device_images(data.train.images[:32], device).float().div_(255.0)
    model(x).sum().backward()


def run_ablation(config: TrainConfig, data: FerData, seeds: int, patience: int,
                 device: torch.device, log: Any = print) -> pd.DataFrame:
    """len(variants) x seeds runs; one row each (variant, augmentation, early_stopping, seed,
    metrics). The data split stays fixed: only the training seed varies."""
    warm_up(config, data, device)
    rows = []
    for name, variant in variants(config, patience).items():
        for seed in range(seeds):
            row = train_once(replace(variant, seed=seed), data, device)
            a = variant.augment
            rows.append({"variant": name, "seed": seed,
                         "augmentation": f"hflip {a.hflip:g}, rotation {a.rotation:g}, "
                                         f"scale {a.scale:g}, translate {a.translate:g}",
                         "early_stopping": variant.patience, **row})
            tests = " ".join(f"{k.removeprefix('test_acc.')} {v:.4f}"
                             for k, v in row.items() if k.startswith("test_acc."))
            log(f"{name:<52} seed {seed}: val_acc {row['val_acc']:.4f}  "
                f"epochs {row['epochs_run']}  {row['seconds']:.1f} s  {tests}", flush=True)
    return pd.DataFrame(rows)


def write_outputs(runs: pd.DataFrame, out: Path, header: str) -> pd.DataFrame:
    """ablation.csv, ablation.md and ablation.png in ``out`` (a temp folder that replaces it
    when all three are written); returns the text summary."""
    with storage.replace_dir(out, ABLATION_FILES) as tmp:
        runs.to_csv(tmp / "ablation.csv", index=False)
        table = summarize(runs)
        (tmp / "ablation.md").write_text(
            f"# Ablation: augmentation and early stopping\n\n{header}\n\n"
            f"{markdown_table(table)}\n\n![ablation](ablation.png)\n")
        plot_ablation(summarize(runs, text=False), tmp / "ablation.png")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fer_ray.ablate",
                                description="Train one network with and without augmentation "
                                            "and early stopping, over several seeds.")
    p.add_argument("--data", help="FER data (default: the config's data, else built-in faces)")
    p.add_argument("--test", help="an extra labelled test set")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help="default: small")
    source.add_argument("--config", help="a saved config.json (e.g. a trial checkpoint's)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the config's)")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..S-1 per variant")
    p.add_argument("--patience", type=int, help="early-stopping patience (max(2, epochs//4))")
    p.add_argument("--subsample", type=int, help="training images to use (stratified)")
    p.add_argument("--synthetic-size", type=int, help="built-in data: images to generate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    p.add_argument("--out", type=Path, help="output folder (default runs/ablation-<time>)")
    return p


def ablate_main(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ConfigError(f"--seeds: {args.seeds} must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs: {args.epochs} must be at least 1")
    # Preset, then --config, then flags, as fer_ray.train; checked before data is loaded.
    preset = args.preset or "small"
    config = check_config(resolve_config(preset, args.config, {
        "epochs": args.epochs, "data": {"path": args.data, "subsample": args.subsample,
                                        "synthetic_size": args.synthetic_size}}), FLAG_KEYS)
    check_model(config.model)
    patience = args.patience if args.patience is not None else max(2, config.epochs // 4)
    if patience < 1:
        raise ConfigError(f"--patience: {patience} must be at least 1")
    device = resolve_device(args.device)
    out = args.out or Path(f"runs/ablation-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output_dir(out, "--out", ABLATION_FILES,
                     [p for p in (args.data, args.test, args.config) if p])
    data = load_data(config.data, seed=0)  # one split for every run
    if args.test:
        test = read_split(args.test, "test")
        if not any(np.array_equal(test.images, t.images) for t in data.tests.values()):
            data.tests["test"] = test
    config = merge(config, {"seed": 0})
    n_runs = 4 * args.seeds
    print(f"data: {data.source}: train {len(data.train):,}, val {len(data.val):,}, tests "
          f"{', '.join(f'{k} {len(v):,}' for k, v in data.tests.items()) or 'none'}; "
          f"{n_runs} runs of {config.epochs} epochs on {device}", flush=True)
    runs = run_ablation(config, data, args.seeds, patience, device)
    source = f"config `{args.config}`" if args.config else f"preset `{preset}`"
    header = (f"Network: {source}, filters {list(config.model.filters)}; {config.epochs} "
              f"epochs; seeds 0..{args.seeds - 1}; data {data.source} (train "
              f"{len(data.train):,}, val {len(data.val):,}). Accuracies in %, mean ± std "
              "over seeds; 'fixed epochs' keeps the last epoch's weights, 'early stopping' "
              "the best epoch's.")
    table = write_outputs(runs, out, header)
    print(table.to_string())
    print(f"saved to {out}/ (ablation.csv, ablation.md, ablation.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: ablate_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
