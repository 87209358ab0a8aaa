"""Better models per minute: a hand-tuned CNN vs a fer-ray search, in the same time budget.

    .venv/bin/python scripts/bench_quality.py --data ../shared/data/fer2013 \
        --test ../shared/data/fer2013/public_test.npz --budget 45

One after the other, on the same machine, each given ``--budget`` minutes of wall time:

(a) the baseline: the network and recipe a practitioner writes by hand (3 blocks of two 3x3
    convs with 32/64/128 filters, batch norm, dropout; dense 256; horizontal flips; Adam with
    a one-cycle schedule, batch 128; flip TTA at test), as one ``python -m fer_ray.train``
    run whose epochs are planned to fill the budget (``--time-budget``);
(b) ``python -m fer_ray.search --time-budget MIN`` with its defaults (the ``small`` space,
    its warm-start points, ASHA, the ensemble built and scored inside the budget).

It prints the test accuracy and macro-F1 of the baseline, the search's best single model and
its ensemble, and each run's wall time; every choice in both runs is made on validation.
``--quick`` runs both for one minute on the built-in synthetic faces (for the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
            sys.exit(f"error: {' '.join(cmd[:4])} ... exited {proc.returncode} (log: {log})")
    return time.time() - started


def baseline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """(a): one fer_ray.train run of BASELINE within the budget; its test figures."""
    config = work / "baseline.json"
    config.write_text(json.dumps(BASELINE))
    out = work / "baseline"
    cmd = [sys.executable, "-m", "fer_ray.train", "--config", str(config), "--tta",
           "--epochs", str(MAX_EPOCHS), "--time-budget", str(args.budget), "--out", str(out),
           "--seed", str(args.seed), *_data_flags(args)]
    wall = run(cmd, work / "baseline.log")
    saved = json.loads((out / "config.json").read_text())
    return {"wall": wall, "epochs": saved["config"]["epochs"],
            "val_acc": saved["best"]["val_acc"], "tests": saved["tests"]}


def search(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """(b): a fer_ray.search run with the same budget; best single model and ensemble."""
    name = f"bench-quality-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "fer_ray.search", "--time-budget", str(args.budget),
           "--storage", str(args.storage), "--name", name, "--seed", str(args.seed),
           *_data_flags(args), *args.search_args]
    wall = run(cmd, work / "search.log")
    exp = Path(args.storage) / name
    record = json.loads((exp / "search.json").read_text())
    ensemble = json.loads((exp / "ensemble" / "ensemble.json").read_text())
    info = ensemble["info"]
    final = {split: table["final"] for split, table in info["test"].items()}
    # The best single model with flip TTA when validation says TTA helps it (as for the
    # ensemble); search.json's figure is without TTA.
    validation = info["validation"]
    tta = validation["best single + flip"]["acc"] > validation["best single"]["acc"]
    best = {split: table.get("best single + flip" if tta else "best single")
            for split, table in info["test"].items()}
    best = {split: figures for split, figures in best.items() if figures} \
        or record["best_single_test"]
    return {"wall": wall, "experiment": str(exp), "trials": record["trials"],
            "best_val_acc": info["validation"]["best single + flip" if tta else "best single"][
                "acc"], "best_tests": best, "best_tta": tta,
            "ensemble_val_acc": ensemble["info"]["final_validation"]["acc"],
            "ensemble_tests": final, "members": len(ensemble["members"]),
            "variant": ensemble["info"]["variant"]}


def _data_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--data", args.data] if args.data else ["--synthetic-size", "1500"]
    return flags + (["--test", args.test] if args.test else [])


def report(args: argparse.Namespace, base: dict[str, Any], found: dict[str, Any]) -> None:
    """The side-by-side table and the differences that decide."""
    split = next(iter(base["tests"]), None)
    print(f"\nbudget {args.budget:g} min per run; test split: {split or '(none)'}; "
          f"data: {args.data or 'built-in synthetic faces'}")
    rows = [("baseline (hand-written recipe, flip TTA)", base["val_acc"],
             base["tests"].get(split, {}), base["wall"], f"{base['epochs']} epochs"),
            ("search: best single model" + (", flip TTA" if found["best_tta"] else ""),
             found["best_val_acc"], found["best_tests"].get(split, {}), found["wall"],
             ", ".join(f"{v} {k}" for k, v in found["trials"].items())),
            ("search: ensemble", found["ensemble_val_acc"], found["ensemble_tests"].get(split, {}),
             found["wall"], f"{found['members']} members, {found['variant']}")]
    print(f"{'':<44}{'val_acc':>8}{'test_acc':>10}{'macro_f1':>10}{'wall_min':>10}  notes")
    for name, val, test, wall, notes in rows:
        print(f"{name:<44}{val:>8.4f}{test.get('acc', float('nan')):>10.4f}"
              f"{test.get('macro_f1', float('nan')):>10.4f}{wall / 60:>10.1f}  {notes}")
    if split:
        ens, single = found["ensemble_tests"][split]["acc"], found["best_tests"][split]["acc"]
        hand = base["tests"][split]["acc"]
        print(f"ensemble - baseline test accuracy:    {100 * (ens - hand):+.1f} points")
        print(f"ensemble - best single test accuracy: {100 * (ens - single):+.1f} points")
    for name, wall in (("baseline", base["wall"]), ("search", found["wall"])):
        print(f"{name} wall / budget: {wall / (60 * args.budget):.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="training data (default: built-in synthetic faces)")
    p.add_argument("--test", help="labelled test split, scored once after all choices")
    p.add_argument("--budget", type=float, default=45.0, help="minutes per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", default="runs", help="where the search's experiment goes")
    p.add_argument("--skip-baseline", metavar="CONFIG_JSON",
                   help="reuse a finished baseline run's config.json instead of training it")
    p.add_argument("--quick", action="store_true",
                   help="one minute each on 1,500 synthetic faces (for the tests)")
    p.add_argument("search_args", nargs="*", help="extra flags for fer_ray.search (after --)")
    args = p.parse_args()
    if args.quick:
        args.budget, args.data = 1.0, None
        args.search_args = [*args.search_args, "--space", "smoke"]
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = Path(tmp)
        if args.skip_baseline:
            saved = json.loads(Path(args.skip_baseline).read_text())
            base = {"wall": saved.get("wall_seconds", float("nan")),
                    "epochs": saved["config"]["epochs"], "val_acc": saved["best"]["val_acc"],
                    "tests": saved["tests"]}
        else:
            print(f"(a) baseline: fer_ray.train, {args.budget:g} min", flush=True)
            base = baseline(args, work)
        print(f"(b) search: fer_ray.search --time-budget {args.budget:g}", flush=True)
        found = search(args, work)
    report(args, base, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
