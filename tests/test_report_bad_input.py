"""``python -m fer_ray.report`` given bad or odd input (issue 11): every case exits 2 with one
``error:`` line and no traceback, before the report folder is created, with every file
unchanged. A --test or --ablation that cannot be read is an error, not a silently skipped
section. The cases call ``main(argv)`` in this process (``run_in_process``); named pipes and
the ``python -m`` entry point run in a real process (``..._in_a_real_process``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from support.cli import (
    fifo,
    refused_with_files_untouched,
    run_in_process,
    save_tiny_ensemble,
)


@pytest.fixture(scope="module")
def saved_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ensemble(tmp_path_factory.mktemp("ens") / "ensemble")


@pytest.fixture()
def experiment(tmp_path: Path, saved_ensemble: Path) -> Path:
    """An experiment folder as the report reads it: search.json, results.parquet and an
    ensemble (no trials, so the sections needing them become notes)."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "search.json").write_text(json.dumps({"settings": {"synthetic_size": 300}}))
    pd.DataFrame({"trial_id": ["a"], "status": ["completed"], "val_acc": [0.5],
                  "asha_stopped": [False], "best_checkpoint": [""]}).to_parquet(
        exp / "results.parquet")
    shutil.copytree(saved_ensemble, exp / "ensemble")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "slides.key").write_text("keep\n")
    (tmp_path / "file.txt").write_text("a file\n")
    return exp


def _nothing(t: Path) -> None:
    return None


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda t: (t / "exp" / name).write_bytes(data)


def _make_fifo(path: Path) -> None:
    fifo(path)


def _ensemble_json(old: str, new: str) -> Callable[[Path], None]:
    def make(t: Path) -> None:
        path = t / "exp" / "ensemble" / "ensemble.json"
        path.write_text(path.read_text().replace(old, new, 1))
    return make


def _foreign_report(t: Path) -> None:
    (t / "exp" / "report").mkdir()
    (t / "exp" / "report" / "draft.docx").write_bytes(b"mine")


# (case, setup(t), args (with {t}; --experiment {t}/exp is added unless given), expected)
Case = tuple[str, Callable[[Path], None], list[str], str]
CASES: list[Case] = [
    ("--experiment missing", _nothing, ["--experiment", "{t}/nowhere"],
     "nowhere: no such experiment folder"),
    ("--experiment a file", _nothing, ["--experiment", "{t}/file.txt"],
     "file.txt: no such experiment folder"),
    ("no search.json", lambda t: (t / "exp" / "search.json").unlink(), [],
     "not a fer-ray experiment"),
    ("search.json a named pipe", lambda t: ((t / "exp" / "search.json").unlink(),
                                            _make_fifo(t / "exp" / "search.json"))[0], [],
     "a named pipe, not a regular file"),
    ("results.parquet corrupt", _write("results.parquet", b"PAR1junk"), [], "unreadable"),
    ("results.parquet of another tool", lambda t: pd.DataFrame({"x": [1]}).to_parquet(
        t / "exp" / "results.parquet"), [], "not a fer-ray results table"),
    ("trial id a path", lambda t: pd.DataFrame({
        "trial_id": ["../../outside"], "status": ["completed"], "val_acc": [0.5],
        "asha_stopped": [False], "best_checkpoint": [""]}).to_parquet(
        t / "exp" / "results.parquet"), [], "trial id '../../outside': not a plain name"),
    ("--out is the experiment", _nothing, ["--out", "{t}/exp"], "would replace the input"),
    ("--out holds the experiment", _nothing, ["--out", "{t}"], "would replace the input"),
    ("--out holds other files", _nothing, ["--out", "{t}/other"],
     "already holds files this command did not write (slides.key)"),
    ("--out is the ensemble", _nothing, ["--out", "{t}/exp/ensemble"],
     "already holds files this command did not write (ensemble.json, members)"),
    ("--out a file", _nothing, ["--out", "{t}/file.txt"], "is a regular file, not a folder"),
    ("default --out holds other files", _foreign_report, [],
     "already holds files this command did not write (draft.docx)"),
    ("--test missing", _nothing, ["--test", "{t}/nope.npz"], "no such file or directory"),
    ("--test a named pipe", lambda t: _make_fifo(t / "t.csv"), ["--test", "{t}/t.csv"],
     "a named pipe, not a regular file or folder"),
    ("--ablation missing", _nothing, ["--ablation", "{t}/a.csv"],
     "--ablation {t}/a.csv: no such file or directory"),
    ("--ablation a named pipe", lambda t: _make_fifo(t / "a.csv"), ["--ablation", "{t}/a.csv"],
     "a named pipe, not a regular file"),
    ("ensemble temperature Infinity", _ensemble_json('"temperature": 1.5',
                                                     '"temperature": Infinity'), [],
     "temperature: inf is outside 0.01..100"),
    ("ensemble format_version 2", _ensemble_json('"format_version": 1',
                                                 '"format_version": 2'), [],
     "format_version: 2 is not supported"),
    ("ensemble member outside", _ensemble_json('"members/', '"../../'), [],
     "not a path inside the ensemble folder"),
    ("--device not a device", _nothing, ["--device", "tpu"],
     "device: 'tpu' is not auto, cpu, cuda or cuda:N"),
]


