"""What a report draws from, read from one finished experiment folder: its record and
results, each trial's history, the search's data, and the probabilities of its ensemble and
best single model on every labelled split. No Ray: it reads what the search wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fer_ray.data import CLASS_NAMES, FerData, Split, fingerprint
from fer_ray.data.loaders import read_split
from fer_ray.data.votes import with_votes
from fer_ray.ensemble.calibration import temperature_scale
from fer_ray.ensemble.model import ENSEMBLE_JSON, Ensemble
from fer_ray.ensemble.voting import soft_vote
from fer_ray.errors import ConfigError, DataError, FerRayError
from fer_ray.experiment import (
    EPOCH_OK,
    RESULTS_PARQUET,
    USABLE,
    SearchSettings,
    base_config,
    checkpoint_location,
    load_search_data,
    read_search_json,
    settings_from_record,
    trial_dir,
)
from fer_ray.models.inference import predict_probas, resolve_device
from fer_ray.models.io import VAL_LABELS, VAL_PROBS, load_model
from fer_ray.paths import check_name
from fer_ray.space import load_space

MAX_CANDIDATES = 20  # as many trials as an ensemble build considers


@dataclass
class Inputs:
    """Everything the report draws from. probs: split -> (N, C); labels: split -> (N,);
    C = len(classes)."""

    experiment: Path
    record: dict[str, Any]
    settings: SearchSettings
    results: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    data: FerData | None = None
    ensemble: Ensemble | None = None
    single_id: str = ""
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    ens_raw: dict[str, np.ndarray] = field(default_factory=dict)  # before temperature
    ens_cal: dict[str, np.ndarray] = field(default_factory=dict)  # after temperature
    single: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names: the ensemble's, else the data's, else FER2013's."""
        if self.ensemble is not None:
            return self.ensemble.classes
        return self.data.classes if self.data is not None else CLASS_NAMES


def read_history(trial_dir: Path) -> pd.DataFrame:
    """Per-epoch rows of a trial (result.json lines, else progress.csv); empty if neither.

    Only rows with status_flag EPOCH_OK are epochs (diverged/invalid reports are not).
    """
    rows: list[dict[str, Any]] = []
    result = trial_dir / "result.json"
    if result.is_file():
        for line in result.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        df = pd.DataFrame(rows)
    elif (trial_dir / "progress.csv").is_file():
        df = pd.read_csv(trial_dir / "progress.csv")
    else:
        return pd.DataFrame(columns=["epoch", "val_acc"])
    if "status_flag" in df:
        df = df[df["status_flag"] == EPOCH_OK]
    if not {"epoch", "val_acc"} <= set(df.columns):
        return pd.DataFrame(columns=["epoch", "val_acc"])
    return df.dropna(subset=["epoch", "val_acc"]).sort_values("epoch").reset_index(drop=True)


