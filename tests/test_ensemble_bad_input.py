"""``python -m fer_ray.ensemble`` given bad or odd input (issue 11): every case exits 2 with
one ``error:`` line, no traceback, and leaves every file as it was: flags and paths are checked
before the experiment is read or anything written, and an output folder holding anything but
an ensemble is never replaced (it used to be deleted). The cases call ``main(argv)`` in this
process (``run_in_process``); named pipes and the ``python -m`` entry point run in a real
process (``..._in_a_real_process``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.cli import fifo, refused_with_files_untouched

from fer_ray.config import TrainConfig
from fer_ray.data import fingerprint
from fer_ray.experiment import SearchSettings, load_search_data
from fer_ray.models import create_model
from fer_ray.models.io import save_model
from fer_ray.models.vgg_fer import MODEL_PRESETS


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    """A folder that looks like an experiment to the checks that run before the build."""
    exp = tmp_path / "exp"
    (exp / "trial_a").mkdir(parents=True)
    (exp / "search.json").write_text(json.dumps({"settings": {"synthetic_size": 300}}))
    (exp / "trial_a" / "result.json").write_text("{}\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("months of work\n")
    (tmp_path / "file.txt").write_text("a file\n")
    return exp


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda t: (t / "exp" / name).write_bytes(data)


def _pipe(name: str) -> Callable[[Path], None]:
    def make(t: Path) -> None:
        (t / "exp" / name).unlink(missing_ok=True)
        fifo(t / "exp" / name)
    return make


def _foreign_default_out(t: Path) -> None:
    (t / "exp" / "ensemble").mkdir()
    (t / "exp" / "ensemble" / "keep.txt").write_text("not an ensemble\n")


def _nothing(t: Path) -> None:
    return None


def _results_pointing(recorded: str, trial: str = "a", at: str = "outside/checkpoint_000001",
                      recorded_fingerprint: str | None = None) -> Callable[[Path], None]:
    """A finished-looking experiment whose results.parquet records a checkpoint outside it,
    where a complete, usable checkpoint waits: reading it would build an ensemble.

    at: where that checkpoint is written (under the test's folder); recorded_fingerprint:
    the data fingerprint search.json records (default: the data's own)."""
    def make(t: Path) -> None:
        settings = {"synthetic_size": 300}
        data = load_search_data(SearchSettings(**settings))  # type: ignore[arg-type]
        (t / "exp" / "search.json").write_text(json.dumps(
            {"settings": settings,
             "data": {"fingerprint": recorded_fingerprint or fingerprint(data)}}))
        outside = t / at
        config = TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"])
        save_model(create_model("vgg_fer_tiny"), outside, config)
        np.save(outside / "val_probs.npy", np.full((len(data.val), 7), 1 / 7, np.float32))
        np.save(outside / "val_labels.npy", data.val.labels)
        pd.DataFrame({"trial_id": [trial], "status": ["completed"], "val_acc": [0.5],
                      "best_epoch": [1], "epochs_run": [1],
                      "best_checkpoint": [recorded.format(t=t)]}).to_parquet(
            t / "exp" / "results.parquet")
    return make


# (case, setup(t), args (with {t}; --experiment {t}/exp is added unless given), expected)
Case = tuple[str, Callable[[Path], None], list[str], str]
CASES: list[Case] = [
    ("--top-k 0", _nothing, ["--top-k", "0"], "--top-k: 0 must be between 1 and 64"),
    ("--top-k -3", _nothing, ["--top-k", "-3"], "--top-k: -3 must be between 1 and 64"),
    ("--top-k 65", _nothing, ["--top-k", "65"], "--top-k: 65 must be between 1 and 64"),
    ("--top-k abc", _nothing, ["--top-k", "abc"], "argument --top-k: invalid int value"),
    ("--method bogus", _nothing, ["--method", "bogus"], "argument --method: invalid choice"),
    ("--out is the experiment", _nothing, ["--out", "{t}/exp"], "would replace the input"),
    ("--out holds the experiment", _nothing, ["--out", "{t}"], "would replace the input"),
    ("--out holds other files", _nothing, ["--out", "{t}/notes"],
     "already holds files this command did not write (thesis.tex)"),
    ("--out is a trial folder", _nothing, ["--out", "{t}/exp/trial_a"],
     "already holds files this command did not write (result.json)"),
    ("--out is a file", _nothing, ["--out", "{t}/file.txt"], "is a regular file, not a folder"),
    ("--out under a file", _nothing, ["--out", "{t}/file.txt/ens"],
     "file.txt is a regular file, not a folder"),
    ("--out two levels under a file", _nothing, ["--out", "{t}/file.txt/a/ens"],
     "cannot create a folder inside"),
    ("default --out holds other files", _foreign_default_out, [],
     "already holds files this command did not write (keep.txt)"),
    ("--test missing", _nothing, ["--test", "{t}/nope.npz"], "no such file or directory"),
    ("--test a named pipe", lambda t: fifo(t / "t.npz") and None, ["--test", "{t}/t.npz"],
     "a named pipe, not a regular file or folder"),
    ("--experiment missing", _nothing, ["--experiment", "{t}/nowhere"],
     "not a fer-ray experiment"),
    ("--experiment a file", _nothing, ["--experiment", "{t}/file.txt"],
     "not a fer-ray experiment"),
    ("search.json not JSON", _write("search.json", b"{oops"), [], "unreadable"),
    ("search.json a named pipe", _pipe("search.json"), [], "a named pipe, not a regular file"),
    ("search.json bad settings", _write("search.json", b'{"settings": {"seed": "x"}}'), [],
     "bad settings"),
    ("no results.parquet", _nothing, [], "no results.parquet (did the search finish?)"),
    ("results.parquet corrupt", _write("results.parquet", b"PAR1 not really"), [],
     "results.parquet: unreadable"),
    ("checkpoint recorded outside", _results_pointing("{t}/outside/checkpoint_000001"), [],
     "exp/trial_a/checkpoint_000001/config.json: missing"),
    ("trial id ../..", _results_pointing("{t}/outside/checkpoint_000001", "../../outside"),
     [], "trial id '../../outside': not a plain name"),
    ("checkpoint named ..", _results_pointing("{t}/outside/.."), [],
     "not a trial checkpoint"),
    # A complete experiment but for its data: the faces its settings load now are not the
    # ones it was searched on (the validation probabilities would be of other faces).
    ("data fingerprint differs", _results_pointing(
        "{t}/exp/trial_a/checkpoint_000001", at="exp/trial_a/checkpoint_000001",
        recorded_fingerprint="0123456789abcdef"), [],
     "exp: the data no longer matches the experiment's fingerprint"),
]


# Named pipes (a reader that opened one would block: a real process has a timeout), and the
# ``python -m`` entry point with a ConfigError and argparse's refusal.
REAL = {"--test a named pipe", "search.json a named pipe", "--top-k 0", "--top-k abc"}
IN_PROCESS: list[Case] = [c for c in CASES if c[0] not in REAL]
IN_A_REAL_PROCESS: list[Case] = [c for c in CASES if c[0] in REAL]


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_PROCESS,
                         ids=[c[0] for c in IN_PROCESS])
def test_refused_with_files_untouched(case: str, setup: Callable[[Path], None],
                                      args: list[str], expected: str,
                                      experiment: Path) -> None:
    refused_with_files_untouched("ensemble", experiment.parent, setup, args, expected,
                                 ("--experiment", str(experiment)))


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_A_REAL_PROCESS,
                         ids=[c[0] for c in IN_A_REAL_PROCESS])
def test_refused_with_files_untouched_in_a_real_process(
        case: str, setup: Callable[[Path], None], args: list[str], expected: str,
        experiment: Path) -> None:
    refused_with_files_untouched("ensemble", experiment.parent, setup, args, expected,
                                 ("--experiment", str(experiment)), real_process=True)
