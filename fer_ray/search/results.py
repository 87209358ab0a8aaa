"""Turn a Ray Tune ResultGrid into ``results.parquet`` (one row per trial) and a leaderboard.

This module reads what Ray returned; it does not import Ray itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_ray import storage
from fer_ray.config import TrainConfig, to_dict
from fer_ray.experiment import (
    EPOCH_OK,
    TRIAL_NUMBER,
    TRIAL_PREFIX,
    USABLE,
    TrialStatus,
    split_trial_number,
    trial_seed,
)
from fer_ray.space import SearchSpace


def _history(result: Any) -> pd.DataFrame:
    df = result.metrics_dataframe
    return df if df is not None else pd.DataFrame()


def _status(result: Any, history: pd.DataFrame, max_epochs: int, out_of_time: bool
            ) -> TrialStatus:
    if result.error is not None:
        return TrialStatus.ERROR
    flags = set(history.get("status_flag", pd.Series(dtype=str)).dropna())
    for flag in (TrialStatus.INVALID, TrialStatus.DIVERGED, TrialStatus.OOM):
        if flag in flags:
            return flag
    ok = history[history.get("status_flag", EPOCH_OK) == EPOCH_OK] if len(history) else history
    epochs = int(ok["epoch"].max()) if len(ok) else 0
    if epochs == 0:  # nothing trained: cut by the deadline, or failed before epoch 1
        return TrialStatus.OUT_OF_TIME if out_of_time else TrialStatus.ERROR
    # A budgeted trial may plan fewer epochs than max_epochs, and then completes them.
    planned = int(ok["planned_epochs"].iloc[-1]) if "planned_epochs" in ok \
        and ok["planned_epochs"].notna().any() else max_epochs
    if epochs >= planned:
        return TrialStatus.COMPLETED
    return TrialStatus.OUT_OF_TIME if out_of_time else TrialStatus.EARLY_STOPPED


def _error_text(result: Any, history: pd.DataFrame) -> str:
    """The last line of a trial's exception, or the reason an invalid trial gave."""
    if result.error is not None:
        lines = str(result.error).strip().splitlines()
        return lines[-1][:300] if lines else type(result.error).__name__
    if "error" in history and history["error"].notna().any():
        return str(history["error"].dropna().iloc[-1])[:300]
    return ""


def _checkpoint_paths(result: Any, metric: str, mode: str, scheme: str) -> list[dict[str, Any]]:
    """The trial's kept checkpoints, best first: [{path, epoch, metric}]; a path is a local
    folder, or a URI when storage is remote."""
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    sign = -1.0 if mode == "max" else 1.0  # ties: the latest epoch, the one Ray keeps
    kept.sort(key=lambda cm: (sign * float(cm[1][metric]), -int(cm[1].get("epoch", 0))))
    return [{"path": f"{scheme}://{c.path}" if scheme else str(c.path),
             "epoch": int(m.get("epoch", 0)), metric: float(m[metric])} for c, m in kept]


def _column_max(history: pd.DataFrame, column: str, default: float) -> float:
    if column in history and history[column].notna().any():
        return float(history[column].max())
    return default


