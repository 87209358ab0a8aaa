"""Turn a Ray Tune ResultGrid into ``results.parquet`` (one row per trial) and a leaderboard.

This module reads what Ray returned; it does not import Ray itself.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_ray import storage
from fer_ray.config import TrainConfig, to_dict
from fer_ray.space import SearchSpace

# Statuses in results.parquet. Only completed and early_stopped trials may enter an ensemble.
USABLE = ("completed", "early_stopped")


def _history(result: Any) -> pd.DataFrame:
    df = result.metrics_dataframe
    return df if df is not None else pd.DataFrame()


def _status(result: Any, history: pd.DataFrame, max_epochs: int) -> str:
    if result.error is not None:
        return "error"
    flags = set(history.get("status_flag", pd.Series(dtype=str)).dropna())
    for flag in ("invalid", "diverged"):
        if flag in flags:
            return flag
    ok = history[history.get("status_flag", "ok") == "ok"] if len(history) else history
    epochs = int(ok["epoch"].max()) if len(ok) else 0
    if epochs == 0:
        return "error"
    return "completed" if epochs >= max_epochs else "early_stopped"


def _error_text(result: Any, history: pd.DataFrame) -> str:
    """The last line of a trial's exception, or the reason an invalid trial gave."""
    if result.error is not None:
        lines = str(result.error).strip().splitlines()
        return lines[-1][:300] if lines else type(result.error).__name__
    if "error" in history and history["error"].notna().any():
        return str(history["error"].dropna().iloc[-1])[:300]
    return ""


def _best_checkpoint_path(result: Any, metric: str, mode: str, scheme: str) -> str:
    """The best checkpoint's folder: a local path, or a URI when storage is remote."""
    try:
        checkpoint = result.get_best_checkpoint(metric, mode)
    except (RuntimeError, ValueError, KeyError):
        return ""
    if checkpoint is None:
        return ""
    return f"{scheme}://{checkpoint.path}" if scheme else str(checkpoint.path)


def _column_max(history: pd.DataFrame, column: str, default: float) -> float:
    if column in history and history[column].notna().any():
        return float(history[column].max())
    return default


def _trial_row(result: Any, space: SearchSpace, base: TrainConfig, metric: str, mode: str,
               max_epochs: int, scheme: str) -> dict[str, Any]:
    history = _history(result)
    status = _status(result, history, max_epochs)
    params = dict(result.config or {})
    ok = history[history["status_flag"] == "ok"] if "status_flag" in history else history
    row: dict[str, Any] = {"trial_id": Path(result.path).name.removeprefix("trial_"),
                           "status": status, "asha_stopped": status == "early_stopped",
                           "val_acc": 0.0, "val_loss": math.inf, "val_macro_f1": 0.0,
                           "best_epoch": 0, "epochs_run": 0, "images_per_s": 0.0}
    if len(ok) and metric in ok:
        best = ok.loc[ok[metric].idxmax() if mode == "max" else ok[metric].idxmin()]
        row.update({
            "val_acc": float(best["val_acc"]), "val_loss": float(best["val_loss"]),
            "val_macro_f1": float(best["val_macro_f1"]), "best_epoch": int(best["epoch"]),
            "epochs_run": int(ok["epoch"].max()),
            "images_per_s": float(ok["images_per_s"].mean()),
        })
    node_ids = set(history["node_id"].dropna()) if "node_id" in history else set()
    row.update({
        "wall_time_s": _column_max(history, "time_total_s", 0.0),
        "node_ids": ",".join(sorted(node_ids)),
        "resumed_from_epoch": int(_column_max(history, "resumed_from", 0)),
        "best_checkpoint": _best_checkpoint_path(result, metric, mode, scheme)
        if status in USABLE else "",
        "error": _error_text(result, history),
    })
    try:  # base already trains for max_epochs; the space fills in the sampled fields
        row["config_json"] = json.dumps(to_dict(space.to_config(params, base)))
    except Exception as exc:  # a trial whose params no longer fit the space
        row["config_json"] = json.dumps({"error": str(exc)})
    row.update({f"param.{k}": v for k, v in params.items()})
    return row


def trial_rows(results: Any, space: SearchSpace, base: TrainConfig, metric: str, mode: str,
               max_epochs: int, scheme: str = "") -> pd.DataFrame:
    """One row per trial: params, resolved config, best metrics, epochs, status, checkpoint.

    scheme: the storage URI scheme ("s3", "file", ...), "" for local storage.
    """
    df = pd.DataFrame([_trial_row(r, space, base, metric, mode, max_epochs, scheme)
                       for r in results])
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
    usable = df[df["status"].isin(USABLE)].head(top)
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
