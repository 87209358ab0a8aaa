"""The report's figures (no Ray, Agg backend); the computations behind them are in
``fer_ray.report.analysis``.

Every ``plot_*`` function writes one PNG (dpi 120, 6-8 inches wide) and closes its figure.
Accuracies are drawn in percent. Inputs are plain arrays / DataFrames:
probs (N, C) rows summing to 1, labels (N,) int in 0..C-1, cm (C, C) counts with rows = true
classes and columns = predictions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: must run on machines without a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from fer_ray.data import CLASS_NAMES
from fer_ray.ensemble.calibration import expected_calibration_error, reliability_curve
from fer_ray.ensemble.decision import accuracy_coverage_curve, confidence
from fer_ray.experiment import TrialStatus
from fer_ray.metrics import accuracy
from fer_ray.report.analysis import (
    as_category,
    is_categorical,
)

DPI = 120
WIDTH = 8.0  # inches: fits a page at full width
USABLE_COLOR, STOPPED_COLOR, FAILED_COLOR = "tab:blue", "tab:orange", "tab:red"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_class_distribution(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars of class ratios per split; table from ``fer_ray.data.class_distribution``.

    Ratios (not counts) so a 3,000-image test split and a 25,000-image train split compare.
    """
    splits = [c[:-2] for c in table.columns if c.endswith(" %")]
    classes = [c for c in table.index if c != "total"]
    fig, ax = plt.subplots(figsize=(WIDTH, 4.0))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(classes))
    for i, split in enumerate(splits):
        n = int(table.loc["total", f"{split} n"])
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, table.loc[classes, f"{split} %"],
               width, label=f"{split} (n={n:,})")
    ax.set_xticks(x, classes)
    ax.set_ylabel("share of the split (%)")
    ax.set_title("Class distribution per split")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, title: str, path: Path,
                   classes: Sequence[str] = CLASS_NAMES) -> Path:
    """Counts (left) and row-normalised percentages (right) of a (C, C) confusion matrix,
    C = len(classes) (default FER2013's 7)."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(100.0 * cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 4.3))
    for ax, values, label, fmt in ((axes[0], cm, "count", "{:.0f}"),
                                   (axes[1], norm, "% of true class", "{:.0f}")):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
        top = float(values.max()) or 1.0
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > 0.6 * top else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    axes[0].set_title("counts", fontsize=10)
    axes[1].set_title("row-normalised (recall on the diagonal)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_learning_curves(histories: Mapping[str, pd.DataFrame], results: pd.DataFrame,
                         path: Path, top: int = 8, rungs: Sequence[int] = ()) -> Path:
    """Validation accuracy per epoch: the ``top`` trials in colour, the rest in grey.

    histories: trial id -> per-epoch rows (epoch, val_acc). A trial ASHA stopped gets a red
    ring at its last epoch; ``rungs`` (the epochs where ASHA compares trials) are dotted.
    """
    order = [str(t) for t in results["trial_id"] if str(t) in histories]
    stopped = set(results.loc[results["asha_stopped"].astype(bool), "trial_id"].astype(str))
    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    for rung in rungs:
        ax.axvline(rung, color="grey", ls=":", lw=0.8)
    for rank, trial in enumerate(order):
        h = histories[trial]
        if h.empty:
            continue
        pct = 100 * h["val_acc"]
        if rank < top:
            ax.plot(h["epoch"], pct, marker="o", ms=4, lw=1.5, label=f"#{rank + 1} {trial}")
        else:
            ax.plot(h["epoch"], pct, color="0.7", lw=0.8, zorder=1)
        if trial in stopped:
            # A hollow ring, so the trial's own coloured dot stays visible inside it.
            ax.plot(h["epoch"].iloc[-1], pct.iloc[-1], "o", mfc="none", mec=FAILED_COLOR,
                    ms=11, mew=1.8, zorder=5)
    if stopped & set(order):
        ax.plot([], [], "o", mfc="none", mec=FAILED_COLOR, ms=11, mew=1.8,
                label="stopped by ASHA")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    extra = f"; {len(order) - top} more in grey" if len(order) > top else ""
    ax.set_title(f"Learning curves of the top {min(top, len(order))} trials{extra}"
                 + ("; dotted: ASHA rungs" if rungs else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return _save(fig, path)


def plot_search_progress(results: pd.DataFrame, path: Path) -> Path:
    """Best val accuracy of each trial in launch order (column ``order``), and the running best.

    results: one row per trial with order, val_acc, status.
    """
    df = results.sort_values("order")
    fig, ax = plt.subplots(figsize=(WIDTH, 4.0))
    colors: dict[str, str] = {TrialStatus.COMPLETED: USABLE_COLOR,
                             TrialStatus.EARLY_STOPPED: STOPPED_COLOR}
    for status, group in df.groupby("status"):
        ax.scatter(group["order"], 100 * group["val_acc"], s=30,
                   color=colors.get(str(status), FAILED_COLOR), label=str(status), zorder=3)
    ax.step(df["order"], 100 * df["val_acc"].cummax(), where="post", color="black", lw=1,
            label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial, in launch order")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title("Search progress")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def few_levels(values: pd.Series, max_levels: int = 6) -> bool:
    """Categories, or a few round numbers (choices such as batch size 32/64/128): drawn as
    strips, one column per value. A few continuous draws (0.0799986) stay a scatter plot."""
    if is_categorical(values):
        return True
    clean = values.dropna().astype(float).unique()
    return len(clean) <= max_levels and all(float(f"{v:.3g}") == v for v in clean)


def _level_label(value: object) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def plot_hyperparameters(results: pd.DataFrame, params: Sequence[str], path: Path,
                         log_columns: Collection[str] = ()) -> Path:
    """Small multiples: each sampled hyperparameter vs best val accuracy (usable trials).

    Numbers are scatter plots (log axis for ``log_columns``: log-uniform params), categories and
    few-valued choices strip plots.
    """
    n = max(len(params), 1)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 2.1 * rows + 0.6), squeeze=False,
                             sharey=True)
    rng = np.random.default_rng(0)  # jitter only: fixed so the figure is reproducible
    for ax, col in zip(axes.flat, params, strict=False):
        values = as_category(results[col])
        keep = values.notna()
        y = 100 * results.loc[keep, "val_acc"]
        if few_levels(values):
            levels = sorted(values[keep].unique(), key=lambda v: (isinstance(v, str), v))
            pos = values[keep].map({v: i for i, v in enumerate(levels)}).astype(float)
            ax.scatter(pos + rng.uniform(-0.15, 0.15, len(pos)), y, s=14, alpha=0.8)
            ax.set_xticks(range(len(levels)), [_level_label(v) for v in levels], fontsize=7)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        else:
            ax.scatter(values[keep].astype(float), y, s=14, alpha=0.8)
            if col in log_columns:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel(col.removeprefix("param."), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(params):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("val acc (%)", fontsize=8)
    fig.suptitle("Hyperparameters vs best validation accuracy (one dot per usable trial)",
                 fontsize=11)
    return _save(fig, path)


def plot_importance(importances: Mapping[str, float], path: Path) -> Path:
    """Horizontal bars of Optuna fANOVA importances (fractions summing to 1), largest on top."""
    names = list(importances)[::-1]
    height = max(3.2, 0.35 * len(names) + 1.2)  # stays readable with one or two params
    fig, ax = plt.subplots(figsize=(WIDTH, height))
    ax.barh([n.removeprefix("param.") for n in names],
            [100 * importances[n] for n in names], color=USABLE_COLOR)
    ax.set_xlabel("importance for validation accuracy (% of explained variance)")
    ax.set_title("Hyperparameter importance (Optuna fANOVA on the search's trials)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_ensemble_size(curve: pd.DataFrame, chosen_acc: float | None, path: Path) -> Path:
    """Accuracy vs ensemble size from ``ensemble_size_curve``; the saved ensemble as a line."""
    fig, ax = plt.subplots(figsize=(WIDTH, 4.0))
    ax.plot(curve["k"], 100 * curve["uniform"], "o-", label="uniform vote over the top k")
    ax.plot(curve["k"], 100 * curve["greedy"], "s-",
            label="greedy selection, k steps (label: distinct models)")
    previous = 0
    for k, acc, members in zip(curve["k"], curve["greedy"], curve["greedy_members"],
                               strict=True):
        if members != previous:  # label only where greedy adds a new model
            ax.annotate(str(members), (k, 100 * acc), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
            previous = members
    if chosen_acc is not None:
        ax.axhline(100 * chosen_acc, color="black", ls="--", lw=1,
                   label=f"saved ensemble ({100 * chosen_acc:.1f} %)")
    ax.set_xlabel("ensemble size k (models)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_xticks(curve["k"])
    ax.set_title("Accuracy vs ensemble size (stored validation probabilities)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_weights(names: Sequence[str], weights: np.ndarray, val_accs: Sequence[float],
                 path: Path) -> Path:
    """Bars of the saved ensemble's member weights (n_members,), each labelled with val acc."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.75, 3.2))
    bars = ax.bar(list(names), weights, color=USABLE_COLOR)
    for bar, acc in zip(bars, val_accs, strict=True):
        ax.annotate(f"val {100 * acc:.1f} %", (bar.get_x() + bar.get_width() / 2,
                                               bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(1.0, float(weights.max()) * 1.15))
    ax.set_xlabel("member (trial id)")
    ax.set_ylabel("weight in the soft vote")
    ax.set_title("Ensemble member weights (chosen on validation)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_calibration(splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     temperature: float, path: Path, min_count: int = 10) -> Path:
    """Reliability diagrams per split: split -> (raw probs, calibrated probs, labels).

    10 equal-width confidence bins; bins with fewer than ``min_count`` faces are not drawn
    (ECE, in the legend, still counts them).
    """
    n = len(splits)
    fig, axes = plt.subplots(1, n, figsize=(max(6.0, min(WIDTH, 3.3 * n + 0.5)), 3.8),
                             squeeze=False)
    for ax, (name, (raw, cal, labels)) in zip(axes[0], splits.items(), strict=True):
        ax.plot([0, 100], [0, 100], color="grey", ls="--", lw=1, label="perfect")
        for probs, label, marker in ((raw, "before", "o"), (cal, f"after T={temperature:.2f}",
                                                             "s")):
            curve = reliability_curve(probs, labels, n_bins=10)
            ece = expected_calibration_error(probs, labels)
            few = curve["counts"] < min_count  # a bin of 2 faces is noise, not calibration
            conf = np.where(few, np.nan, curve["confidence"])
            ax.plot(100 * conf, 100 * curve["accuracy"], marker=marker, ms=4,
                    label=f"{label} (ECE {100 * ece:.1f} %)")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("confidence (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Ensemble calibration before / after temperature scaling", fontsize=11)
    return _save(fig, path)


def plot_recall_rules(recalls: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path,
                      classes: Sequence[str] = CLASS_NAMES) -> Path:
    """Grouped bars of per-class recall (C,) under argmax vs the logit-adjusted rule, by
    split; C = len(classes) (default FER2013's 7)."""
    n = len(recalls)
    fig, axes = plt.subplots(n, 1, figsize=(WIDTH, 2.6 * n + 0.4), squeeze=False)
    x = np.arange(len(classes))
    for ax, (name, (plain, adjusted)) in zip(axes[:, 0], recalls.items(), strict=True):
        ax.bar(x - 0.2, 100 * plain, 0.4, label="argmax")
        ax.bar(x + 0.2, 100 * adjusted, 0.4, label="adjusted (class biases)")
        ax.set_xticks(x, classes)
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 119)  # headroom so the legend never hides a bar
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig.suptitle("Per-class recall: argmax vs logit-adjusted decision rule", fontsize=11)
    return _save(fig, path)


def plot_coverage(splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  threshold: float | None, path: Path) -> Path:
    """Accuracy on the kept faces vs coverage when deferring the least confident ones.

    splits: name -> (calibrated probs (N, C), labels (N,)); the saved threshold is marked.
    """
    fig, ax = plt.subplots(figsize=(WIDTH, 4.2))
    for i, (name, (probs, labels)) in enumerate(splits.items()):
        curve = accuracy_coverage_curve(probs, labels)
        line = ax.plot(100 * curve["coverage"], 100 * curve["accuracy"], label=name)[0]
        if threshold is not None:
            kept = confidence(probs) >= threshold
            if kept.any():
                cov = 100 * kept.mean()
                acc = 100 * accuracy(labels[kept], probs[kept].argmax(1))
                ax.plot(cov, acc, "o", color=line.get_color(), ms=7)
                ax.annotate(f"{cov:.0f} % kept, {acc:.1f} % acc", (cov, acc),
                            textcoords="offset points", xytext=(-8, -14 - 12 * i), ha="right",
                            fontsize=8, color=line.get_color())
    if threshold is not None:
        ax.plot([], [], "o", color="black", label=f"saved threshold (p ≥ {threshold:.2f})")
    ax.set_xlabel("coverage: faces answered (%)")
    ax.set_ylabel("accuracy on answered faces (%)")
    ax.set_xlim(0, 102)
    ax.set_title("Deferral: accuracy vs coverage (least confident faces deferred first)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ablation(summary: pd.DataFrame, path: Path) -> Path:
    """Bars (mean ± std over seeds) of val and test accuracy per ablation variant.

    summary: one row per variant with columns '<metric> mean' / '<metric> std' for
    val_acc and any test_acc.* columns.
    """
    metrics = [m[:-5] for m in summary.columns if m.endswith(" mean")
               and (m.startswith("val_acc") or m.startswith("test_acc"))]
    x = np.arange(len(summary))
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(WIDTH, 4.2))
    for i, metric in enumerate(metrics):
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, 100 * summary[f"{metric} mean"], width,
               yerr=100 * summary[f"{metric} std"].fillna(0.0), capsize=4,
               label=metric.replace("_acc", " accuracy").replace(".", ": "))
    ax.set_xticks(x, [str(v).replace(", ", "\n") for v in summary.index], fontsize=8)
    ax.set_ylabel("accuracy (%), mean ± std over seeds")
    ax.set_ylim(0, None)  # bars start at zero, so their lengths compare honestly
    ax.set_title("Ablation: augmentation and early stopping")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
