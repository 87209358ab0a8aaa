"""Saved benchmark runs, one per seed, and the table that combines them (``bench_quality``).

A seed run folder holds ``predictions.npz`` and ``summary.json`` (written last: a folder
without it is an unfinished run). ``predictions.npz`` (plain arrays, no pickle):

- ``labels`` (N,) int64: the test set's labels, in file order;
- ``train_copy`` (N,) bool: the test faces that are exact pixel copies of training faces;
- ``probs_<row>`` (N, K) float32 for each row of ``ROWS``: class probabilities per face;
- ``test_fingerprint`` () str: ``fer_ray.data.split_fingerprint`` of the test set.

``summary.json``: the seed, budget, precision, the test set (path, fingerprint, size, copies),
each row's validation accuracy and wall seconds, the TTA each side used, one-line notes,
and free-form records (commands, settings, versions). Runs are combined only when they were
scored on the same test set (same fingerprint) and agree on which faces are copies.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_ray import storage
from fer_ray.data.npz_files import read_npz
from fer_ray.errors import DataError
from fer_ray.metrics import macro_f1
from fer_ray.paths import read_json, shown
from fer_ray.report.stats import mean_sd, paired_bootstrap

PREDICTIONS = "predictions.npz"
SUMMARY = "summary.json"
KIND = "bench_quality seed run"
ROWS = ("baseline", "baseline_same_tta", "best_single", "ensemble")
DIFFS = (("ensemble", "baseline_same_tta"), ("ensemble", "baseline"),
         ("ensemble", "best_single"))  # (b, a): b - a is shown
DIFF_NAMES = {"baseline_same_tta": "ensemble - baseline with the same TTA",
              "baseline": "ensemble - baseline", "best_single": "ensemble - best single model"}
_REQUIRED = ("seed", "budget_min", "precision", "test", "tta", "val_acc", "wall_s", "notes")


@dataclass
class SeedRun:
    """One saved seed run. probs: row -> (N, K) float32; labels (N,) int64; train_copy (N,)."""

    folder: Path
    summary: dict[str, Any]
    labels: np.ndarray
    probs: dict[str, np.ndarray]
    train_copy: np.ndarray

    def correct(self, row: str) -> np.ndarray:
        """(N,) bool: the row's argmax prediction is the label."""
        return np.asarray(self.probs[row].argmax(axis=1) == self.labels)


