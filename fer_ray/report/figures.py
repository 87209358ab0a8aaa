"""The report's figures, and the pure computations behind them (no Ray, Agg backend).

Every ``plot_*`` function writes one PNG (dpi 120, 6-8 inches wide) and closes its figure.
Accuracies are drawn in percent. Inputs are plain arrays / DataFrames:
probs (N, 7) rows summing to 1, labels (N,) int in 0..6, cm (7, 7) counts with rows = true
classes and columns = predictions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: must run on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.distributions import (  # noqa: E402
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from fer_ray.data import CLASS_NAMES  # noqa: E402
from fer_ray.ensemble.calibration import expected_calibration_error, reliability_curve  # noqa: E402
from fer_ray.ensemble.decision import accuracy_coverage_curve, confidence  # noqa: E402
from fer_ray.ensemble.selection import greedy_selection  # noqa: E402
from fer_ray.metrics import accuracy  # noqa: E402

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


def plot_confusion(cm: np.ndarray, title: str, path: Path) -> Path:
    """Counts (left) and row-normalised percentages (right) of a (7, 7) confusion matrix."""
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
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
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
    cross at its last epoch; ``rungs`` (the epochs where ASHA compares trials) are dotted.
    """
    order = [str(t) for t in results["trial_id"] if str(t) in histories]
    stopped = set(results.loc[results["asha_stopped"].astype(bool), "trial_id"].astype(str))
    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    for rung in rungs:
        ax.axvline(rung, color="grey", ls=":", lw=0.8)
    marked = False
    for rank, trial in enumerate(order):
        h = histories[trial]
        if h.empty:
            continue
        pct = 100 * h["val_acc"]
        if rank < top:
            ax.plot(h["epoch"], pct, marker="o", ms=3, lw=1.5, label=f"#{rank + 1} {trial}")
        else:
            ax.plot(h["epoch"], pct, color="0.7", lw=0.8, zorder=1)
        if trial in stopped:
            ax.plot(h["epoch"].iloc[-1], pct.iloc[-1], "x", color=FAILED_COLOR, ms=8, mew=2,
                    zorder=5, label=None if marked else "stopped by ASHA")
            marked = True
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
    colors = {"completed": USABLE_COLOR, "early_stopped": STOPPED_COLOR}
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


def is_categorical(values: pd.Series) -> bool:
    """Strings, booleans and lists are categories; numbers are axes."""
    clean = values.dropna()
    return not (pd.api.types.is_numeric_dtype(clean) and not pd.api.types.is_bool_dtype(clean))


def as_category(values: pd.Series) -> pd.Series:
    """Values as hashable labels: lists / arrays (e.g. convs_per_block [1]) become strings."""
    return values.map(lambda v: str(list(v)) if isinstance(v, (list, tuple, np.ndarray))
                      else v)


def varied_params(results: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(param columns with >= 2 distinct values, constant param columns)."""
    varied, constant = [], []
    for col in (c for c in results.columns if c.startswith("param.")):
        n = as_category(results[col]).dropna().astype(str).nunique()
        (varied if n >= 2 else constant).append(col)
    return varied, constant


def log_scaled(values: pd.Series) -> bool:
    """Fallback when the search space is unknown: positive numbers over >= 2 decades."""
    clean = values.dropna()
    return bool(len(clean)) and float(clean.min()) > 0 and float(clean.max() / clean.min()) >= 100


def few_levels(values: pd.Series, max_levels: int = 6) -> bool:
    """Categories, or numbers with few distinct values (choices such as batch size 32/64/128):
    drawn as strips, one column per value."""
    return is_categorical(values) or values.dropna().nunique() <= max_levels


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


def _distribution(values: pd.Series, log: bool) -> BaseDistribution:
    """Optuna distribution spanning a param column's observed values (>= 2 distinct)."""
    if is_categorical(values):
        return CategoricalDistribution(sorted(values.dropna().astype(str).unique()))
    clean = values.dropna().astype(float)
    low, high = float(clean.min()), float(clean.max())
    if bool((clean == clean.round()).all()):
        return IntDistribution(int(low), int(high), log=log and low > 0)  # NaN makes floats
    return FloatDistribution(low, high, log=log and low > 0)


def rebuild_study(results: pd.DataFrame, metric: str = "val_acc", direction: str = "maximize",
                  log_columns: Collection[str] = ()) -> optuna.Study:
    """An in-memory Optuna study with one finished trial per usable row of ``results``.

    Distributions are inferred from the varied ``param.*`` columns (categories for strings,
    booleans and lists; ints; floats; log scale for ``log_columns``). A param missing
    in a row (a conditional one, e.g. the 3rd block's filters) is left out of that trial.
    """
    params, _ = varied_params(results)
    dists = {p: _distribution(as_category(results[p]), p in log_columns) for p in params}
    study = optuna.create_study(direction=direction)
    for _, row in results.iterrows():
        if not np.isfinite(row[metric]):
            continue
        values: dict[str, object] = {}
        for p, dist in dists.items():
            v = as_category(pd.Series([row[p]])).iloc[0]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            values[p] = str(v) if isinstance(dist, CategoricalDistribution) else \
                int(v) if isinstance(dist, IntDistribution) else float(v)
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={p: dists[p] for p in values}, value=float(row[metric])))
    return study


