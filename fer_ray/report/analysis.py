"""The report's computations: no drawing and no document writing (no Ray, no matplotlib).

Hyperparameter helpers (which ``param.*`` columns vary, how to treat them, an Optuna study
rebuilt from ``results.parquet`` and its fANOVA importances), the ensemble-size curve, the
"most confused class pairs" and the per-class / per-variant tables. Inputs are plain arrays /
DataFrames: probs (N, C) rows summing to 1, labels (N,) int in 0..C-1, cm (C, C) counts with
rows = true classes and columns = predictions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from fer_ray.data import CLASS_NAMES
from fer_ray.ensemble.selection import greedy_selection
from fer_ray.ensemble.voting import soft_vote
from fer_ray.metrics import accuracy, per_class_scores

# --- hyperparameters: the search's param.* columns --------------------------------------------

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
    varied: list[str] = []
    constant: list[str] = []
    for col in (c for c in results.columns if c.startswith("param.")):
        n = as_category(results[col]).dropna().astype(str).nunique()
        (varied if n >= 2 else constant).append(col)
    return varied, constant


def log_scaled(values: pd.Series) -> bool:
    """Fallback when the search space is unknown: positive numbers over >= 2 decades."""
    clean = values.dropna()
    return bool(len(clean)) and float(clean.min()) > 0 and float(clean.max() / clean.min()) >= 100


def _distribution(values: pd.Series, log: bool) -> BaseDistribution:
    """Optuna distribution spanning a param column's observed values (>= 2 distinct)."""
    if is_categorical(values):
        return CategoricalDistribution(sorted(values.dropna().astype(str).unique()))
    clean = values.dropna().astype(float)
    low, high = float(clean.min()), float(clean.max())
    if bool((clean == clean.round()).all()):
        return IntDistribution(int(low), int(high), log=log and low > 0)  # NaN makes floats
    return FloatDistribution(low, high, log=log and low > 0)