def save_run(folder: str | Path, labels: np.ndarray, probs: dict[str, np.ndarray],
             train_copy: np.ndarray, summary: dict[str, Any]) -> Path:
    """Write ``predictions.npz`` then ``summary.json`` into ``folder`` (each atomically).

    summary: must hold the keys ``_REQUIRED`` names; ``summary["test"]["fingerprint"]`` is
    also stored in the npz. labels (N,), train_copy (N,) bool, probs: every row of ROWS.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "labels": np.asarray(labels, np.int64), "train_copy": np.asarray(train_copy, bool),
        "test_fingerprint": np.array(str(summary["test"]["fingerprint"]))}
    arrays |= {f"probs_{row}": np.asarray(probs[row], np.float32) for row in ROWS}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    storage.write_bytes(str(folder / PREDICTIONS), buffer.getvalue())
    record = {"kind": KIND, **summary}
    storage.write_bytes(str(folder / SUMMARY), json.dumps(record, indent=2).encode())
    return folder


def load_run(folder: str | Path) -> SeedRun:
    """A saved seed run; DataError naming the file when it is missing or malformed."""
    folder = Path(folder)
    path = folder / SUMMARY
    if not path.is_file():
        raise DataError(f"{shown(folder)}: not a finished bench_quality seed run (no {SUMMARY})")
    summary = read_json(path)
    missing = [k for k in _REQUIRED if not isinstance(summary, dict) or k not in summary]
    if missing or summary.get("kind") != KIND:
        raise DataError(f"{shown(path)}: not a bench_quality summary (missing "
                        f"{', '.join(missing) or 'kind'})")
    keys = ("labels", "train_copy", "test_fingerprint", *[f"probs_{r}" for r in ROWS])
    arrays, _ = read_npz(folder / PREDICTIONS, keys)
    absent = [k for k in keys if k not in arrays]
    if absent:
        raise DataError(f"{shown(folder / PREDICTIONS)}: no {', '.join(absent)}")
    labels = arrays["labels"]
    n = labels.shape[0] if labels.ndim == 1 else -1
    bad = [k for k in keys[3:] if arrays[k].ndim != 2 or arrays[k].shape[0] != n]
    bad += [k for k in keys[:2] if arrays[k].shape != (n,)]
    if n <= 0 or bad:
        raise DataError(f"{shown(folder / PREDICTIONS)}: arrays of inconsistent shapes "
                        f"({', '.join(bad) or 'labels'})")
    if str(arrays["test_fingerprint"]) != str(summary["test"].get("fingerprint")):
        raise DataError(f"{shown(folder)}: {PREDICTIONS} and {SUMMARY} name different test "
                        "sets")
    return SeedRun(folder, summary, labels.astype(np.int64),
                   {r: arrays[f"probs_{r}"] for r in ROWS}, arrays["train_copy"].astype(bool))


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Seed run folders: each path is one (it holds summary.json) or holds ``seed-*/`` ones."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        children = sorted(p.parent for p in path.glob(f"seed-*/{SUMMARY}")) \
            if path.is_dir() and not (path / SUMMARY).exists() else []
        for folder in children or [path]:
            if folder.resolve() not in {f.resolve() for f in found}:
                found.append(folder)
    return found


def load_runs(paths: list[str | Path]) -> list[SeedRun]:
    """The seed runs under ``paths`` (see ``find_runs``), checked to be combinable: the same
    test set (fingerprint) and the same copies of training faces. DataError otherwise."""
    runs = [load_run(folder) for folder in find_runs(paths)]
    if not runs:
        raise DataError("no seed runs given")
    first = runs[0]
    for run in runs[1:]:
        ours, theirs = first.summary["test"]["fingerprint"], run.summary["test"]["fingerprint"]
        if ours != theirs or not np.array_equal(first.labels, run.labels):
            raise DataError(f"{shown(first.folder)} and {shown(run.folder)} were scored on "
                            f"different test sets (fingerprints {ours} and {theirs}); combine "
                            "runs of one test set only")
        if not np.array_equal(first.train_copy, run.train_copy):
            raise DataError(f"{shown(first.folder)} and {shown(run.folder)} disagree on which "
                            "test faces are copies of training faces (different training data)")
    return runs


def tta_name(value: Any) -> str:
    """A side's TTA as words: a bool (flip or not) or a mode string, passed through."""
    if isinstance(value, bool) or value is None:
        return "flip" if value else "none"
    return str(value)


def row_labels(runs: list[SeedRun]) -> dict[str, str]:
    """Row -> table label, naming the TTA each side used (joined with / when seeds differ)."""
    def names(side: str) -> str:
        return "/".join(dict.fromkeys(tta_name(r.summary["tta"][side]) for r in runs))

    base, ens = names("baseline"), names("ensemble")
    return {"baseline": f"baseline (hand-written recipe, {base} TTA)",
            "baseline_same_tta": f"baseline, the ensemble's TTA ({ens})",
            "best_single": f"search: best single model, {ens} TTA",
            "ensemble": f"search: ensemble ({ens} TTA)"}