def launch_order(results: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.Series:
    """1-based launch rank of each results row: start = first report's timestamp minus its
    time_total_s. Without timestamps for every trial, the results' row order is used."""
    starts = []
    for trial in results["trial_id"].astype(str):
        h = histories.get(trial, pd.DataFrame())
        if h.empty or not {"timestamp", "time_total_s"} <= set(h.columns):
            return pd.Series(np.arange(1, len(results) + 1), index=results.index)
        starts.append(float(h["timestamp"].iloc[0]) - float(h["time_total_s"].iloc[0]))
    ranks = pd.Series(starts, index=results.index).rank(method="first")
    return ranks.astype(int)


def checkpoint_of(experiment: Path, row: pd.Series) -> Path | None:
    """A row's best checkpoint, inside the experiment (``checkpoint_location``); None when
    the row has none or the folder is gone."""
    if not row.get("best_checkpoint"):
        return None
    path = Path(checkpoint_location(experiment, str(row["trial_id"]),
                                    str(row["best_checkpoint"])))
    return path if path.is_dir() else None


def stored_val_probas(inputs: Inputs) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, N_val, C) stored validation probabilities of the best usable trials, best first,
    (N_val,) their labels and the trial ids; empty when no checkpoint holds them."""
    probas: list[np.ndarray] = []
    names: list[str] = []
    labels = np.zeros(0, dtype=np.int64)
    for _, row in usable(inputs.results).head(MAX_CANDIDATES).iterrows():
        ckpt = checkpoint_of(inputs.experiment, row)
        if ckpt is None or not (ckpt / VAL_PROBS).is_file():
            continue
        probs, lab = np.load(ckpt / VAL_PROBS), np.load(ckpt / VAL_LABELS)
        if probas and (probs.shape != probas[0].shape or not np.array_equal(lab, labels)):
            continue  # not the same validation split: cannot be averaged
        probas.append(probs)
        labels = lab
        names.append(str(row["trial_id"]))
    return (np.stack(probas) if probas else np.zeros((0, 0, len(inputs.classes)))), labels, names


def log_columns(results: pd.DataFrame, record: dict[str, Any]) -> set[str]:
    """The ``param.*`` columns drawn log-uniformly (learning rates): from the experiment's
    search space when it still loads, else positive columns spanning two decades or more."""
    columns = [c for c in results.columns if c.startswith("param.")]
    space = record.get("space") or {}
    for ref in (space.get("source"), space.get("name")):
        if not ref:
            continue
        try:
            loaded = load_space(ref)
        except ConfigError:
            continue
        keys = {p.key for p in loaded.params
                if p.log or p.type in ("loguniform", "qloguniform")}
        # A per-block param 'model.dropout' is drawn as columns param.model.dropout.<block>.
        return {c for c in columns
                if c.removeprefix("param.") in keys
                or c.removeprefix("param.").rsplit(".", 1)[0] in keys}
    from fer_ray.report.analysis import is_categorical, log_scaled

    return {c for c in columns if not is_categorical(results[c]) and log_scaled(results[c])}


def usable(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"].isin(USABLE)]


def _load_data(inputs: Inputs, extra_test: str | None) -> None:
    try:
        data = load_search_data(inputs.settings)
        if extra_test:
            split, _ = with_votes(read_split(extra_test, "test"),
                                  base_config(inputs.settings).data, training=False)
            if not any(np.array_equal(split.images, t.images) for t in data.tests.values()):
                name = Path(extra_test).stem
                data.tests[name if name not in data.tests else f"{name} (--test)"] = split
    except (FerRayError, OSError) as exc:
        inputs.notes.append(f"the data could not be loaded ({exc}), so the class distribution "
                            "and confusion matrices are left out")
        return
    if fingerprint(data) != inputs.record.get("data", {}).get("fingerprint"):
        inputs.notes.append("the data at the experiment's path no longer matches its "
                            "fingerprint, so the class distribution and confusion matrices "
                            "are left out")
        return
    inputs.data = data


def labelled_splits(data: FerData) -> dict[str, Split]:
    splits = {"validation": data.val}
    splits.update({k: v for k, v in data.tests.items() if v.labels is not None and len(v)})
    return splits


def _predict(inputs: Inputs, device: torch.device) -> None:
    """Ensemble (raw + calibrated) and best-single probabilities on every labelled split,
    computed on ``device``."""
    ens_dir = inputs.experiment / "ensemble"
    if (ens_dir / ENSEMBLE_JSON).is_file():
        inputs.ensemble = Ensemble.load(ens_dir).to(device)
    else:
        inputs.notes.append(f"no ensemble in {ens_dir}; build one with `python -m fer_ray."
                            f"ensemble --experiment {inputs.experiment}`")
    best: tuple[str, Path] | None = None
    for _, row in usable(inputs.results).iterrows():  # best first
        ckpt = checkpoint_of(inputs.experiment, row)
        if ckpt is not None:
            best = (str(row["trial_id"]), ckpt)
            break
    if best is None:
        inputs.notes.append("no usable trial has a checkpoint: no single-model figures")
    if inputs.data is None:
        return
    model = None
    if best is not None:
        inputs.single_id = best[0]
        model = load_model(best[1])[0].to(device)
    for name, split in labelled_splits(inputs.data).items():
        assert split.labels is not None
        inputs.labels[name] = split.labels
        if inputs.ensemble is not None:
            e = inputs.ensemble
            raw = soft_vote(e.member_probas(split.images), e.weights)
            inputs.ens_raw[name] = raw
            inputs.ens_cal[name] = temperature_scale(raw, e.temperature)
        if model is not None:
            inputs.single[name] = predict_probas([model], split.images)[0]


def load_inputs(experiment: Path, extra_test: str | None = None,
                device: str = "auto") -> Inputs:
    """Read an experiment folder and run its ensemble and best model on every labelled split
    (on ``device``: auto, cpu, cuda, cuda:N)."""
    target = resolve_device(device)  # a bad --device fails before anything is read
    if not experiment.is_dir():
        raise DataError(f"{experiment}: no such experiment folder")
    record = read_search_json(experiment)
    settings = settings_from_record(record, experiment)
    path = experiment / RESULTS_PARQUET
    if not path.is_file():
        raise DataError(f"{experiment}: no {RESULTS_PARQUET} (did the search finish?)")
    try:
        results = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    missing = {"trial_id", "status", "val_acc", "asha_stopped"} - set(results.columns)
    if missing:
        raise DataError(f"{path}: not a fer-ray results table (missing {sorted(missing)})")
    for trial in results["trial_id"].astype(str):  # folder names: never a path out of it
        try:
            check_name(trial, "trial id")
        except ConfigError as exc:
            raise DataError(f"{path}: {exc}") from None
    histories = {str(t): read_history(Path(trial_dir(experiment, str(t))))
                 for t in results["trial_id"]}
    inputs = Inputs(experiment, record, settings, results, histories)
    _load_data(inputs, extra_test)
    _predict(inputs, target)
    return inputs