def param_importances(results: pd.DataFrame, metric: str = "val_acc", direction: str = "maximize",
                      min_trials: int = 4, log_columns: Collection[str] = ()
                      ) -> tuple[dict[str, float], str]:
    """(importance per param column, best first, summing to 1; a note when it cannot be done).

    fANOVA over the params every usable trial has; seeded so the report is reproducible.
    """
    if len(results) < min_trials:
        return {}, (f"only {len(results)} usable trial(s); importance needs at least "
                    f"{min_trials}")
    if not varied_params(results)[0]:
        return {}, "no hyperparameter varied across the usable trials"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" chatter
    try:
        study = rebuild_study(results, metric, direction, log_columns)
        raw = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:  # e.g. no param shared by every trial
        return {}, f"Optuna could not compute importances ({exc})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not raw:
        return {}, "no hyperparameter is shared by every usable trial"
    return {k: float(v) for k, v in raw.items()}, ""


def plot_importance(importances: Mapping[str, float], path: Path) -> Path:
    """Horizontal bars of Optuna fANOVA importances (fractions summing to 1), largest on top."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.35 * len(names) + 1.2))
    ax.barh([n.removeprefix("param.") for n in names],
            [100 * importances[n] for n in names], color=USABLE_COLOR)
    ax.set_xlabel("importance for validation accuracy (% of explained variance)")
    ax.set_title("Hyperparameter importance (Optuna fANOVA on the search's trials)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def ensemble_size_curve(probas: np.ndarray, labels: np.ndarray, max_k: int,
                        seed: int = 0) -> pd.DataFrame:
    """Validation accuracy of uniform top-k and of greedy selection with k steps, k = 1..K.

    probas: (n_models, N, 7) stored validation probabilities, best model first.
    Returns columns k, uniform, greedy, greedy_members (distinct models greedy picked).
    """
    rows = []
    for k in range(1, min(max_k, len(probas)) + 1):
        uniform = probas[:k].mean(axis=0)
        weights = greedy_selection(probas, labels, ensemble_size=k, seed=seed)
        greedy = np.tensordot(weights, probas, axes=1)
        rows.append({"k": k, "uniform": accuracy(labels, uniform.argmax(1)),
                     "greedy": accuracy(labels, greedy.argmax(1)),
                     "greedy_members": int((weights > 0).sum())})
    return pd.DataFrame(rows)


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
                     temperature: float, path: Path) -> Path:
    """Reliability diagrams per split: split -> (raw probs, calibrated probs, labels)."""
    n = len(splits)
    fig, axes = plt.subplots(1, n, figsize=(max(6.0, min(WIDTH, 3.3 * n + 0.5)), 3.8),
                             squeeze=False)
    for ax, (name, (raw, cal, labels)) in zip(axes[0], splits.items(), strict=True):
        ax.plot([0, 100], [0, 100], color="grey", ls="--", lw=1, label="perfect")
        for probs, label, marker in ((raw, "before", "o"), (cal, f"after T={temperature:.2f}",
                                                             "s")):
            curve = reliability_curve(probs, labels, n_bins=10)
            ece = expected_calibration_error(probs, labels)
            ax.plot(100 * curve["confidence"], 100 * curve["accuracy"], marker=marker, ms=4,
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


def plot_recall_rules(recalls: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Grouped bars of per-class recall (7,) under argmax vs the logit-adjusted rule, by split."""
    n = len(recalls)
    fig, axes = plt.subplots(n, 1, figsize=(WIDTH, 2.6 * n + 0.4), squeeze=False)
    x = np.arange(len(CLASS_NAMES))
    for ax, (name, (plain, adjusted)) in zip(axes[:, 0], recalls.items(), strict=True):
        ax.bar(x - 0.2, 100 * plain, 0.4, label="argmax")
        ax.bar(x + 0.2, 100 * adjusted, 0.4, label="adjusted (class biases)")
        ax.set_xticks(x, CLASS_NAMES)
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 105)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Per-class recall: argmax vs logit-adjusted decision rule", fontsize=11)
    return _save(fig, path)


def plot_coverage(splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  threshold: float | None, path: Path) -> Path:
    """Accuracy on the kept faces vs coverage when deferring the least confident ones.

    splits: name -> (calibrated probs (N, 7), labels (N,)); the saved threshold is marked.
    """
    fig, ax = plt.subplots(figsize=(WIDTH, 4.2))
    for name, (probs, labels) in splits.items():
        curve = accuracy_coverage_curve(probs, labels)
        line = ax.plot(100 * curve["coverage"], 100 * curve["accuracy"], label=name)[0]
        if threshold is not None:
            kept = confidence(probs) >= threshold
            if kept.any():
                cov = 100 * kept.mean()
                acc = 100 * accuracy(labels[kept], probs[kept].argmax(1))
                ax.plot(cov, acc, "o", color=line.get_color(), ms=7)
                ax.annotate(f"{cov:.0f} % kept, {acc:.1f} % acc", (cov, acc),
                            textcoords="offset points", xytext=(-8, -14), ha="right",
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
    low = min(float((100 * summary[f"{m} mean"]).min()) for m in metrics) if metrics else 0.0
    ax.set_ylim(max(0.0, low - 15), None)
    ax.set_title("Ablation: augmentation and early stopping")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
