"""``fer_ray.report.seed_runs``: what ``save_run`` writes, ``load_runs`` reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_ray.errors import DataError
from fer_ray.report.seed_runs import ROWS, find_runs, load_runs, save_run


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 50)
    probs = {row: rng.dirichlet(np.ones(7), 50).astype(np.float32) for row in ROWS}
    copy = np.zeros(50, bool)
    copy[[3, 7]] = True
    summary = {"seed": 4, "budget_min": 1.0, "precision": "auto",
               "test": {"path": "t.npz", "fingerprint": "abc", "n": 50},
               "tta": {"baseline": True, "ensemble": "flip_shift"},
               "val_acc": dict.fromkeys(ROWS, 0.5), "wall_s": dict.fromkeys(ROWS, 30.0),
               "notes": {"baseline": "", "search": ""}}
    save_run(tmp_path / "seed-4", labels, probs, copy, summary)
    (tmp_path / "seed-9").mkdir()  # unfinished: no summary.json, so not a run
    assert find_runs([tmp_path]) == [tmp_path / "seed-4"]
    (run,) = load_runs([tmp_path, tmp_path / "seed-4"])  # the same folder once
    assert np.array_equal(run.labels, labels) and np.array_equal(run.train_copy, copy)
    assert all(np.array_equal(run.probs[row], probs[row]) for row in ROWS)
    assert run.summary["tta"]["ensemble"] == "flip_shift" and run.summary["seed"] == 4
    with pytest.raises(DataError, match="no summary.json"):
        load_runs([tmp_path / "seed-9"])