def _trial_row(result: Any, space: SearchSpace, base: TrainConfig, metric: str, mode: str,
               max_epochs: int, scheme: str, out_of_time: set[str]) -> dict[str, Any]:
    history = _history(result)
    trial_id = Path(result.path).name.removeprefix(TRIAL_PREFIX)
    status = _status(result, history, max_epochs, trial_id in out_of_time)
    params, number = split_trial_number(dict(result.config or {}))
    ok = history[history["status_flag"] == EPOCH_OK] if "status_flag" in history else history
    row: dict[str, Any] = {"trial_id": trial_id, TRIAL_NUMBER: number, "status": status.value,
                           "asha_stopped": status == TrialStatus.EARLY_STOPPED,
                           "val_acc": 0.0, "val_loss": math.inf, "val_macro_f1": 0.0,
                           "best_epoch": 0, "epochs_run": 0, "images_per_s": 0.0}
    if len(ok) and metric in ok:
        latest_first = ok.iloc[::-1]  # ties: the latest epoch, whose checkpoint Ray keeps
        best = latest_first.loc[latest_first[metric].idxmax() if mode == "max"
                                else latest_first[metric].idxmin()]
        row.update({
            "val_acc": float(best["val_acc"]), "val_loss": float(best["val_loss"]),
            "val_macro_f1": float(best["val_macro_f1"]), "best_epoch": int(best["epoch"]),
            "epochs_run": int(ok["epoch"].max()),
            "planned_epochs": int(ok["planned_epochs"].iloc[-1])
            if "planned_epochs" in ok and ok["planned_epochs"].notna().any() else max_epochs,
            "images_per_s": float(ok["images_per_s"].mean()),
        })
    node_ids = set(history["node_id"].dropna()) if "node_id" in history else set()
    checkpoints = _checkpoint_paths(result, metric, mode, scheme) if status in USABLE else []
    row.update({
        "wall_time_s": _column_max(history, "time_total_s", 0.0),
        "node_ids": ",".join(sorted(node_ids)),
        "resumed_from_epoch": int(_column_max(history, "resumed_from", 0)),
        "best_checkpoint": checkpoints[0]["path"] if checkpoints else "",
        "checkpoints_json": json.dumps(checkpoints),
        "error": _error_text(result, history),
    })
    try:  # base already trains for max_epochs; the space fills in the sampled fields
        config = space.to_config(params, base)  # planned_epochs: fewer when budgeted
        config = dataclasses.replace(config, epochs=row.get("planned_epochs", config.epochs),
                                     seed=trial_seed(base.seed, number))
        row["config_json"] = json.dumps(to_dict(config))
    except Exception as exc:  # a trial whose params no longer fit the space
        row["config_json"] = json.dumps({"error": str(exc)})
    row.update({f"param.{k}": v for k, v in params.items()})
    return row


def trial_rows(results: Any, space: SearchSpace, base: TrainConfig, metric: str, mode: str,
               max_epochs: int, scheme: str = "", out_of_time: set[str] | None = None
               ) -> pd.DataFrame:
    """One row per trial: params, resolved config, best metrics, epochs, status, checkpoints.

    scheme: the storage URI scheme ("s3", "file", ...), "" for local storage.
    out_of_time: ids of the trials the deadline stopped. Trials that never ran (created by
    Ray, never started: no report, no error, not cut by the deadline) are left out.
    """
    cut = out_of_time or set()
    ran = [r for r in results if r.error is not None or not _history(r).empty
           or Path(r.path).name.removeprefix(TRIAL_PREFIX) in cut]
    df = pd.DataFrame([_trial_row(r, space, base, metric, mode, max_epochs, scheme,
                                  out_of_time or set()) for r in ran])
    if len(df):
        df = df.sort_values(metric, ascending=mode != "max", kind="stable")
    return df.reset_index(drop=True)


def write_parquet(df: pd.DataFrame, location: str | Path) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)  # fails here, before anything is written
    storage.write_bytes(str(location), buffer.getvalue())


def _short_params(row: pd.Series) -> str:
    filters = [row[c] for c in sorted(k for k in row.index if k.startswith("param.model.filters."))
               if pd.notna(row[c])]
    parts = [f"filters {'/'.join(str(int(f)) for f in filters)}" if filters else ""]
    for key, label in (("param.optim.optimizer", ""), ("param.optim.lr", "lr "),
                       ("param.optim.batch_size", "bs ")):
        if key in row and pd.notna(row[key]):
            value = row[key]
            parts.append(f"{label}{value:.2g}" if isinstance(value, float) else f"{label}{value}")
    return " ".join(p for p in parts if p)


def leaderboard(df: pd.DataFrame, top: int = 10) -> str:
    """The top trials by validation accuracy as a fixed-width table."""
    usable = df[df["status"].isin(USABLE) & (df["epochs_run"] > 0)].head(top)
    if usable.empty:
        return "(no trial finished an epoch)"
    lines = [f"{'rank':>4}  {'trial':<12} {'val_acc':>7} {'val_f1':>7} {'epochs':>6}  "
             f"{'status':<13} params"]
    for rank, (_, row) in enumerate(usable.iterrows(), start=1):
        lines.append(f"{rank:4d}  {row['trial_id']:<12} {row['val_acc']:7.4f} "
                     f"{row['val_macro_f1']:7.4f} {int(row['epochs_run']):6d}  "
                     f"{row['status']:<13} {_short_params(row)}")
    return "\n".join(lines)


def status_counts(df: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in df["status"].value_counts().items()}


def as_jsonable(value: Any) -> Any:
    """numpy scalars -> Python, for json.dumps."""
    if isinstance(value, dict):
        return {k: as_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
