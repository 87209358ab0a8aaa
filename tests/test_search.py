"""The search with a real local Ray: results, best checkpoints, retries, budget, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fer_ray.config import TrainConfig, from_dict
from fer_ray.experiment import SearchSettings
from fer_ray.metrics import accuracy
from fer_ray.models.inference import predict_logits
from fer_ray.models.io import load_model
from fer_ray.search.cli import main

pytestmark = pytest.mark.ray  # these tests run searches: Ray in-process or in a subprocess

SMOKE = {"space": "smoke", "synthetic_size": 600, "max_epochs": 3, "grace_period": 1,
         "num_samples": 4}


def _settings(tmp_path: Path, **kw: Any) -> SearchSettings:
    return SearchSettings(**{**SMOKE, "storage": str(tmp_path), "name": "exp", **kw})


def test_results_have_one_row_per_trial(smoke_experiment: tuple[Path, dict[str, Any]]) -> None:
    path, record = smoke_experiment
    df = pd.read_parquet(path / "results.parquet")
    assert len(df) == 5 and df["trial_id"].is_unique
    assert sum(record["trials"].values()) == 5
    assert set(df["status"]) <= {"completed", "early_stopped"}
    assert (df["epochs_run"] <= 3).all() and (df["epochs_run"] >= 1).all()
    assert (df["asha_stopped"] == (df["epochs_run"] < 3)).all()
    assert df["val_acc"].is_monotonic_decreasing  # sorted, best first
    assert {"param.optim.lr", "param.model.filters.0", "config_json", "wall_time_s",
            "node_ids", "best_checkpoint"} <= set(df.columns)
    saved = json.loads((path / "search.json").read_text())
    assert saved["settings"]["num_samples"] == 5 and len(saved["data"]["fingerprint"]) == 16
    assert saved["best"]["trial_id"] == df.iloc[0]["trial_id"]
    assert "torch" in saved["versions"] and "ray" in saved["versions"]


def test_best_checkpoints_reproduce_their_validation_accuracy(
        smoke_experiment: tuple[Path, dict[str, Any]]) -> None:
    from fer_ray.experiment import load_search_data

    path, _ = smoke_experiment
    df = pd.read_parquet(path / "results.parquet")
    data = load_search_data(_settings(path.parent))
    assert data.val.labels is not None
    for _, row in df.iterrows():
        ckpt = Path(row["best_checkpoint"])
        model, config = load_model(ckpt)
        assert config == from_dict(TrainConfig, json.loads(row["config_json"]))
        preds = predict_logits(model, data.val.images).argmax(1).numpy()
        assert accuracy(data.val.labels, preds) == pytest.approx(row["val_acc"])
        probs = np.load(ckpt / "val_probs.npy")
        assert accuracy(np.load(ckpt / "val_labels.npy"), probs.argmax(1)) == row["val_acc"]
        assert json.loads((ckpt / "config.json").read_text())["epoch"] == row["best_epoch"]


def test_each_trial_keeps_only_its_best_checkpoint_and_its_latest(
        smoke_experiment: tuple[Path, dict[str, Any]]) -> None:
    """CheckpointConfig(num_to_keep=1) by val_acc: of the checkpoint a trial reports every
    epoch, one is kept, the best epoch's (Ray also keeps the latest, for retries: one folder
    when the best epoch is the last)."""
    path, _ = smoke_experiment
    df = pd.read_parquet(path / "results.parquet")
    assert (df["epochs_run"] > 1).any()  # some trial reported more than one checkpoint
    for _, row in df.iterrows():
        kept = sorted((path / f"trial_{row['trial_id']}").glob("checkpoint_*"))
        epochs = [json.loads((c / "config.json").read_text())["epoch"] for c in kept]
        assert sorted(epochs) == sorted({row["best_epoch"], row["epochs_run"]}), (
            row["trial_id"], [c.name for c in kept])
        assert Path(row["best_checkpoint"]) in kept


def test_every_trial_trained_with_its_own_seed(
        smoke_experiment: tuple[Path, dict[str, Any]]) -> None:
    """The search's seed (0) plus the trial's number: five trials, five seeds, recorded in
    each trial's config and in every epoch it reported."""
    path, _ = smoke_experiment
    df = pd.read_parquet(path / "results.parquet").sort_values("trial_number")
    seeds = [json.loads(c)["seed"] for c in df["config_json"]]
    assert seeds == list(range(5)) == df["trial_number"].tolist()
    for trial, seed in zip(df["trial_id"], seeds, strict=True):
        lines = (path / f"trial_{trial}" / "result.json").read_text().splitlines()
        assert {json.loads(line)["seed"] for line in lines} == {seed}


