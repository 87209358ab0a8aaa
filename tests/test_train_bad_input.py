"""``python -m fer_ray.train`` and ``python -m fer_ray.ablate`` given bad or odd input
(issue 11): every case exits 2 with one ``error:`` line and no traceback, refused before data
is loaded or trained on, and with every file unchanged (an untrained model is never saved, an
output folder holding other files never replaced). The cases call ``main(argv)`` in this
process (``run_in_process``); named pipes, a character device, permissions and the ``python
-m`` entry point run in a real process (``..._in_a_real_process``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support.cli import (
    assert_refused,
    fifo,
    npz_declaring,
    refused_with_files_untouched,
    run,
    snapshot,
)


def _nothing(t: Path) -> None:
    return None


def _config(payload: object, raw: str | None = None) -> Callable[[Path], None]:
    def make(t: Path) -> None:
        (t / "c.json").write_text(raw if raw is not None else json.dumps(payload))
    return make


def _pipe(name: str) -> Callable[[Path], None]:
    return lambda t: _make_fifo(t / name)


def _make_fifo(path: Path) -> None:
    fifo(path)


def _folders(t: Path) -> None:
    (t / "other").mkdir()
    (t / "other" / "paper.pdf").write_bytes(b"%PDF")
    (t / "data").mkdir()
    np.savez(t / "data" / "train.npz", images=np.zeros((20, 48, 48), np.uint8),
             labels=np.arange(20) % 7)
    (t / "file.txt").write_text("a file\n")


def _truncated(t: Path) -> None:
    np.savez(t / "cut.npz", images=np.zeros((20, 48, 48), np.uint8), labels=np.zeros(20, int))
    data = (t / "cut.npz").read_bytes()
    (t / "cut.npz").write_bytes(data[:-30])


HUGE = {"model": {"dense_units": [10**9]}}
# (case, setup(t), args (with {t}), expected in the error line)
Case = tuple[str, Callable[[Path], None], list[str], str]
TRAIN: list[Case] = [
    ("--batch-size 0", _nothing, ["--batch-size", "0"],
     "optim.batch_size (--batch-size): 0 is outside [1, 1048576]"),
    ("--epochs -1", _nothing, ["--epochs", "-1"], "epochs (--epochs): -1 is outside [1,"),
    ("--epochs 0", _nothing, ["--epochs", "0"], "epochs (--epochs): 0 is outside"),
    ("--seed -1", _nothing, ["--seed", "-1"], "seed (--seed): -1 is outside [0, 4294967295]"),
    ("--lr 0", _nothing, ["--lr", "0"], "optim.lr (--lr): 0.0 is outside (0, 1000]"),
    ("--lr nan", _nothing, ["--lr", "nan"], "optim.lr (--lr): nan is outside"),
    ("--lr -1", _nothing, ["--lr", "-1"], "optim.lr (--lr): -1.0"),
    ("--patience -1", _nothing, ["--patience", "-1"], "patience (--patience): -1"),
    ("--val-fraction 1", _nothing, ["--val-fraction", "1"],
     "data.val_fraction (--val-fraction): 1.0 is outside (0, 1)"),
    ("--subsample 0", _nothing, ["--subsample", "0"], "data.subsample (--subsample): 0"),
    ("--synthetic-size 10**9", _nothing, ["--synthetic-size", str(10**9)],
     "data.synthetic_size (--synthetic-size): 1000000000 is outside [1, 1000000]"),
    ("--time-budget 0", _nothing, ["--time-budget", "0"], "--time-budget: 0.0 minutes"),
    ("--time-budget inf", _nothing, ["--time-budget", "inf"], "--time-budget: inf minutes"),
    ("--device bogus", _nothing, ["--device", "bogus"], "device: 'bogus' is not auto"),
    ("--device mps", _nothing, ["--device", "mps"], "device: 'mps' is not auto"),
    ("--precision fp8", _nothing, ["--precision", "fp8"], "argument --precision: invalid"),
    ("--epochs abc", _nothing, ["--epochs", "abc"], "argument --epochs: invalid int value"),
    ("--config missing", _nothing, ["--config", "{t}/none.json"], "none.json: no such file"),
    ("--config not JSON", _config(None, "{oops"), ["--config", "{t}/c.json"],
     "c.json: not valid JSON"),
    ("--config a list", _config([1, 2]), ["--config", "{t}/c.json"], "expected a JSON object"),
    ("--config NaN", _config(None, '{"optim": {"lr": NaN}}'), ["--config", "{t}/c.json"],
     "optim.lr (--lr): nan is outside (0, 1000]"),
    ("--config Infinity dropout", _config(None, '{"model": {"dense_dropout": Infinity}}'),
     ["--config", "{t}/c.json"], "dropout inf outside [0, 1)"),
    ("--config a named pipe", _pipe("c.json"), ["--config", "{t}/c.json"],
     "a named pipe, not a regular file"),
    ("--config dense_units 10**9", _config(HUGE), ["--config", "{t}/c.json"],
     "parameters, more than the 150,000,000 allowed"),
    ("--config 9 blocks", _config({"model": {"filters": [8] * 9}}), ["--config", "{t}/c.json"],
     "model.filters: 9 blocks, expected 2..6"),
    ("--config 100 convs a block", _config({"model": {"convs_per_block": [100]}}),
     ["--config", "{t}/c.json"], "more than the 64 allowed"),
    ("--config hflip 2", _config({"augment": {"hflip": 2}}), ["--config", "{t}/c.json"],
     "augment.hflip: 2.0 is outside [0, 1]"),
    ("--config unknown key", _config({"optim": {"learning_rate": 1}}),
     ["--config", "{t}/c.json"], "unknown config key optim.learning_rate"),
    ("--out a file", _folders, ["--out", "{t}/file.txt"], "is a regular file, not a folder"),
    ("--out holds other files", _folders, ["--out", "{t}/other"],
     "already holds files this command did not write (paper.pdf)"),
    ("--out is --data", _folders, ["--data", "{t}/data", "--out", "{t}/data"],
     "would replace the input"),
    ("--out inside --data", _folders, ["--data", "{t}/data", "--out", "{t}/data/run"],
     "is inside the input folder"),
    ("--out holds --config", _config({}), ["--config", "{t}/c.json", "--out", "{t}"],
     "would replace the input"),
    ("--data a named pipe", _pipe("p.npz"), ["--data", "{t}/p.npz"],
     "a named pipe, not a regular file or folder"),
    ("--data /dev/zero", _nothing, ["--data", "/dev/zero"], "a character device"),
    ("--data truncated npz", _truncated, ["--data", "{t}/cut.npz"], "cut.npz: not an .npz"),
    ("--data of 20000x20000 images", lambda t: npz_declaring(t / "big.npz", (1, 20000, 20000))
     and None, ["--data", "{t}/big.npz"], "over the 40-megapixel limit per image"),
    ("--test missing", _nothing, ["--test", "{t}/nope.npz"], "no such file or directory"),
]


# Named pipes and /dev/zero (a reader that opened one would block or never end: a real process
# has a timeout), and the ``python -m`` entry point with argparse's refusal.
TRAIN_REAL = {"--config a named pipe", "--data a named pipe", "--data /dev/zero",
              "--precision fp8"}


def _split(cases: list[Case], real: set[str]) -> tuple[list[Case], list[Case]]:
    return [c for c in cases if c[0] not in real], [c for c in cases if c[0] in real]


TRAIN_IN_PROCESS, TRAIN_IN_A_REAL_PROCESS = _split(TRAIN, TRAIN_REAL)


@pytest.mark.parametrize(("case", "setup", "args", "expected"), TRAIN_IN_PROCESS,
                         ids=[c[0] for c in TRAIN_IN_PROCESS])
def test_train_refuses_before_training(case: str, setup: Callable[[Path], None],
                                       args: list[str], expected: str,
                                       tmp_path: Path) -> None:
    _train_refuses(setup, args, expected, tmp_path, real_process=False)


@pytest.mark.parametrize(("case", "setup", "args", "expected"), TRAIN_IN_A_REAL_PROCESS,
                         ids=[c[0] for c in TRAIN_IN_A_REAL_PROCESS])
def test_train_refuses_before_training_in_a_real_process(
        case: str, setup: Callable[[Path], None], args: list[str], expected: str,
        tmp_path: Path) -> None:
    _train_refuses(setup, args, expected, tmp_path, real_process=True)


def _train_refuses(setup: Callable[[Path], None], args: list[str], expected: str, t: Path,
                   real_process: bool) -> None:
    proc = refused_with_files_untouched(
        "train", t, setup, args, expected, ("--out", str(t / "run")),
        ["--preset", "tiny", "--synthetic-size", "300", "--epochs", "1"], cwd=t,
        real_process=real_process)
    assert "train_loss" not in proc.stdout, proc.stdout  # nothing was trained


ABLATE: list[Case] = [
    ("--seeds 0", _nothing, ["--seeds", "0"], "--seeds: 0 must be at least 1"),
    ("--epochs -1", _nothing, ["--epochs", "-1"], "--epochs: -1 must be at least 1"),
    ("--patience 0", _nothing, ["--patience", "0"], "--patience: 0 must be at least 1"),
    ("--synthetic-size 10**9", _nothing, ["--synthetic-size", str(10**9)],
     "data.synthetic_size (--synthetic-size)"),
    ("--device bogus", _nothing, ["--device", "bogus"], "device: 'bogus'"),
    ("--config dense_units 10**9", _config(HUGE), ["--config", "{t}/c.json"],
     "parameters, more than the 150,000,000 allowed"),
    ("--out a file", _folders, ["--out", "{t}/file.txt"], "is a regular file, not a folder"),
    ("--out holds other files", _folders, ["--out", "{t}/other"],
     "already holds files this command did not write (paper.pdf)"),
    ("--out inside --data", _folders, ["--data", "{t}/data", "--out", "{t}/data/abl"],
     "is inside the input folder"),
    ("--preset and --config", _config({}), ["--preset", "tiny", "--config", "{t}/c.json"],
     "not allowed with argument"),
]


# The ``python -m`` entry point: a ConfigError and argparse's refusal.
ABLATE_IN_PROCESS, ABLATE_IN_A_REAL_PROCESS = _split(ABLATE, {"--seeds 0",
                                                              "--preset and --config"})


@pytest.mark.parametrize(("case", "setup", "args", "expected"), ABLATE_IN_PROCESS,
                         ids=[c[0] for c in ABLATE_IN_PROCESS])
def test_ablate_refuses_before_training(case: str, setup: Callable[[Path], None],
                                        args: list[str], expected: str,
                                        tmp_path: Path) -> None:
    _ablate_refuses(setup, args, expected, tmp_path, real_process=False)


@pytest.mark.parametrize(("case", "setup", "args", "expected"), ABLATE_IN_A_REAL_PROCESS,
                         ids=[c[0] for c in ABLATE_IN_A_REAL_PROCESS])
def test_ablate_refuses_before_training_in_a_real_process(
        case: str, setup: Callable[[Path], None], args: list[str], expected: str,
        tmp_path: Path) -> None:
    _ablate_refuses(setup, args, expected, tmp_path, real_process=True)


def _ablate_refuses(setup: Callable[[Path], None], args: list[str], expected: str, t: Path,
                    real_process: bool) -> None:
    refused_with_files_untouched(
        "ablate", t, setup, args, expected, ("--out", str(t / "abl")),
        ["--synthetic-size", "300", "--epochs", "1", "--seeds", "1"], cwd=t,
        real_process=real_process)


@pytest.mark.parametrize("what", ["--data", "--config", "--out"])
def test_train_refuses_what_it_may_not_read_or_write(what: str, tmp_path: Path) -> None:
    """Permissions: an unreadable --data file or --config, an --out in a read-only folder."""
    t = tmp_path
    np.savez(t / "d.npz", images=np.zeros((20, 48, 48), np.uint8), labels=np.arange(20) % 7)
    (t / "c.json").write_text("{}")
    (t / "ro").mkdir()
    locked = {"--data": t / "d.npz", "--config": t / "c.json", "--out": t / "ro"}[what]
    locked.chmod(0o555 if what == "--out" else 0)
    before = snapshot(t)
    proc = run("train", "--data", str(t / "d.npz"), "--config", str(t / "c.json"), "--out",
               str(t / "ro" / "run"), "--epochs", "1", as_user=True)
    assert_refused(proc, "is not writable" if what == "--out" else "cannot read (Permission "
                   "denied)")
    assert snapshot(t) == before
