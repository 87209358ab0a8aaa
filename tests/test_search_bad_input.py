"""``python -m fer_ray.search`` given bad or odd input (issue 11).

The table: every case exits 2 with one ``error:`` line and no traceback, before Ray starts and
before anything is written: the folder holding --storage is byte-for-byte unchanged (no
experiment folder, no search.json, no empty folders). The cases refused by the flags' checks
call ``main(argv)`` in this process (``run_in_process``, which fails a case that imports Ray);
the ones refused after Ray's import (the experiment folder, resources, --address, the data)
and the named pipes run ``python -m fer_ray.search`` (``..._in_a_real_process``). Then the
experiment folder's claim: concurrent runs of one name, and cleanup after a failed search.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cli import assert_refused, fifo, npz_declaring, run, run_in_process, snapshot

from fer_ray.errors import ConfigError
from fer_ray.search.preflight import experiment_folder
from fer_ray.storage import write_bytes


def _nothing(t: Path) -> None:
    return None


def _existing_experiment(t: Path) -> None:
    (t / "runs" / "exp").mkdir(parents=True)
    (t / "runs" / "exp" / "search.json").write_text('{"settings": {}}')


def _experiment_of_other_data(t: Path) -> None:
    """An interrupted experiment whose search.json records another data fingerprint than its
    settings now load (the data changed since): a resume must not mix the two."""
    (t / "runs" / "exp").mkdir(parents=True)
    settings = {"name": "exp", "space": "smoke", "synthetic_size": 300}
    (t / "runs" / "exp" / "search.json").write_text(json.dumps(
        {"settings": settings, "data": {"fingerprint": "0123456789abcdef"}}))


def _pipe(t: Path) -> None:
    fifo(t / "pipe.npz")


def _big_npz(t: Path) -> None:
    npz_declaring(t / "big.npz", (2, 9000, 9000))


def _labels_npz(t: Path) -> None:
    np.savez(t / "l.npz", images=np.zeros((10, 48, 48), np.uint8), labels=np.full(10, 9))


GPU = torch.cuda.is_available()
# (case, setup(t), args (with {t}), expected in the error line)
Case = tuple[str, Callable[[Path], None], list[str], str]
CASES: list[Case] = [
    ("--name ../../x", _nothing, ["--name", "../../x"], "--name '../../x': not a plain name"),
    ("--name absolute", _nothing, ["--name", "{t}/abs"], "not a plain name"),
    ("--name hidden", _nothing, ["--name", ".hidden"], "not a plain name"),
    ("--name a/b", _nothing, ["--name", "a/b"], "not a plain name"),
    ("--name a\\b", _nothing, ["--name", "a\\b"], "not a plain name"),
    ("--name ..", _nothing, ["--name", ".."], "not a plain name"),
    ("--resume --name ../x", _nothing, ["--resume", "--name", "../x"], "not a plain name"),
    ("--resume without --name", _nothing, ["--resume"], "--resume needs --name"),
    ("--resume of nothing", _nothing, ["--resume", "--name", "x"], "not a fer-ray experiment"),
    ("--resume with other data", _experiment_of_other_data, ["--resume", "--name", "exp"],
     "runs/exp: the data no longer matches the experiment's fingerprint"),
    ("fresh run into an experiment", _existing_experiment, ["--name", "exp"],
     "already holds an experiment or other files; continue it with --resume --name exp"),
    ("--seed -1", _nothing, ["--seed", "-1"], "--seed: -1 must be between 0 and 2**32 - 1"),
    ("--seed 2**32", _nothing, ["--seed", str(2**32)], "--seed: 4294967296 must be between"),
    ("--val-fraction 1.5", _nothing, ["--val-fraction", "1.5"],
     "--val-fraction: 1.5 must be between 0 and 1"),
    ("--val-fraction 0", _nothing, ["--val-fraction", "0"], "--val-fraction: 0.0 must be"),
    ("--val-fraction nan", _nothing, ["--val-fraction", "nan"], "not a finite number"),
    ("--max-failures -1", _nothing, ["--max-failures", "-1"],
     "--max-failures: -1 must be 0 or more"),
    ("--max-concurrent -1", _nothing, ["--max-concurrent", "-1"],
     "--max-concurrent: -1 must be 0 or more"),
    ("--cpus-per-trial 999", _nothing, ["--cpus-per-trial", "999"],
     "--cpus-per-trial 999.0: this machine has only"),
    ("--cpus-per-trial 0", _nothing, ["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    ("--cpus-per-trial inf", _nothing, ["--cpus-per-trial", "inf"],
     "--cpus-per-trial: inf is not a finite number"),
    ("--gpus-per-trial -1", _nothing, ["--gpus-per-trial", "-1"], "--gpus-per-trial >= 0"),
    *([] if GPU else [("--gpus-per-trial 1 without a GPU", _nothing, ["--gpus-per-trial", "1"],
                       "--gpus-per-trial 1.0: this machine has no GPU")]),
    ("--time-budget -1", _nothing, ["--time-budget", "-1"], "must be positive"),
    ("--time-budget nan", _nothing, ["--time-budget", "nan"], "not a finite number"),
    ("--time-budget inf", _nothing, ["--time-budget", "inf"], "not a finite number"),
    ("--max-epochs 0", _nothing, ["--max-epochs", "0"], "--max-epochs: 0 must be at least 1"),
    ("--grace-period over --max-epochs", _nothing, ["--grace-period", "5", "--max-epochs", "2"],
     "--grace-period: 5 exceeds --max-epochs 2"),
    ("--reduction-factor 1", _nothing, ["--reduction-factor", "1"], "must be >= 2"),
    ("--progress-every 0", _nothing, ["--progress-every", "0"], "must be positive"),
    ("--top-k 0", _nothing, ["--top-k", "0"], "--top-k: 0 must be at least 1"),
    ("--top-k 65", _nothing, ["--top-k", "65"], "--top-k: 65 is more than the 64 members"),
    ("--subsample 0", _nothing, ["--subsample", "0"], "--subsample: 0 must be at least 1"),
    ("--synthetic-size 0", _nothing, ["--synthetic-size", "0"], "must be at least 1"),
    ("--synthetic-size 10**9", _nothing, ["--synthetic-size", str(10**9)],
     "more than the 1,000,000 faces"),
    ("--num-samples abc", _nothing, ["--num-samples", "abc"],
     "argument --num-samples: invalid int value: 'abc'"),
    ("--address of nothing", _nothing, ["--address", "127.0.0.1:1"],
     "--address 127.0.0.1:1: no Ray cluster answers there"),
    ("--storage empty", _nothing, ["--storage", ""], "--storage: empty"),
    ("--storage under a file", lambda t: (t / "f").write_text("x") and None,
     ["--storage", "{t}/f/sub"], "--storage: cannot write to"),
    ("--space missing", _nothing, ["--space", "{t}/nope.yaml"], "nope.yaml"),
    ("--space a named pipe", lambda t: fifo(t / "s.yaml") and None, ["--space", "{t}/s.yaml"],
     "s.yaml: a named pipe, not a regular file"),
    ("--space a folder", lambda t: (t / "sp").mkdir(), ["--space", "{t}/sp"],
     "sp: a folder, not a regular file"),
    ("--warm-start missing", _nothing, ["--warm-start", "{t}/old"],
     "--warm-start {t}/old: no such experiment folder"),
    ("--data a named pipe", _pipe, ["--data", "{t}/pipe.npz"],
     "a named pipe, not a regular file or folder"),
    ("--data of 81-megapixel images", _big_npz, ["--data", "{t}/big.npz"],
     "over the 40-megapixel limit per image"),
    ("--data label 9", _labels_npz, ["--data", "{t}/l.npz"], "label 9 at index 0 outside 0..6"),
    ("--test missing", _nothing, ["--test", "{t}/nope.npz"], "no such file or directory"),
]


# Refused after fer_ray.search.run (and so Ray) is imported, and named pipes (a reader that
# opened one would block: a real process has a timeout).
REAL = {"--resume without --name", "--resume of nothing", "--resume with other data",
        "fresh run into an experiment",
        "--cpus-per-trial 999", "--gpus-per-trial 1 without a GPU", "--address of nothing",
        "--storage under a file", "--space missing", "--space a named pipe",
        "--data a named pipe", "--data of 81-megapixel images", "--data label 9",
        "--test missing"}
IN_PROCESS: list[Case] = [c for c in CASES if c[0] not in REAL]
IN_A_REAL_PROCESS: list[Case] = [c for c in CASES if c[0] in REAL]


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_PROCESS,
                         ids=[c[0] for c in IN_PROCESS])
def test_refused_before_ray_or_any_write(case: str, setup: Callable[[Path], None],
                                         args: list[str], expected: str,
                                         tmp_path: Path) -> None:
    _refused(case, setup, args, expected, tmp_path, real_process=False)


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_A_REAL_PROCESS,
                         ids=[c[0] for c in IN_A_REAL_PROCESS])
def test_refused_before_ray_or_any_write_in_a_real_process(
        case: str, setup: Callable[[Path], None], args: list[str], expected: str,
        tmp_path: Path) -> None:
    _refused(case, setup, args, expected, tmp_path, real_process=True)


def _refused(case: str, setup: Callable[[Path], None], args: list[str], expected: str, t: Path,
             real_process: bool) -> None:
    setup(t)
    args = [a.format(t=t) for a in args]
    if "--storage" not in args:
        args += ["--storage", str(t / "runs")]
    before = snapshot(t)
    runner = run if real_process else run_in_process
    proc = runner("search", "--space", "smoke", "--synthetic-size", "300", *args, cwd=t)
    assert_refused(proc, expected.format(t=t))
    assert "Ray" not in proc.stdout, proc.stdout  # the run never got as far as Ray
    assert snapshot(t) == before, case


RECORD = {"settings": {"name": "exp"}}


def test_a_failed_search_leaves_no_folders_behind(tmp_path: Path) -> None:
    path = tmp_path / "new" / "runs" / "exp"
    with pytest.raises(RuntimeError), experiment_folder(str(path), RECORD):
        assert json.loads((path / "search.json").read_text()) == RECORD
        (path / "tuner.pkl").write_bytes(b"Ray's state, written before the first trial")
        raise RuntimeError("the search failed before any trial ran")
    assert list(tmp_path.iterdir()) == []  # new/ and runs/ were created by it: gone too


def test_a_failed_search_with_trials_keeps_them_for_resume(tmp_path: Path) -> None:
    path = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt), experiment_folder(str(path), RECORD):
        (path / "trial_0001").mkdir()
        raise KeyboardInterrupt
    assert sorted(p.name for p in path.iterdir()) == ["search.json", "trial_0001"]


def test_an_empty_folder_given_stays_after_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "exp"
    path.mkdir()
    with pytest.raises(RuntimeError), experiment_folder(str(path), RECORD):
        raise RuntimeError
    assert path.is_dir() and list(path.iterdir()) == []


def test_two_runs_of_one_name_one_wins(tmp_path: Path) -> None:
    """Concurrent searches with the same --name: the second claim is refused, and its
    failure does not remove the first run's folder."""
    path = tmp_path / "exp"
    with experiment_folder(str(path), RECORD):
        with pytest.raises(ConfigError, match="already holds an experiment"), \
                experiment_folder(str(path), {"settings": {"name": "other"}}):
            pass
        assert json.loads((path / "search.json").read_text()) == RECORD
    assert (path / "search.json").is_file()


def test_search_json_is_published_once(tmp_path: Path) -> None:
    """The claim's last step: of two writers of one search.json, exactly one succeeds, even
    when both found the folder empty."""
    target = tmp_path / "search.json"
    write_bytes(str(target), b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes(str(target), b"second", exclusive=True)
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == [
        "search.json"]