def test_crashed_trials_retry_from_their_checkpoint(inject_fault: Any, tmp_path: Path) -> None:
    """Every trial raises once after epoch 1; with max_failures it resumes at epoch 1."""
    from fer_ray.search.run import run_experiment

    inject_fault("1:once")
    run_experiment(_settings(tmp_path, num_samples=2, grace_period=3, max_failures=1))
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    assert list(df["status"]) == ["completed", "completed"]
    assert list(df["resumed_from_epoch"]) == [1, 1]
    for _, row in df.iterrows():  # epochs 2..3 after the retry, none repeated
        lines = (Path(row["best_checkpoint"]).parent / "result.json").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_time_budget_stops_launching_trials(ray_local: Any, tmp_path: Path) -> None:
    """A 24 s budget without a trial count: trials (3 smoke epochs, done in seconds) keep
    coming, stop at 18 s (6 s are kept for what follows them), no trial starts training
    once less than its minimum share of time is left (a quarter of a trial's share, here
    4.5 s), and the whole run ends within its budget."""
    from fer_ray.search.run import run_experiment
    from fer_ray.search.tuner import BudgetedLimiter

    started = time.time()
    record = run_experiment(_settings(tmp_path, num_samples=None, time_budget=0.4),
                            started=started)
    wall = time.time() - started
    timing = record["timing"]
    assert timing["stop_at"] - started == pytest.approx(18.0)
    assert timing["trial_seconds"] == pytest.approx(18.0)
    assert wall <= 24.0, f"{wall:.1f} s for a 24 s budget"
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    assert 2 < len(df) == sum(record["trials"].values())
    last_start = timing["stop_at"] - BudgetedLimiter.MIN_SHARE * timing["trial_seconds"]
    starts = {}
    for trial in df["trial_id"]:
        first = json.loads((tmp_path / "exp" / f"trial_{trial}" / "result.json").read_text()
                           .splitlines()[0])
        starts[trial] = first["train_end"] - first["epoch_seconds"] - started
    # 2 s for a trial to start training once proposed (its model and data on the device)
    assert max(starts.values()) <= last_start - started + 2.0, (last_start - started, starts)


def test_a_budget_too_short_for_any_trial_is_one_clear_error(ray_local: Any,
                                                              tmp_path: Path) -> None:
    from fer_ray.errors import DataError
    from fer_ray.search.run import run_experiment

    with pytest.raises(DataError, match=r"no trial started within --time-budget 0.01 min"):
        run_experiment(_settings(tmp_path, time_budget=0.01))


ASHA_SPACE = """
description: one good recipe, then two that cannot learn (learning rate 1e-9)
base:
  model: {kernel_size: 3, padding: same, stem_filters: 0, convs_per_block: [1], dropout: [0.0],
          dense_units: [16], dense_dropout: 0.0, filters: [8, 8]}
  optim: {optimizer: adam, schedule: none, batch_size: 32}
  augment: {hflip: 0.0, rotation: 0.0, scale: 0.0, translate: 0.0}
params:
  optim.lr: {type: loguniform, low: 1.0e-9, high: 1.0e-2}
points:
  - {optim: {lr: 0.01}}
  - {optim: {lr: 1.0e-9}}
  - {optim: {lr: 1.0e-9}}
"""


