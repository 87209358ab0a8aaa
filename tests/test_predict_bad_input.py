"""``python -m fer_ray.predict`` given bad or odd input, as a new user would (issue 11).

Two tables, every case calling ``main(argv)`` in this process (``run_in_process``) but the
ones only a real process shows (named pipes, a character device; ``..._in_a_real_process``,
with the permission, closed-stdout and SIGTERM tests below):
- REFUSED: the command refuses before it writes anything: exit 2, one ``error:`` line, no
  traceback, and every file it was given or pointed at is byte-for-byte unchanged.
- ISOLATED: one unreadable input among good ones: exit 0, one ``error`` row (and one stderr
  line) for it, and a prediction row for every good image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from support.cli import (
    assert_refused,
    faces,
    fifo,
    npz_declaring,
    png_declaring,
    run,
    run_in_process,
    save_tiny_ensemble,
    snapshot,
)


@pytest.fixture(scope="module")
def saved_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ensemble(tmp_path_factory.mktemp("ens") / "ensemble", members=2)


@pytest.fixture()
def case_dir(tmp_path: Path, saved_ensemble: Path) -> Path:
    """tmp_path holding a copy of the ensemble ('ens'), a good npz and an earlier output."""
    shutil.copytree(saved_ensemble, tmp_path / "ens")
    np.savez(tmp_path / "good.npz", images=faces(3))
    (tmp_path / "old.csv").write_text("an earlier output that must survive\n")
    return tmp_path


def _tamper(t: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = t / "ens" / "ensemble.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _set(key: str, value: Any) -> Callable[[Path], None]:
    return lambda t: _tamper(t, lambda r: r.__setitem__(key, value))


def _member(key: str, value: Any) -> Callable[[Path], None]:
    return lambda t: _tamper(t, lambda r: r["members"][0].__setitem__(key, value))


def _model(key: str, value: Any) -> Callable[[Path], None]:
    return lambda t: _tamper(t, lambda r: r["members"][0]["config"]["model"].__setitem__(
        key, value))


def _raw_json(text: str) -> Callable[[Path], None]:
    return lambda t: (t / "ens" / "ensemble.json").write_text(text)


def _json_with(key: str, literal: str) -> Callable[[Path], None]:
    """ensemble.json with ``key`` set to a literal JSON's writers allow but JSON forbids."""
    def make(t: Path) -> None:
        _set(key, "@@")(t)
        path = t / "ens" / "ensemble.json"
        path.write_text(path.read_text().replace('"@@"', literal))
    return make


def _outside_link(t: Path) -> None:
    member = next((t / "ens" / "members").glob("*.safetensors"))
    shutil.copy(member, t / "elsewhere.safetensors")
    member.unlink()
    member.symlink_to(t / "elsewhere.safetensors")


def _pipe(path: Path) -> None:
    fifo(path)


def _json_pipe(t: Path) -> None:
    (t / "ens" / "ensemble.json").unlink()
    fifo(t / "ens" / "ensemble.json")


def _no_setup(t: Path) -> None:
    return None


