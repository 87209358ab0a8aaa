"""Read FER CSVs (Kaggle fer2013.csv / icml_face_data.csv, train.csv / test.csv) into arrays.

read_csv_source(path) -> RawDataset: one CSV, split by its Usage column (Training/PublicTest/
PrivateTest -> train, tests["public_test"], tests["private_test"]) or, without one, a train
pool. read_csv_folder(path, csvs): the Kaggle CSV layouts of a folder. read_csv_split(path):
one CSV as a test set. Parsing is vectorised with pyarrow; only on error does a slow exact
pass with the csv module find the line an editor shows (header = line 1) for a one-line
DataError. Rows are never dropped silently. fer_ray.data.loaders dispatches to these.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fer_ray.data._types import NUM_CLASSES, RawDataset, Split
from fer_ray.data.images import RowError, parse_pixel_strings, show_value
from fer_ray.errors import DataError

_USAGES = ("Training", "PublicTest", "PrivateTest")
_USAGE_SPLITS = ("train", "public_test", "private_test")


def _csv_header(path: Path, required: tuple[str, ...] = ("pixels",)) -> list[str]:
    """Column names of a CSV, stripped and lower-cased (Kaggle's icml file has ' Usage')."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        try:
            header = [h.strip().lower() for h in next(csv.reader(f), [])]
        except csv.Error as exc:
            raise DataError(f"{path} line 1: malformed CSV header ({exc})") from exc
    found = ", ".join(show_value(h, 20) for h in header[:12]) + " ..." * (len(header) > 12)
    if "pixels" in header and "emotion" in required and "emotion" not in header:
        raise DataError(
            f"{path}: no 'emotion' column, so there is nothing to train on "
            f"(found: {found}; give an unlabelled file as a test set instead)"
        )
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    for name in ("emotion", "pixels", "usage"):
        if header.count(name) > 1:
            raise DataError(f"{path}: column {name!r} appears {header.count(name)} times")
    return header


def _scan_lines(path: Path, n_fields: int, want_row: int | None) -> int | None:
    """Slow exact pass with Python's csv module (error path only).

    want_row None: raise DataError at the first record whose field count != n_fields.
    want_row i: return the 1-based line where data row i starts (blank lines are skipped by
    both pyarrow and this scan, and quoted fields may span lines, so it is not simply i + 2).
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        prev, k = 0, -1  # k: index of the current non-blank record; the header is -1
        try:
            for rec in reader:
                start, prev = prev + 1, reader.line_num
                if not rec:
                    continue
                if want_row is None and len(rec) != n_fields:
                    raise DataError(
                        f"{path} line {start}: expected {n_fields} comma-separated fields, "
                        f"got {len(rec)}"
                    )
                if k == want_row:
                    return start
                k += 1
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from exc
    return None


def _read_table(path: Path, header: list[str], wanted: list[str]) -> pa.Table:
    """Read the wanted columns of a CSV as strings with pyarrow (multi-threaded, fast)."""
    names = [f"f{i}" for i in range(len(header))]  # positional: other headers may be blank
    cols = [names[header.index(w)] for w in wanted]
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in cols},
                include_columns=cols,
                check_utf8=False,  # bad bytes become "not an integer" errors with a line
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        # pyarrow's message has no line number: find the bad row exactly, then give up.
        _scan_lines(path, len(header), None)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot parse CSV ({reason})") from exc
    return table.rename_columns(wanted)


def _first_bad(col: pa.ChunkedArray, bad: np.ndarray, describe: str) -> list[RowError]:
    """[RowError] for the first True in bad ([] if none); {raw}/{num} get the raw value."""
    idx = np.flatnonzero(bad)
    if idx.size == 0:
        return []
    raw = pc.cast(col.slice(int(idx[0]), 1), pa.binary())[0].as_py().strip()
    num = raw.decode("ascii", "replace")
    return [RowError(int(idx[0]), describe.format(raw=show_value(raw), num=num))]


def _parse_labels(col: pa.ChunkedArray) -> tuple[np.ndarray, list[RowError]]:
    """Emotion strings (N,) -> (N,) int64 labels and the first non-integer / out-of-range row."""
    s = pc.ascii_trim_whitespace(col)
    ok = pc.and_(pc.ascii_is_decimal(s), pc.less_equal(pc.binary_length(s), 3))
    ok_np = ok.to_numpy(zero_copy_only=False)
    vals = pc.cast(pc.if_else(ok, s, "-1"), pa.int64()).to_numpy(zero_copy_only=False)
    errs = _first_bad(col, ~ok_np, "emotion label {raw} is not an integer 0..6")
    errs += _first_bad(col, ok_np & (vals >= NUM_CLASSES), "emotion label {num} outside 0..6")
    return vals.astype(np.int64), errs


def _parse_usage(col: pa.ChunkedArray) -> tuple[np.ndarray, list[RowError]]:
    """Usage strings (N,) -> (N,) int8 codes indexing _USAGE_SPLITS and the first unknown row."""
    low = pc.ascii_lower(pc.ascii_trim_whitespace(col))
    idx = pc.index_in(low, value_set=pa.array([u.lower() for u in _USAGES]))
    codes = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int8)
    msg = "unknown Usage value {raw} (expected Training, PublicTest or PrivateTest)"
    return codes, _first_bad(col, codes < 0, msg)


def _read_csv(
    path: Path, header: list[str], *, usage: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Parse a FER CSV -> images (N, 48, 48) uint8, labels (N,) int64 (None without an emotion
    column), Usage codes (N,) int8 (None if usage is False or there is no Usage column).
    Validation is vectorised; the first bad row of all checks is reported with its line."""
    wanted = ["pixels", *(c for c in ("emotion", "usage") if c in header)]
    if not usage and "usage" in wanted:
        wanted.remove("usage")
    table = _read_table(path, header, wanted)
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows (header only)")
    errors: list[RowError] = []
    labels = codes = None
    if "emotion" in wanted:
        labels, errs = _parse_labels(table["emotion"])
        errors += errs
    if "usage" in wanted:
        codes, errs = _parse_usage(table["usage"])
        errors += errs
    try:
        images = parse_pixel_strings(table["pixels"])
    except RowError as exc:
        images = np.empty(0)
        errors.append(exc)
    if errors:
        first = min(errors, key=lambda x: x.row)
        line = _scan_lines(path, len(header), first.row) or first.row + 2
        raise DataError(f"{path} line {line}: {first.message}")
    return images, labels, codes


def read_csv_source(path: Path) -> RawDataset:
    """One CSV as a dataset: split by Usage if present, else the whole file is a train pool."""
    header = _csv_header(path, ("emotion", "pixels"))
    images, labels, codes = _read_csv(path, header, usage=True)
    assert labels is not None  # the header has an emotion column
    if codes is None:
        return RawDataset(train=Split(images, labels, str(path)), source=str(path))
    splits: dict[str, Split] = {}
    for code, key in enumerate(_USAGE_SPLITS):
        mask = codes == code
        if mask.any():
            src = f"{path} (Usage={_USAGES[code]})"
            splits[key] = Split(np.ascontiguousarray(images[mask]), labels[mask], src)
    if "train" not in splits:
        raise DataError(f"{path}: no rows with Usage 'Training', so nothing to train on")
    return RawDataset(train=splits.pop("train"), tests=splits, source=str(path))


def read_csv_split(path: Path) -> Split:
    """One CSV given as a test set -> Split (pixels, optional emotion; all rows kept whatever
    their Usage; labels None without an emotion column)."""
    images, labels, _ = _read_csv(path, _csv_header(path), usage=False)
    return Split(images, labels, str(path))


def read_csv_folder(path: Path, csvs: dict[str, Path]) -> RawDataset | None:
    """Kaggle CSV layouts in a folder, most complete first; None if none applies."""
    for name in ("fer2013.csv", "icml_face_data.csv"):
        if name in csvs:
            return read_csv_source(csvs[name])
    if "train.csv" in csvs:
        pool = read_csv_source(csvs["train.csv"])
        tests = dict(pool.tests)
        if "test.csv" in csvs:
            tests["test"] = read_csv_split(csvs["test.csv"])
        return RawDataset(train=pool.train, tests=tests, source=str(path))
    if "test.csv" in csvs:
        raise DataError(f"{path}: test.csv but no train.csv, so there is nothing to train on")
    return None
