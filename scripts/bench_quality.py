"""Better models per minute: a hand-tuned CNN vs a fer-ray search, in the same time budget.

    .venv/bin/python scripts/bench_quality.py --data ../shared/data/fer2013 \
        --test ../shared/data/fer2013/public_test.npz --budget 45 --seeds 3 --out runs/bq45
    .venv/bin/python scripts/bench_quality.py --combine runs/bq45 runs/bq45-more/seed-3

Each seed runs, one after the other on the same machine, each given ``--budget`` minutes:

(a) the baseline: the network and recipe a practitioner writes by hand (3 blocks of two 3x3
    convs with 32/64/128 filters, batch norm, dropout; dense 256; horizontal flips; Adam with
    a one-cycle schedule, batch 128; flip TTA at test), as one ``python -m fer_ray.train
    --seed S`` run whose epochs are planned to fill the budget (``--time-budget``);
(b) ``python -m fer_ray.search --time-budget MIN --seed S`` with its defaults (the ``small``
    space, its warm-start points, ASHA, the ensemble built and scored inside the budget).

Then the saved models are loaded with fer-ray's own loaders and scored on every ``--test``
face: the baseline as trained (its flip TTA), the baseline with the TTA the ensemble chose,
the search's best single model (the ensemble's "best single" candidate, with the ensemble's
TTA, so that ensemble - best single measures the vote alone) and the ensemble. Each seed's
folder ``--out/seed-S/`` keeps the baseline run, both logs, ``predictions.npz`` (per-face
probabilities of the four rows, labels, which faces are exact copies of training faces, the
test set's fingerprint) and ``summary.json`` (walls, epochs, validation accuracies, commands,
settings); ``fer_ray.report.seed_runs`` describes the format.

The table (also ``--combine DIR ...``, no training: seed folders, or folders holding
``seed-*/``) gives per row the mean ± sd over seeds of test accuracy, macro-F1, validation
accuracy, test accuracy without the faces that are pixel copies of training faces (280 of
PublicTest's 3,589), and wall time; then ensemble minus each other row with a paired
bootstrap 95 % interval: the test faces are resampled with replacement, the same resample
for both sides and every seed, and the per-seed differences averaged
(``fer_ray.report.stats.paired_bootstrap``). Runs of different test sets are refused.
Every choice in both runs is made on validation. ``--quick``: half a minute per side on 1,500
synthetic faces written to ``--out/quick-data/`` (a test set of 424, 24 of them copies of
training faces), for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main, versions
from fer_ray.data import Split, load_data
from fer_ray.data.duplicates import copies_of, count_distinct
from fer_ray.data.loaders import read_source, read_split
from fer_ray.data.splits import split_fingerprint
from fer_ray.errors import ConfigError, DataError
from fer_ray.paths import check_output_dir
from fer_ray.report.seed_runs import PREDICTIONS, SUMMARY, format_combined, load_runs, save_run

# The hand-written recipe: fixed before any search ran, never tuned on the test split.
BASELINE: dict[str, Any] = {
    "model": {"filters": [32, 64, 128], "convs_per_block": [2], "dropout": [0.25],
              "spatial_dropout": False, "dense_units": [256], "dense_dropout": 0.5,
              "kernel_size": 3, "padding": "same", "batch_norm": True},
    "optim": {"optimizer": "adam", "lr": 0.002, "weight_decay": 0.0, "schedule": "onecycle",
              "batch_size": 128, "label_smoothing": 0.0},
    "augment": {"hflip": 0.5, "rotation": 0.0, "scale": 0.0, "translate": 0.0, "crop": 0,
                "erasing": 0.0, "mixup": 0.0, "cutmix": 0.0},
    "patience": 0,
}
MAX_EPOCHS = 200  # the baseline plans as many epochs as its budget allows, up to this
SEED_FILES = ("baseline", "baseline.json", "*.log", PREDICTIONS, SUMMARY)  # a seed folder's
QUICK_FILES = ("train.npz", "test.npz")


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (output to ``log`` and, line by line, to stdout); its wall seconds."""
    started = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            print(f"  | {line}", end="", flush=True)
        if proc.wait() != 0:
            raise DataError(f"{' '.join(cmd[1:4])} ... exited {proc.returncode} (log: {log})")
    return time.time() - started


def _common_flags(args: argparse.Namespace, seed: int) -> list[str]:
    """Data, test, seed and (unless auto) precision flags: the same for both sides."""
    precision = [] if args.precision == "auto" else ["--precision", args.precision]
    return ["--data", args.data, "--test", args.test, "--seed", str(seed), *precision]


