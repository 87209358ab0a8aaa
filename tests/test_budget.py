"""Time-budgeted searches, warm starts and progress lines, with a real local Ray."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fer_ray.config import TrainConfig, from_dict
from fer_ray.experiment import SearchSettings
from fer_ray.space import load_space

pytestmark = pytest.mark.ray  # these tests run searches: Ray in-process or in a subprocess

SMOKE = {"space": "smoke", "synthetic_size": 600, "max_epochs": 3, "grace_period": 1}
POINTS_SPACE = """
description: smoke with two known-good points
base:
  model: {kernel_size: 3, padding: same, stem_filters: 0, convs_per_block: [1], dropout: [0.1],
          dense_units: [16], dense_dropout: 0.1}
  optim: {optimizer: adam, schedule: none}
  augment: {hflip: 0.0, rotation: 0.0, scale: 0.0, translate: 0.0}
params:
  model.num_blocks: 2
  model.filters: {type: choice, values: [4, 8], per_block: true}
  optim.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
  optim.batch_size: {type: choice, values: [64, 128]}
points:
  - {model: {filters: [8, 4]}, optim: {lr: 0.00123, batch_size: 128}}
  - {model: {filters: [4, 8]}, optim: {lr: 0.00456, batch_size: 64}}
"""


# A status line of a 1.5-minute budget: "[ 0:35 /   1:30] 2 running, 7 done ..."
STATUS = re.compile(r"^\[\s*\d+:\d\d /   1:30\] \d+ running, \d+ done")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fer_ray.search", *args]


def _trial_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in proposal order."""
    return df.sort_values("trial_number")


def _configs(df: pd.DataFrame) -> list[TrainConfig]:
    return [from_dict(TrainConfig, json.loads(c)) for c in _trial_order(df)["config_json"]]


def test_space_points_run_first(ray_local: Any, tmp_path: Path) -> None:
    from fer_ray.search.run import run_experiment

    space_file = tmp_path / "points.yaml"
    space_file.write_text(POINTS_SPACE)
    settings = SearchSettings(**{**SMOKE, "space": str(space_file), "num_samples": 3,
                                 "max_concurrent": 1, "storage": str(tmp_path), "name": "exp"})
    run_experiment(settings)
    configs = _configs(pd.read_parquet(tmp_path / "exp" / "results.parquet"))
    assert len(configs) == 3
    assert [c.model.filters for c in configs[:2]] == [(8, 4), (4, 8)]
    assert [c.optim.lr for c in configs[:2]] == [0.00123, 0.00456]
    assert [c.optim.batch_size for c in configs[:2]] == [128, 64]


def test_a_built_in_data_search_trains_members_that_differ(ray_local: Any,
                                                          tmp_path: Path) -> None:
    """The default space on the built-in faces: its first two trials (on 2 cores, the
    ensemble's members) differ in the network and in augmentation."""
    from fer_ray.search.run import run_experiment

    run_experiment(SearchSettings(synthetic_size=600, max_epochs=1, num_samples=2,
                                  storage=str(tmp_path), name="exp"))
    first, second = _configs(pd.read_parquet(tmp_path / "exp" / "results.parquet"))
    assert (len(first.model.filters), first.model.filters[0]) != \
        (len(second.model.filters), second.model.filters[0])
    assert (first.augment.erasing, first.augment.rotation) != \
        (second.augment.erasing, second.augment.rotation)


def test_warm_start_reruns_the_best_and_tells_tpe_the_rest(ray_local: Any,
                                                           tmp_path: Path) -> None:
    from fer_ray.search.run import run_experiment

    first = SearchSettings(**{**SMOKE, "num_samples": 4, "storage": str(tmp_path),
                              "name": "first"})
    run_experiment(first)
    earlier = pd.read_parquet(tmp_path / "first" / "results.parquet")
    best = from_dict(TrainConfig, json.loads(earlier.iloc[0]["config_json"]))
    second = SearchSettings(**{**SMOKE, "num_samples": 2, "max_concurrent": 1,
                               "storage": str(tmp_path), "name": "second",
                               "warm_start": str(tmp_path / "first")})
    record = run_experiment(second)
    assert record["warm_start"]["history"] == len(earlier)
    rerun = _configs(pd.read_parquet(tmp_path / "second" / "results.parquet"))[0]
    space = load_space("smoke")
    assert space.params_of(rerun) == space.params_of(best)


def test_warm_start_from_a_space_that_shares_nothing_is_one_line(tmp_path: Path) -> None:
    """An experiment whose configs the space cannot express: a clear error before Ray."""
    exp = tmp_path / "old"
    exp.mkdir()
    config = json.dumps({"model": {"filters": [512, 512]}})  # outside smoke's 4/8 filters
    pd.DataFrame([{"trial_id": "a_00000", "status": "completed", "val_acc": 0.5,
                   "config_json": config}]).to_parquet(exp / "results.parquet")
    proc = subprocess.run(_cli("--space", "smoke", "--warm-start", str(exp), "--storage",
                               str(tmp_path), "--synthetic-size", "300"),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "none of its finished trials lies in space smoke" in lines[0]


@pytest.mark.slow
def test_a_budgeted_search_killed_and_resumed_ends_by_its_deadline(tmp_path: Path) -> None:
    """One short budgeted search end to end (the planning itself is tested with a fake clock
    in test_plan.py): without --num-samples trials keep coming until the deadline, status
    lines appear while it runs; kill -9 mid-run, and --resume keeps the original deadline:
    the whole run, ensemble included, ends within the budget + 5 %."""
    budget = 1.5
    args = ["--space", "smoke", "--synthetic-size", "600", "--max-epochs", "2",
            "--time-budget", str(budget), "--progress-every", "5", "--storage", str(tmp_path),
            "--name", "exp"]
    started = time.time()
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    first_run = []
    for line in proc.stdout:  # killed once trials have finished and status lines came
        first_run.append(line)
        if sum(bool(STATUS.match(seen)) for seen in first_run) >= 2:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads((tmp_path / "exp" / "search.json").read_text())["timing"]
    assert saved["deadline"] - saved["started"] == pytest.approx(60 * budget)
    assert saved["started"] < saved["stop_at"] < saved["deadline"]

    resumed = subprocess.run(_cli("--resume", "--name", "exp", "--storage", str(tmp_path)),
                             capture_output=True, text=True, timeout=600)
    wall = time.time() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert wall <= 60 * budget * 1.05, f"{wall:.1f} s for a {budget} min budget"
    record = json.loads((tmp_path / "exp" / "search.json").read_text())
    assert record["timing"] == saved
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    # No trial count: trials keep coming until the deadline, more than two per slot (6-8
    # here across the kill, the Ray restart and the resumed run).
    assert len(df) > 2 * 2, df[["trial_id", "status", "epochs_run"]]
    # Trials Ray created but never started before the deadline are no rows (not "error").
    assert "error" not in set(df["status"]) and (df["epochs_run"] > 0).any()
    assert (tmp_path / "exp" / "ensemble" / "ensemble.json").is_file()
    assert any(STATUS.match(line) for line in resumed.stdout.splitlines()), resumed.stdout