def rebuild_study(results: pd.DataFrame, metric: str = "val_acc",
                  direction: Literal["minimize", "maximize"] = "maximize",
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


def param_importances(results: pd.DataFrame, metric: str = "val_acc",
                      direction: Literal["minimize", "maximize"] = "maximize",
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


# --- ensemble size ----------------------------------------------------------------------------

def ensemble_size_curve(probas: np.ndarray, labels: np.ndarray, max_k: int,
                        seed: int = 0) -> pd.DataFrame:
    """Validation accuracy of uniform top-k and of greedy selection with k steps, k = 1..K.

    probas: (n_models, N, C) stored validation probabilities, best model first.
    Returns columns k, uniform, greedy, greedy_members (distinct models greedy picked).
    """
    rows = []
    for k in range(1, min(max_k, len(probas)) + 1):
        uniform = soft_vote(probas[:k])
        weights = greedy_selection(probas, labels, ensemble_size=k, seed=seed)
        greedy = soft_vote(probas, weights)
        rows.append({"k": k, "uniform": accuracy(labels, uniform.argmax(1)),
                     "greedy": accuracy(labels, greedy.argmax(1)),
                     "greedy_members": int((weights > 0).sum())})
    return pd.DataFrame(rows)


# --- errors and tables ------------------------------------------------------------------------

def most_confused_pairs(cm: np.ndarray, top: int = 3, min_count: int = 1
                        ) -> list[tuple[int, int, float, int]]:
    """The largest off-diagonal entries of the row-normalised confusion matrix.

    cm: (K, K) counts, rows = true class. Returns up to ``top`` tuples (true class, predicted
    class, share of the true class in [0, 1], count), largest share first; pairs with fewer
    than ``min_count`` faces are skipped so one stray face of a rare class does not lead.
    """
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    np.fill_diagonal(share, -1.0)
    order = np.argsort(-share, axis=None, kind="stable")
    pairs: list[tuple[int, int, float, int]] = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if share[i, j] <= 0 or len(pairs) >= top:
            break
        if cm[i, j] >= min_count:
            pairs.append((i, j, float(share[i, j]), int(cm[i, j])))
    return pairs


def confusion_sentence(pair: tuple[int, int, float, int], total: int,
                       classes: Sequence[str] = CLASS_NAMES) -> str:
    """'fear is predicted as sad for 18 % of fear faces (93 of 512)'; classes: the names of
    the class ids (default FER2013's)."""
    i, j, share, count = pair
    true, pred = classes[i], classes[j]
    return f"{true} is predicted as {pred} for {100 * share:.0f} % of {true} faces " \
           f"({count} of {total})"


def per_class_table(cms: dict[str, np.ndarray], classes: Sequence[str] = CLASS_NAMES
                    ) -> pd.DataFrame:
    """Precision / recall / F1 per class for each named confusion matrix, plus support.

    cms: label (e.g. "ensemble") -> (C, C) counts on the same split, C = len(classes)
    (default FER2013's 7). Rows: classes and a "macro" row; values in percent.
    """
    table = pd.DataFrame(index=pd.Index(list(classes), name="class"))
    support = None
    for label, cm in cms.items():
        s = per_class_scores(cm)
        support = s["support"]
        for key, short in (("precision", "P"), ("recall", "R"), ("f1", "F1")):
            table[f"{label} {short} %"] = np.round(100 * s[key], 1)
    if support is not None:
        table.insert(0, "support", support.astype(np.int64))
    macro = table.mean(numeric_only=True).round(1)
    macro["support"] = int(table["support"].sum()) if "support" in table else 0
    table.loc["macro"] = macro
    table["support"] = table["support"].astype(np.int64)
    return table


def variant_table(info: dict[str, Any]) -> pd.DataFrame:
    """Accuracy and macro-F1 (%) of every ensemble variant on validation and each test split,
    from ``ensemble.json``'s info, plus the final ensemble under the adjusted rule."""
    splits = [("validation", info.get("validation", {}), info.get("final_validation", {}))]
    splits += [(k, v, v.get("final", {})) for k, v in info.get("test", {}).items()]
    adjusted = f"{info.get('variant', 'final')}, calibrated, adjusted rule"
    columns: dict[str, dict[str, float]] = {}
    for split, variants, final in splits:
        for label, key in (("acc %", "acc"), ("macro-F1 %", "macro_f1")):
            column = {v: 100 * f[key] for v, f in variants.items() if v != "final" and key in f}
            if f"adjusted_{key}" in final:
                column[adjusted] = 100 * final[f"adjusted_{key}"]
            columns[f"{split} {label}"] = column
    table = pd.DataFrame(columns)
    table.index.name = "variant"
    return table


def summarize(runs: pd.DataFrame, text: bool = True) -> pd.DataFrame:
    """Per variant (in run order): mean and std over seeds of val/test accuracy, epochs run
    and seconds. text=True: one 'mean ± std' string per metric (accuracies in %);
    text=False: numeric '<metric> mean' and '<metric> std' columns (accuracies as fractions).
    """
    metrics = [m for m in ("val_acc", *sorted(c for c in runs.columns
                                              if c.startswith("test_acc.")),
                           "epochs_run", "seconds") if m in runs.columns]
    order = list(dict.fromkeys(runs["variant"]))
    grouped = runs.groupby("variant", sort=False)[metrics]
    mean, std = grouped.mean().loc[order], grouped.std(ddof=1).loc[order]
    if not text:
        table = pd.concat({f"{m} mean": mean[m] for m in metrics} |
                          {f"{m} std": std[m] for m in metrics}, axis=1)
        table["seeds"] = runs.groupby("variant", sort=False).size().loc[order]
        return table
    table = pd.DataFrame(index=pd.Index(order, name="variant"))
    for m in metrics:
        scale, fmt = (100.0, "{:.1f} ± {:.1f}") if "acc" in m else (1.0, "{:.1f} ± {:.1f}")
        label = {"val_acc": "val acc %", "epochs_run": "epochs run", "seconds": "seconds"}.get(
            m, f"{m.removeprefix('test_acc.')} acc %" if m.startswith("test_acc.") else m)
        table[label] = [fmt.format(scale * a, scale * (0.0 if np.isnan(b) else b))
                        for a, b in zip(mean[m], std[m], strict=True)]
    table["seeds"] = runs.groupby("variant", sort=False).size().loc[order].to_numpy()
    return table