def train_baseline(args: argparse.Namespace, folder: Path, seed: int) -> dict[str, Any]:
    """(a): one fer_ray.train run of BASELINE within the budget, saved in folder/baseline."""
    if args.skip_baseline:
        from fer_ray.models.io import read_config

        out = Path(args.skip_baseline)
        out = out.parent if out.is_file() else out
        _, record = read_config(out)
        return {"wall": float(record.get("wall_seconds", float("nan"))), "out": str(out),
                "command": ["(reused)", str(out)]}
    config = folder / "baseline.json"
    config.write_text(json.dumps(BASELINE))
    out = folder / "baseline"
    cmd = [sys.executable, "-m", "fer_ray.train", "--config", str(config), "--tta",
           "--epochs", str(MAX_EPOCHS), "--time-budget", str(args.budget), "--out", str(out),
           *_common_flags(args, seed)]
    return {"wall": run(cmd, folder / "baseline.log"), "out": str(out), "command": cmd}


def run_search(args: argparse.Namespace, folder: Path, seed: int) -> dict[str, Any]:
    """(b): a fer_ray.search run with the same budget, its ensemble built inside it."""
    name = f"bench-quality-{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    cmd = [sys.executable, "-m", "fer_ray.search", "--time-budget", str(args.budget),
           "--storage", str(args.storage), "--name", name, *_common_flags(args, seed),
           *args.search_args]
    wall = run(cmd, folder / "search.log")
    return {"wall": wall, "experiment": str(Path(args.storage).resolve() / name),
            "command": cmd}


def _val_acc(side: Any, val: Split) -> float:
    """Accuracy of an Ensemble on a labelled validation split."""
    return float(np.mean(side.predict_proba(val.images).argmax(1) == val.labels))