def row_figures(runs: list[SeedRun], row: str) -> dict[str, np.ndarray]:
    """Per-seed (n_seeds,) figures of a row: test acc, macro-F1, val acc, acc without the
    copies of training faces, wall minutes."""
    keep = ~runs[0].train_copy
    acc, f1, clean = [], [], []
    for run in runs:
        correct = run.correct(row)
        acc.append(correct.mean())
        f1.append(macro_f1(run.labels, run.probs[row].argmax(1), run.probs[row].shape[1]))
        clean.append(correct[keep].mean() if keep.any() else float("nan"))
    return {"test_acc": np.array(acc), "macro_f1": np.array(f1),
            "val_acc": np.array([float(r.summary["val_acc"][row]) for r in runs]),
            "acc_no_copies": np.array(clean),
            "wall_min": np.array([float(r.summary["wall_s"][row]) / 60 for r in runs])}


def _cell(values: np.ndarray, digits: int) -> str:
    """'mean ± sd' of (n_seeds,) values; '-' for the sd of one seed."""
    mean, sd = mean_sd(values)
    spread = "-" if np.isnan(sd) else f"{sd:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"


def _interval(diff: tuple[float, float, float]) -> str:
    """(mean, low, high) in accuracy units -> '+0.62 [-0.41, +1.65]' in points."""
    mean, low, high = (100 * v for v in diff)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def format_combined(runs: list[SeedRun], n_boot: int = 10000, seed: int = 0) -> str:
    """The combined table: per row mean ± sd over seeds; ensemble minus each other side with
    a paired bootstrap interval (``stats.paired_bootstrap``) on all test faces and on those
    that are not copies of training faces; wall / budget per side (mean, then max)."""
    first = runs[0].summary
    test = first["test"]
    copy = runs[0].train_copy
    seeds = ", ".join(str(r.summary["seed"]) for r in runs)
    budgets = "/".join(dict.fromkeys(f"{float(r.summary['budget_min']):g}" for r in runs))
    lines = [f"{len(runs)} seed run(s) (seeds {seeds}); budget {budgets} min per run; "
             f"precision {'/'.join(dict.fromkeys(str(r.summary['precision']) for r in runs))}",
             f"test: {test.get('path', '?')} ({len(copy)} faces, fingerprint "
             f"{test['fingerprint']}); {int(copy.sum())} faces ({test.get('distinct_copies', '?')}"
             " different images) are exact copies of training faces", ""]
    columns = (("test_acc", 4), ("macro_f1", 4), ("val_acc", 4), ("acc_no_copies", 4),
               ("wall_min", 1))
    lines.append(f"{'(mean ± sd over seeds)':<46}" + "".join(f"{c:>18}" for c, _ in columns))
    labels = row_labels(runs)
    for row in ROWS:
        figures = row_figures(runs, row)
        lines.append(f"{labels[row]:<46}" + "".join(f"{_cell(figures[c], d):>18}"
                                                    for c, d in columns))
    lines += ["", f"difference in test accuracy (points; mean over seeds) and its 95 % paired "
              f"bootstrap interval\n({n_boot} resamples of the test faces, the same faces for "
              "both sides and every seed):",
              f"{'':<46}{'all faces':>26}{'without the copies':>26}"]
    keep = ~copy
    for b, a in DIFFS:
        wins = np.stack([r.correct(b) for r in runs])
        base = np.stack([r.correct(a) for r in runs])
        whole = _interval(paired_bootstrap(base, wins, n_boot, seed))
        clean = _interval(paired_bootstrap(base[:, keep], wins[:, keep], n_boot, seed)) \
            if keep.any() else "-"
        lines.append(f"{DIFF_NAMES[a]:<46}{whole:>26}{clean:>26}")
    lines.append("")
    for run in runs:
        notes = run.summary["notes"]
        lines.append(f"seed {run.summary['seed']}: baseline {notes.get('baseline', '')}; "
                     f"search {notes.get('search', '')}")
    for side, row in (("baseline", "baseline"), ("search", "ensemble")):
        ratios = np.array([float(r.summary["wall_s"][row]) / (60 * float(r.summary["budget_min"]))
                           for r in runs])
        lines.append(f"{side} wall / budget: mean {ratios.mean():.3f}, max {ratios.max():.3f}")
    return "\n".join(lines)