DEFAULT_ARGS = ["--out", "{t}/old.csv", "{t}/good.npz"]  # an earlier output, a good input
# (case, setup(t), args after --ensemble (with {t}; [] = DEFAULT_ARGS), expected error text)
REFUSED: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    ("--out is the input", _no_setup, ["--out", "{t}/good.npz", "{t}/good.npz"],
     "is also an input"),
    ("--out inside an input folder", _no_setup, ["--out", "{t}/ens/p.csv", "{t}/ens"],
     "inside the input folder"),
    ("--out inside the ensemble", _no_setup, ["--out", "{t}/ens/ensemble.json",
                                              "{t}/good.npz"], "inside the input folder"),
    ("--out is a folder", _no_setup, ["--out", "{t}/ens", "{t}/good.npz"],
     "is a folder, not a file"),
    ("--out under a file", _no_setup, ["--out", "{t}/old.csv/p.csv", "{t}/good.npz"],
     "old.csv is a regular file, not a folder"),
    ("--out is a named pipe", lambda t: _pipe(t / "pipe.csv"),
     ["--out", "{t}/pipe.csv", "{t}/good.npz"], "is a named pipe, not a file"),
    ("missing member file", lambda t: next((t / "ens" / "members").glob("*")).unlink(),
     [], "missing weights file"),
    ("no ensemble folder", lambda t: shutil.rmtree(t / "ens"), [], "not an ensemble folder"),
    ("ensemble.json not JSON", _raw_json("{members: ["), [], "not valid JSON"),
    ("ensemble.json a list", _raw_json("[1, 2]"), [], "expected an object, got list"),
    ("ensemble.json nested too deep", _raw_json("[" * 100000 + "]" * 100000), [],
     "not valid JSON"),
    ("ensemble.json a named pipe", _json_pipe, [], "a named pipe, not a regular file"),
    ("format_version 999", _set("format_version", 999), [], "format_version: 999"),
    ("format_version missing", lambda t: _tamper(t, lambda r: r.pop("format_version")), [],
     "format_version: missing"),
    ("unknown top-level key", _set("colour", "blue"), [], "colour: unknown key"),
    ("classes renamed", _set("classes", ["a", "b"]), [], "classes:"),
    ("temperature Infinity", _json_with("temperature", "Infinity"), [],
     "temperature: inf is outside 0.01..100"),
    ("temperature 1e400", _json_with("temperature", "1e400"), [], "temperature: inf"),
    ("temperature 0", _set("temperature", 0), [], "temperature: 0 is outside"),
    ("temperature a string", _set("temperature", "1.5"), [], "temperature: expected a number"),
    ("tta not a mode", _set("tta", "yes"), [], "tta: 'yes' is not a TTA mode"),
    ("tta a number", _set("tta", 1), [], "tta: 1 is not a TTA mode"),
    ("6 class biases", _set("class_biases", [0.0] * 6), [],
     "class_biases: expected a list of 7 numbers, got 6"),
    ("NaN class bias", _json_with("class_biases", "[0, 0, 0, NaN, 0, 0, 0]"), [],
     "class_biases[3]: nan is outside -100..100"),
    ("NaN member dropout", _model("dense_dropout", float("nan")), [], "dropout nan outside"),
    ("non-numeric defer threshold", _set("defer", {"kind": "max_prob", "threshold": "high"}),
     [], "defer.threshold: expected a number"),
    ("defer threshold 7", _set("defer", {"kind": "max_prob", "threshold": 7}), [],
     "defer.threshold: 7 is outside"),
    ("unknown defer kind", _set("defer", {"kind": "entropy", "threshold": 0.5}), [],
     "defer.kind: 'entropy'"),
    ("weights for 3 of 2 members", _set("weights", [0.3, 0.3, 0.4]), [],
     "weights: expected a list of 2 numbers, got 3"),
    ("negative weight", _set("weights", [-1.0, 2.0]), [], "weights[0]: -1.0 is outside"),
    ("all weights zero", _set("weights", [0, 0]), [], "at least one must be > 0"),
    ("no members", _set("members", []), [], "members: expected a list of 1..64"),
    ("member weights ../..", _member("weights_file", "../../elsewhere.safetensors"), [],
     "not a path inside the ensemble folder"),
    ("member weights absolute", _member("weights_file", "/etc/passwd"), [],
     "not a path inside the ensemble folder"),
    ("member weights link out", _outside_link, [], "leads outside the ensemble folder"),
    ("two members one file", lambda t: _tamper(t, lambda r: r["members"][1].__setitem__(
        "weights_file", r["members"][0]["weights_file"])), [],
     "two members have the weights_file"),
    ("member dense_units 10**9", _model("dense_units", [10**9]), [],
     "parameters, more than the 150,000,000 allowed"),
    ("member 10**6 convs per block", _model("convs_per_block", [10**6]), [],
     "more than the 64 allowed"),
    ("member filters tampered", _model("filters", [16, 16]), [], "does not match its config"),
    ("member config unknown key", _model("colour", "red"), [],
     "unknown config key members[0].config.model.colour"),
    ("member input_size 0", _model("input_size", 0), [], "model.input_size: 0"),
    ("member weights not safetensors", lambda t: next(
        (t / "ens" / "members").glob("*")).write_bytes(b"\x80\x04K\x01."), [],
     "cannot load weights"),
    ("--device bogus", _no_setup, ["--device", "bogus", *DEFAULT_ARGS], "device: 'bogus'"),
    ("--rule bogus", _no_setup, ["--rule", "bogus", *DEFAULT_ARGS],
     "argument --rule: invalid choice"),
    ("no inputs", _no_setup, ["--out", "{t}/old.csv"], "arguments are required: inputs"),
]


# Named pipes (a reader that opened one would block: a real process has a timeout), and the
# ``python -m`` entry point with argparse's refusal.
REFUSED_REAL = {"--out is a named pipe", "ensemble.json a named pipe", "--rule bogus"}
IN_PROCESS = [c for c in REFUSED if c[0] not in REFUSED_REAL]
REAL = [c for c in REFUSED if c[0] in REFUSED_REAL]