def test_asha_stops_trials_that_fall_behind_at_a_rung(ray_local: Any, tmp_path: Path) -> None:
    """One trial at a time: the good recipe passes the rungs alone and trains all its epochs;
    the two that cannot learn are compared with it at a rung (epoch 1 or 2) and stopped."""
    from fer_ray.search.run import run_experiment

    space = tmp_path / "asha.yaml"
    space.write_text(ASHA_SPACE)
    run_experiment(_settings(tmp_path, space=str(space), num_samples=3, max_concurrent=1,
                             synthetic_size=1200, reduction_factor=2))
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet").sort_values("trial_number")
    assert df["asha_stopped"].tolist() == [False, True, True], df[["status", "val_acc"]]
    assert df["epochs_run"].iloc[0] == 3 and (df["epochs_run"].iloc[1:] < 3).all()
    assert df["status"].tolist() == ["completed", "early_stopped", "early_stopped"]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fer_ray.search", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("args", "expected"), [
    (["--space", "nope"], "nope.yaml: no such search space (available spaces:"),
    (["--num-samples", "0"], "--num-samples: 0 must be at least 1"),
    (["--resume", "--name", "nothing-here"], "not a fer-ray experiment"),
    (["--data", "/no/such/dir"], "/no/such/dir: no such file or directory"),
])
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    proc = _run_cli(*args, "--storage", str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_cli_bad_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  optim.lrr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    assert main(["--space", str(bad), "--storage", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {bad}: params.optim.lrr: unknown key (known optim "
                               "keys: optimizer, lr,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_per_trial_without_gpu_is_a_clear_error(tmp_path: Path) -> None:
    proc = _run_cli("--space", "smoke", "--gpus-per-trial", "0.5", "--storage", str(tmp_path),
                    "--synthetic-size", "300")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --gpus-per-trial 0.5: this machine has no GPU "
        "(use --gpus-per-trial 0 to train on CPUs)"]


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    """kill -9 the driver after two trials finished; --resume completes the 6 trials asked."""
    args = ["--space", "smoke", "--synthetic-size", "600", "--max-epochs", "3",
            "--num-samples", "6", "--max-concurrent", "1", "--storage", str(tmp_path),
            "--name", "exp"]
    proc = subprocess.Popen([sys.executable, "-m", "fer_ray.search", *args],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    finished: list[str] = []
    deadline = time.time() + 240
    for line in proc.stdout:
        if line.startswith("[") and "trial" in line:
            finished.append(line.split("trial ")[1].split(":")[0])
        if len(finished) == 2 or time.time() > deadline:
            break
    time.sleep(3)  # mid-run: the third trial is training when the driver dies
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    assert len(finished) == 2

    resumed = _run_cli("--resume", "--name", "exp", "--storage", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    assert len(df) == 6 and set(finished) <= set(df["trial_id"])
    for trial in finished:  # finished trials were kept, and not trained again after the kill
        lines = (tmp_path / "exp" / f"trial_{trial}" / "result.json").read_text().splitlines()
        results = [json.loads(line) for line in lines]
        assert [r["epoch"] for r in results] == list(range(1, len(results) + 1))
        assert all(r["timestamp"] <= killed_at for r in results)


def test_object_store_storage_end_to_end(ray_local: Any, tmp_path: Path) -> None:
    """A URI --storage (file:// here; s3:// and gs:// take the same pyarrow path)."""
    from fer_ray.ensemble.cli import build_and_save
    from fer_ray.ensemble.model import Ensemble
    from fer_ray.experiment import read_results
    from fer_ray.search.run import run_experiment
    from fer_ray.storage import fetch_dir

    uri = f"file://{tmp_path}/bucket"
    run_experiment(SearchSettings(**{**SMOKE, "num_samples": 2, "storage": uri, "name": "exp"}))
    df = read_results(f"{uri}/exp")
    assert len(df) == 2 and df["best_checkpoint"].str.startswith(f"{uri}/exp/trial_").all()
    build_and_save(f"{uri}/exp", None, 2, "greedy", None)
    ensemble = Ensemble.load(fetch_dir(f"{uri}/exp/ensemble"))
    assert 1 <= len(ensemble.members) <= 2
    assert (tmp_path / "bucket" / "exp" / "ensemble" / "ensemble.json").is_file()