# Named pipes (a reader that opened one would block: a real process has a timeout), and the
# ``python -m`` entry point with a refusal after the inputs are read.
REAL = {"search.json a named pipe", "--test a named pipe", "--ablation a named pipe",
        "ensemble temperature Infinity"}
IN_PROCESS: list[Case] = [c for c in CASES if c[0] not in REAL]
IN_A_REAL_PROCESS: list[Case] = [c for c in CASES if c[0] in REAL]


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_PROCESS,
                         ids=[c[0] for c in IN_PROCESS])
def test_refused_with_files_untouched(case: str, setup: Callable[[Path], None],
                                      args: list[str], expected: str,
                                      experiment: Path) -> None:
    refused_with_files_untouched("report", experiment.parent, setup, args, expected,
                                 ("--experiment", str(experiment)))


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_A_REAL_PROCESS,
                         ids=[c[0] for c in IN_A_REAL_PROCESS])
def test_refused_with_files_untouched_in_a_real_process(
        case: str, setup: Callable[[Path], None], args: list[str], expected: str,
        experiment: Path) -> None:
    refused_with_files_untouched("report", experiment.parent, setup, args, expected,
                                 ("--experiment", str(experiment)), real_process=True)


def test_a_report_replaces_only_its_own_folder(experiment: Path) -> None:
    """The happy path through the same checks: written, then rewritten in place."""
    for _ in range(2):
        proc = run_in_process("report", "--experiment", str(experiment))
        assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (experiment / "report").iterdir())
    assert "report.html" in names and "report.md" in names
    assert sorted(p.name for p in experiment.iterdir()) == [
        "ensemble", "report", "results.parquet", "search.json"]


@pytest.mark.parametrize("recorded", ["the data's own", "another", "none"])
def test_data_that_no_longer_matches_its_fingerprint_is_left_out_with_a_note(
        experiment: Path, recorded: str) -> None:
    """The report reads the experiment's data again: when it no longer matches the
    fingerprint search.json recorded (or none was recorded), the sections drawn from the data
    are left out, with a note saying why, rather than drawn from other faces."""
    from fer_ray.data import fingerprint
    from fer_ray.experiment import SearchSettings, load_search_data
    from fer_ray.report.inputs import load_inputs

    data = load_search_data(SearchSettings(synthetic_size=300))
    record = json.loads((experiment / "search.json").read_text())
    if recorded != "none":
        record["data"] = {"fingerprint": fingerprint(data) if recorded == "the data's own"
                          else "0123456789abcdef"}
    (experiment / "search.json").write_text(json.dumps(record))
    inputs = load_inputs(experiment, device="cpu")
    note = ("the data at the experiment's path no longer matches its fingerprint, so the "
            "class distribution and confusion matrices are left out")
    if recorded == "the data's own":
        assert inputs.data is not None and note not in inputs.notes
        assert len(inputs.data.val) == len(data.val)
    else:
        left_out = inputs.data is None
        assert left_out and note in inputs.notes, ("data kept" if not left_out else "",
                                                   inputs.notes)