@pytest.mark.parametrize(("case", "setup", "args", "expected"), IN_PROCESS,
                         ids=[c[0] for c in IN_PROCESS])
def test_refused_before_anything_is_written(case: str, setup: Callable[[Path], None],
                                            args: list[str], expected: str,
                                            case_dir: Path) -> None:
    _refused(case, setup, args, expected, case_dir, run_in_process)


@pytest.mark.parametrize(("case", "setup", "args", "expected"), REAL, ids=[c[0] for c in REAL])
def test_refused_before_anything_is_written_in_a_real_process(
        case: str, setup: Callable[[Path], None], args: list[str], expected: str,
        case_dir: Path) -> None:
    _refused(case, setup, args, expected, case_dir, run)


def _refused(case: str, setup: Callable[[Path], None], args: list[str], expected: str,
             t: Path, runner: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    setup(t)
    args = [a.format(t=t) for a in args or DEFAULT_ARGS]
    before = snapshot(t)
    proc = runner("predict", "--ensemble", str(t / "ens"), *args)
    assert_refused(proc, expected)
    assert snapshot(t) == before, case


def _good_png(t: Path) -> str:
    Image.fromarray(faces(1, seed=1)[0]).save(t / "face.png")
    return str(t / "face.png")


def _named(t: Path, name: str | bytes, data: bytes) -> str:
    path = os.path.join(os.fsencode(t), os.fsencode(name))
    with open(path, "wb") as f:
        f.write(data)
    return os.fsdecode(path)


def _truncated_npz(t: Path) -> str:
    np.savez(t / "cut.npz", images=faces(5))
    data = (t / "cut.npz").read_bytes()
    (t / "cut.npz").write_bytes(data[: len(data) // 2])
    return str(t / "cut.npz")


def _corrupt_npz(t: Path) -> str:
    np.savez_compressed(t / "bad.npz", images=faces(5))
    data = bytearray((t / "bad.npz").read_bytes())
    data[100:400] = os.urandom(300)  # inside the deflated member, the directory intact
    (t / "bad.npz").write_bytes(bytes(data))
    return str(t / "bad.npz")


def _pipe_in_folder(t: Path) -> str:
    (t / "imgs").mkdir()
    fifo(t / "imgs" / "stuck.png")
    return str(t / "imgs")


def _loop_folder(t: Path) -> str:
    (t / "loop").mkdir()
    (t / "loop" / "again").symlink_to(t / "loop")
    Image.fromarray(faces(1)[0]).save(t / "loop" / "x.png")
    return str(t / "loop")


def _long_line_csv(t: Path) -> str:
    row = " ".join(map(str, faces(1)[0].ravel()))
    (t / "long.csv").write_text(f"pixels\n{row}\n{'1 ' * 1_500_000}\n{row}\n")
    return str(t / "long.csv")


def _utf16_csv(t: Path) -> str:
    row = " ".join(map(str, faces(1)[0].ravel()))
    (t / "u16.csv").write_text(f"emotion,pixels\n3,{row}\n", encoding="utf-16")
    return str(t / "u16.csv")


def _object_npz(t: Path) -> str:
    np.savez(t / "obj.npz", images=np.array([faces(1)[0], None], dtype=object))
    return str(t / "obj.npz")


# (case, make(t) -> input path, rows it yields (source suffix, error text or "" if predicted))
ISOLATED: list[tuple[str, Callable[[Path], str], list[tuple[str, str]]]] = [
    ("missing file", lambda t: str(t / "nope.png"), [("nope.png", "no such file")]),
    ("truncated npz", _truncated_npz, [("cut.npz", "not an .npz (zip) file")]),
    ("corrupt npz", _corrupt_npz, [("bad.npz", "cannot read npz")]),
    ("empty npz", lambda t: _named(t, "empty.npz", b""), [("empty.npz", "not an .npz")]),
    ("npz of a 20000x20000 image", lambda t: str(npz_declaring(t / "big.npz",
                                                                (1, 20000, 20000))),
     [("big.npz", "over the 40-megapixel limit per image")]),
    ("npz over 1 GiB decoded", lambda t: str(npz_declaring(t / "many.npz",
                                                           (100_000, 48, 48), "<f8")),
     [("many.npz", "over the 1,024 MiB limit per array")]),
    ("npz of object arrays", _object_npz, [("obj.npz", "need pickle")]),
    ("npz without images", lambda t: (np.savez(t / "x.npz", faces=faces(1)), str(
        t / "x.npz"))[1], [("x.npz", "no 'images' array (found: faces)")]),
    ("PNG of 8000x8000", lambda t: str(png_declaring(t / "p64.png", 8000, 8000)),
     [("p64.png", "8000x8000 pixels, over the 40-megapixel limit")]),
    ("PNG of 12000x12000 (PIL warns)", lambda t: str(png_declaring(t / "p144.png", 12000,
                                                                   12000)),
     [("p144.png", "over the 40-megapixel limit")]),
    ("PNG of 100000x100000 (PIL refuses)", lambda t: str(png_declaring(
        t / "p1e10.png", 100000, 100000)), [("p1e10.png", "over the 40-megapixel limit")]),
    ("text named .png", lambda t: _named(t, "note.png", b"hello"),
     [("note.png", "cannot decode image")]),
    ("named pipe", lambda t: str(fifo(t / "pipe.png")),
     [("pipe.png", "a named pipe, not a regular file")]),
    ("named pipe in a folder", _pipe_in_folder,
     [("stuck.png", "a named pipe, not a regular file")]),
    ("character device", lambda t: "/dev/zero",
     [("/dev/zero", "a character device, not a regular file")]),
    ("folder with a link loop", _loop_folder, [("x.png", "")]),
    ("CSV without pixels", lambda t: _named(t, "a.csv", b"x,y\n1,2\n"),
     [("a.csv", "no 'pixels' column (found: x, y)")]),
    ("empty CSV", lambda t: _named(t, "e.csv", b""), [("e.csv", "empty file")]),
    ("CSV header only", lambda t: _named(t, "h.csv", b"emotion,pixels\n"),
     [("h.csv", "no data rows")]),
    ("npz of no images", lambda t: (np.savez(t / "none.npz", images=faces(0)), str(
        t / "none.npz"))[1], [("none.npz", "no images (empty 'images' array)")]),
    ("binary named .csv", lambda t: _named(t, "bin.csv", os.urandom(3000)),
     [("bin.csv", "no 'pixels' column")]),
    ("CSV with a 3 MB line", _long_line_csv,
     [("long.csv:2", ""), ("long.csv:3", "expected 2304 pixel values"), ("long.csv:4", "")]),
    ("UTF-16 CSV", _utf16_csv, [("u16.csv:2", "")]),
    ("CSV value 300", lambda t: _named(t, "v.csv", ("pixels\n" + " ".join(
        ["300"] + ["0"] * 2303) + "\n").encode()), [("v.csv:2", "pixel value 300")]),
    ("name not UTF-8", lambda t: _named(t, b"caf\xe9.png", b"junk"),
     [("caf\\udce9.png", "cannot decode image")]),
    ("name with a newline", lambda t: _named(t, "two\nlines.png", b"junk"),
     [("two\\nlines.png", "cannot decode image")]),
]


# Special files: a reader that opened one would block (pipes) or never end (/dev/zero).
ISOLATED_REAL = {"named pipe", "named pipe in a folder", "character device"}
ISOLATED_IN_PROCESS = [c for c in ISOLATED if c[0] not in ISOLATED_REAL]
ISOLATED_IN_A_REAL_PROCESS = [c for c in ISOLATED if c[0] in ISOLATED_REAL]


@pytest.mark.parametrize(("case", "make", "rows"), ISOLATED_IN_PROCESS,
                         ids=[c[0] for c in ISOLATED_IN_PROCESS])
def test_one_bad_input_costs_only_its_own_rows(case: str, make: Callable[[Path], str],
                                               rows: list[tuple[str, str]],
                                               case_dir: Path) -> None:
    _isolated(make, rows, case_dir, run_in_process)


@pytest.mark.parametrize(("case", "make", "rows"), ISOLATED_IN_A_REAL_PROCESS,
                         ids=[c[0] for c in ISOLATED_IN_A_REAL_PROCESS])
def test_one_bad_input_costs_only_its_own_rows_in_a_real_process(
        case: str, make: Callable[[Path], str], rows: list[tuple[str, str]],
        case_dir: Path) -> None:
    _isolated(make, rows, case_dir, run)


def _isolated(make: Callable[[Path], str], rows: list[tuple[str, str]], t: Path,
              runner: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    good_png = _good_png(t)
    bad = make(t)
    out = t / "out" / "pred.csv"  # a folder that does not exist yet is created
    proc = runner("predict", "--ensemble", str(t / "ens"), "--out", str(out),
                  str(t / "good.npz"), bad, good_png)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    df = pd.read_csv(out, keep_default_na=False, encoding="utf-8")
    assert list(df["source"][:3]) == [f"{t}/good.npz:{i}" for i in range(3)]
    assert df["source"].iloc[-1] == good_png and df["label_name"].iloc[-1] != ""
    middle = df.iloc[3:-1]
    assert len(middle) == len(rows), middle[["source", "error"]]
    for (_, row), (suffix, error) in zip(middle.iterrows(), rows, strict=True):
        assert row["source"].endswith(suffix), (row["source"], suffix)
        if error:
            assert error in row["error"] and row["label"] == "", row["error"]
        else:
            assert row["error"] == "" and row["label_name"] != ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == sum(1 for _, e in rows if e)
    assert [p.name for p in out.parent.iterdir()] == ["pred.csv"]  # no temp file left


def test_nothing_readable_leaves_the_output_alone(case_dir: Path) -> None:
    t = case_dir
    proc = run_in_process("predict", "--ensemble", str(t / "ens"), "--out", str(t / "old.csv"),
                          str(t / "missing.png"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no input could be read")
    assert (t / "old.csv").read_text() == "an earlier output that must survive\n"


def test_a_closed_stdout_ends_quietly(case_dir: Path) -> None:
    """``predict ... | head -1``: the pipe closes after one line; no traceback, exit 1."""
    t = case_dir
    np.savez(t / "many.npz", images=faces(3000))
    proc = subprocess.Popen([sys.executable, "-m", "fer_ray.predict", "--ensemble",
                             str(t / "ens"), str(t / "many.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"source,face,x,y,w,h")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=180) == 1 and "Traceback" not in err and "Error" not in err, err


def test_a_successful_run_replaces_the_output(case_dir: Path) -> None:
    t = case_dir
    proc = run_in_process("predict", "--ensemble", str(t / "ens"), "--out", str(t / "old.csv"),
                          "--defer", "--rule", "adjusted", str(t / "good.npz"))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(t / "old.csv")
    assert len(df) == 3 and "deferred" in df.columns
    assert sorted(p.name for p in t.iterdir()) == ["ens", "good.npz", "old.csv"]


def test_an_ensemble_uri_that_is_not_there_is_one_line(case_dir: Path) -> None:
    t = case_dir
    before = snapshot(t)
    proc = run_in_process("predict", "--ensemble", f"file://{t}/nowhere", "--out",
                          str(t / "old.csv"), str(t / "good.npz"))
    assert_refused(proc, "nowhere: cannot fetch")
    assert snapshot(t) == before


def test_unreadable_files_and_folders_are_error_rows(case_dir: Path) -> None:
    """Permissions: a file and a subfolder the user may not read; the rest is predicted."""
    t = case_dir
    (t / "imgs" / "locked").mkdir(parents=True)
    good = _good_png(t)
    shutil.copy(good, t / "imgs" / "ok.png")
    shutil.copy(good, t / "secret.png")
    (t / "secret.png").chmod(0)
    (t / "imgs" / "locked").chmod(0)
    try:
        proc = run("predict", "--ensemble", str(t / "ens"), "--out", str(t / "p.csv"),
                   str(t / "imgs"), str(t / "secret.png"), as_user=True)
    finally:
        (t / "imgs" / "locked").chmod(0o755)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    df = pd.read_csv(t / "p.csv", keep_default_na=False).set_index("source")
    assert df.loc[f"{t}/imgs/locked", "error"] == "cannot list folder (Permission denied)"
    assert df.loc[f"{t}/secret.png", "error"] == "cannot read (Permission denied)"
    assert df.loc[f"{t}/imgs/ok.png", "label_name"] != ""


def test_a_killed_run_leaves_the_old_output_and_no_temp_file(case_dir: Path) -> None:
    """SIGTERM mid-write (a scheduler's timeout): the earlier output stays, the temp goes."""
    import signal
    import time

    t = case_dir
    np.savez(t / "many.npz", images=faces(60_000))
    proc = subprocess.Popen([sys.executable, "-m", "fer_ray.predict", "--ensemble",
                             str(t / "ens"), "--out", str(t / "old.csv"), str(t / "many.npz")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(t.glob(".old.csv.*.tmp")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(t.glob(".old.csv.*.tmp")), "the run never started writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert (t / "old.csv").read_text() == "an earlier output that must survive\n"
    assert not list(t.glob(".*.tmp"))
