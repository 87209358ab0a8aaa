"""``python -m fer_ray.train`` as a user runs it: outputs written, bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_ray.models.io import load_model
from fer_ray.train.cli import main


def test_cli_trains_and_writes_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--preset", "tiny", "--synthetic-size", "600", "--epochs", "2",
                 "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best val_acc" in printed and "happy" in printed  # metrics + class table
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["epochs"] == 2 and record["config"]["seed"] == 3
    assert record["data"]["n_train"] + record["data"]["n_val"] == 600
    _, config = load_model(out)
    assert config.data.synthetic_size == 600
    probs = np.load(out / "val_probs.npy")
    assert probs.shape == (record["data"]["n_val"], 7)
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 epochs


def _bad_csv(tmp_path: Path) -> str:
    path = tmp_path / "fer2013.csv"
    good = " ".join(["0"] * 2304)
    path.write_text(f"emotion,pixels,Usage\n3,{good},Training\n2,{good[:-2]},Training\n")
    return str(path)


@pytest.mark.parametrize(("make_args", "expected"), [
    (lambda t: ["--data", str(t / "nope")], "nope: no such file or directory"),
    (lambda t: ["--data", _bad_csv(t)], "fer2013.csv line 3: expected 2304 pixel values"),
    (lambda t: ["--config", str(t / "missing.json")], "missing.json: no such file"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   make_args, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert main([*make_args(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


def test_cli_unknown_config_key_in_a_subprocess(tmp_path: Path) -> None:
    """The real command line: exit 2, one stderr line naming file and key, no traceback."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"optim": {"learning_rate": 0.1}}))
    proc = subprocess.run([sys.executable, "-m", "fer_ray.train", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {cfg}: unknown config key optim.learning_rate " \
        "(known: optimizer, lr, weight_decay, momentum, nesterov, schedule, warmup_epochs, " \
        "label_smoothing, batch_size)"


@pytest.mark.slow
def test_real_fer2013_small_net_beats_majority(fer2013_dir: Path, tmp_path: Path) -> None:
    """FER2013 Training subsample, small preset, 2 epochs: PublicTest well above 25 %."""
    out = tmp_path / "real"
    assert main(["--data", str(fer2013_dir), "--preset", "small", "--epochs", "2",
                 "--subsample", "12000", "--out", str(out)]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["tests"]["public_test"]["n"] == 3589
    assert record["tests"]["public_test"]["acc"] > 0.33