def predict_sides(baseline_dir: str, experiment: str, test: Split
                  ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    """Each row's (N, K) test probabilities, its validation accuracy, and the run's records.

    Every model comes from its saved folder through fer-ray's loaders; the baseline and the
    best single model are scored as one-member ensembles, so the ensemble's own ``tta`` value
    (whatever its type) is passed through unchanged.
    """
    from fer_ray.ensemble.candidates import load_candidates
    from fer_ray.ensemble.model import Ensemble, Member
    from fer_ray.models.inference import resolve_device
    from fer_ray.models.io import load_model, read_config

    device = resolve_device("auto")
    ensemble = Ensemble.load(Path(experiment) / "ensemble").to(device)
    model, config = load_model(baseline_dir)
    _, record = read_config(baseline_dir)
    baseline = Member("baseline", config, model.to(device))
    best = load_candidates(experiment, max_candidates=1, device=str(device))  # the best single
    sides = {"baseline": Ensemble([baseline], np.ones(1), tta=record.get("test_tta", True)),
             "baseline_same_tta": Ensemble([baseline], np.ones(1), tta=ensemble.tta),
             "best_single": Ensemble(best.members[:1], np.ones(1), tta=ensemble.tta),
             "ensemble": ensemble}
    probs = {row: side.predict_proba(test.images) for row, side in sides.items()}
    val = {"baseline": float(record["best"]["val_acc"]),
           "baseline_same_tta": _val_acc(sides["baseline_same_tta"],
                                         load_data(config.data, seed=config.seed).val),
           "best_single": _val_acc(sides["best_single"], best.data.val),
           "ensemble": float(ensemble.info["final_validation"]["acc"])}
    info = {"baseline_tta": record.get("test_tta", True), "ensemble_tta": ensemble.tta,
            "epochs": config.epochs, "baseline_tests": record.get("tests", {}),
            "ensemble_tests": {s: t["final"]["acc"]
                               for s, t in ensemble.info.get("test", {}).items()},
            "members": len(ensemble.members), "variant": ensemble.info.get("variant", "?")}
    return probs, val, info


def run_seed(args: argparse.Namespace, seed: int, folder: Path, test: Split,
             copy: np.ndarray) -> Path:
    """Both sides for one seed, then their per-face predictions and summary in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMMARY).unlink(missing_ok=True)  # until this run's summary: unfinished
    print(f"seed {seed}: (a) baseline: fer_ray.train, {args.budget:g} min", flush=True)
    base = train_baseline(args, folder, seed)
    print(f"seed {seed}: (b) search: fer_ray.search --time-budget {args.budget:g}", flush=True)
    found = run_search(args, folder, seed)
    probs, val, info = predict_sides(base["out"], found["experiment"], test)
    search_json = json.loads((Path(found["experiment"]) / "search.json").read_text())
    trials = ", ".join(f"{v} {k}" for k, v in search_json.get("trials", {}).items())
    summary = {
        "seed": seed, "budget_min": args.budget, "precision": args.precision,
        "test": {"path": args.test, "fingerprint": split_fingerprint(test), "n": len(test),
                 "copies": int(copy.sum()), "distinct_copies": count_distinct(test.images[copy])},
        "data": args.data, "tta": {"baseline": info["baseline_tta"],
                                   "ensemble": info["ensemble_tta"]},
        "val_acc": val, "wall_s": {"baseline": base["wall"], "baseline_same_tta": base["wall"],
                                   "best_single": found["wall"], "ensemble": found["wall"]},
        "notes": {"baseline": f"{info['epochs']} epochs",
                  "search": f"{trials}; ensemble {info['members']} members, {info['variant']}"},
        "commands": {"baseline": base["command"], "search": found["command"]},
        "baseline": {"out": base["out"], "epochs": info["epochs"], "recipe": BASELINE},
        "search": {"experiment": found["experiment"], "settings": search_json.get("settings")},
        "recorded_test_acc": {"baseline": {s: t["acc"] for s, t in info["baseline_tests"].items()},
                              "ensemble": info["ensemble_tests"]},
        "versions": versions(),
    }
    return save_run(folder, np.asarray(test.labels), probs, copy, summary)


# --quick: minutes per side, as short as a smoke-space search with an ensemble still fits.
QUICK_BUDGET = 0.5


def write_quick_data(folder: Path) -> tuple[str, str]:
    """1,500 synthetic training faces and a test set of 400 new ones + 24 copies of training
    faces, as npz files in ``folder``: (train path, test path)."""
    from fer_ray.data.synthetic import make_synthetic

    train, fresh = make_synthetic(1500, seed=0), make_synthetic(400, seed=1)
    assert train.labels is not None and fresh.labels is not None
    test = {"images": np.concatenate([fresh.images, train.images[:24]]),
            "labels": np.concatenate([fresh.labels, train.labels[:24]])}
    folder.mkdir(parents=True, exist_ok=True)
    for name, arrays in (("train.npz", {"images": train.images, "labels": train.labels}),
                         ("test.npz", test)):
        with storage.atomic_path(folder / name) as tmp, tmp.open("wb") as handle:
            np.savez(handle, **arrays)
    return str(folder / "train.npz"), str(folder / "test.npz")


def check_precision(precision: str) -> None:
    """A precision other than auto goes to both sides: refused before anything trains when
    this checkout's search CLI does not take the flag yet."""
    if precision == "auto":
        return
    shown = subprocess.run([sys.executable, "-m", "fer_ray.search", "--help"],
                           capture_output=True, text=True, check=False).stdout
    if "--precision" not in shown:
        raise ConfigError(f"--precision {precision}: this checkout's fer_ray.search has no "
                          "--precision flag yet (use --precision auto)")


def bench(args: argparse.Namespace) -> int:
    """Run the seeds, or just combine saved ones; print the table."""
    if args.n_boot < 1:
        raise ConfigError(f"--n-boot: {args.n_boot} resamples; give at least 1")
    if args.combine:
        print(format_combined(load_runs(args.combine), args.n_boot))
        return 0
    if not 0 < args.budget < float("inf"):
        raise ConfigError(f"--budget: {args.budget} minutes must be positive")
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds: {args.seeds}; give at least 1")
    seeds = list(range(args.seeds)) if args.seeds is not None else [args.seed]
    if args.skip_baseline and len(seeds) > 1:
        raise ConfigError("--skip-baseline reuses one baseline run: give one --seed")
    out = Path(args.out or f"runs/bench-quality-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.quick:
        args.budget = QUICK_BUDGET
        args.search_args = [*args.search_args, "--space", "smoke"]
        check_output_dir(out / "quick-data", "--out", QUICK_FILES, [])
        args.data, args.test = write_quick_data(out / "quick-data")
    if not args.data or not args.test:
        raise ConfigError("--data and --test are required (the faces are scored one by one "
                          "on --test), unless --quick")
    for seed in seeds:
        check_output_dir(out / f"seed-{seed}", "--out", SEED_FILES, [args.data, args.test])
    check_precision(args.precision)
    test = read_split(args.test, "test")
    if test.labels is None:
        raise DataError(f"{args.test}: no labels, so nothing can be scored")
    train = read_source(args.data).train
    copy = copies_of(test.images, train.images) if train is not None \
        else np.zeros(len(test), bool)
    folders = [run_seed(args, seed, out / f"seed-{seed}", test, copy) for seed in seeds]
    print(f"\nsaved to {', '.join(map(str, folders))}; budget {args.budget:g} min per run; "
          f"data: {args.data}\n")
    print(format_combined(load_runs(list(folders)), args.n_boot))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="training data (the training pool: copies are found in it)")
    p.add_argument("--test", help="labelled test split, scored once after all choices")
    p.add_argument("--budget", type=float, default=45.0, help="minutes per run")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="run this one seed (default 0)")
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1, then combine")
    p.add_argument("--out", help="seed folders go to OUT/seed-S/ (default "
                                 "runs/bench-quality-<time>)")
    p.add_argument("--combine", nargs="+", metavar="DIR",
                   help="no training: combine saved seed runs (seed folders or their parent)")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="training arithmetic of both sides (passed on unless auto)")
    p.add_argument("--storage", default="runs", help="where the search's experiment goes")
    p.add_argument("--skip-baseline", metavar="RUN",
                   help="reuse a finished baseline run (its folder or config.json) for one seed")
    p.add_argument("--quick", action="store_true",
                   help="half a minute each on 1,500 synthetic faces (for the tests)")
    p.add_argument("search_args", nargs="*", help="extra flags for fer_ray.search (after --)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
