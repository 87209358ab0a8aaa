"""Prediction inputs of every kind, each read on its own: one bad input never costs the others.

``iter_inputs(paths)`` yields one ``Item`` per image: image files, folders (recursive, sorted,
hidden entries skipped, links to folders not followed), FER2013-style CSVs (a ``pixels``
column; UTF-8 or UTF-16 with a BOM) and ``.npz`` files with ``images``. Whatever goes wrong
with an input - missing, not a regular file (a named pipe would block), unreadable, damaged,
over a size limit - becomes an Item with an ``error`` and the next input is read. Rows already
read from a CSV that breaks later are kept. Memory stays bounded: CSVs are streamed with a
line-length limit, images and npz arrays are size-checked from their headers. No torch.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa

from fer_ray.data._types import IMAGE_SIZE
from fer_ray.data.images import (
    RowError,
    convert_stack,
    parse_pixel_row,
    parse_pixel_strings,
    read_image,
    read_photo,
    resize_face,
    to_gray,
)
from fer_ray.data.loaders import IMAGE_SUFFIXES
from fer_ray.data.npz_files import read_npz
from fer_ray.errors import DataError, reason
from fer_ray.paths import kind, shown

TABLE_SUFFIXES = frozenset({".csv", ".npz"})
MAX_LINE = 100_000  # characters in one CSV line: a FER row has under 10,000
_CHUNK = 1024  # CSV rows parsed at once


@dataclass
class Item:
    """One input row: an image (48, 48) uint8, or the reason it could not be read.

    photo: the whole picture (H, W, 3) uint8 RGB, for image files read with ``photos=True``
    (faces are to be found in it); ``image`` is then None until ``face_image`` makes it.
    """

    source: str
    image: np.ndarray | None
    error: str = ""
    photo: np.ndarray | None = None

    def face_image(self) -> np.ndarray:
        """The (48, 48) uint8 face of a readable item (the whole picture, resized)."""
        if self.image is None:
            if self.photo is None:
                raise ValueError(f"{self.source}: no image ({self.error})")
            self.image = resize_face(to_gray(self.photo)[0])
        return self.image


def _failed(path: Path, exc: BaseException) -> Item:
    """An error Item for a whole input; a DataError's own 'path: ' prefix is dropped."""
    text = str(exc) if isinstance(exc, DataError) else f"cannot read ({reason(exc)})"
    return Item(shown(path), None, text.removeprefix(f"{shown(path)}: "))


def _encoding(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(2)
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def _lines(handle: TextIO) -> Iterator[str]:
    """Physical lines, each cut to MAX_LINE characters (the rest of it skipped), so a file
    that is one endless line cannot exhaust memory; a cut line then fails as a bad row."""
    while line := handle.readline(MAX_LINE):
        if len(line) == MAX_LINE and line[-1] not in "\r\n":
            while (rest := handle.readline(MAX_LINE)) and rest[-1] not in "\r\n":
                pass
            line = line + "\n"
        yield line


def _parse_rows(source: str, rows: list[tuple[int, str | None]]) -> Iterator[Item]:
    """Pixel strings (with their line numbers) -> Items; vectorised unless a row is bad."""
    texts = [t or "" for _, t in rows]
    try:
        images = parse_pixel_strings(pa.chunked_array([pa.array(texts, pa.string())]))
    except RowError:
        images = None
    for i, (line, text) in enumerate(rows):
        where = f"{source}:{line}"
        if text is None:
            yield Item(where, None, "no 'pixels' field in this row")
        elif images is not None:
            yield Item(where, images[i])
        else:
            try:
                yield Item(where, parse_pixel_row(text).reshape(IMAGE_SIZE, IMAGE_SIZE))
            except ValueError as exc:
                yield Item(where, None, str(exc))


def _csv_items(path: Path) -> Iterator[Item]:
    """Rows of a CSV with a ``pixels`` column, as ``file:line`` Items (header = line 1)."""
    source = shown(path)
    with path.open(newline="", encoding=_encoding(path), errors="replace") as f:
        reader = csv.reader(_lines(f))
        header = [h.strip().lower() for h in next(reader, [])]
        if not header:
            yield Item(source, None, "empty file (no header line)")
            return
        if "pixels" not in header:
            found = ", ".join(shown(h)[:20] for h in header[:12]) or "nothing"
            yield Item(source, None, f"no 'pixels' column (found: {found})")
            return
        column = header.index("pixels")
        rows: list[tuple[int, str | None]] = []
        seen = 0  # rows and malformed records: a file with none is reported, not skipped
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield from _parse_rows(source, rows)
                rows, seen = [], seen + 1
                yield Item(f"{source}:{start}", None, f"malformed CSV ({exc})")
                continue
            if record:  # blank lines are not rows
                rows.append((start, record[column] if column < len(record) else None))
                seen += 1
            if len(rows) == _CHUNK:
                yield from _parse_rows(source, rows)
                rows = []
        yield from _parse_rows(source, rows)
        if not seen:
            yield Item(source, None, "no data rows (header only)")


def _npz_items(path: Path) -> Iterator[Item]:
    arrays, keys = read_npz(path, ("images",))
    if "images" not in arrays:
        raise DataError(f"{shown(path)}: no 'images' array (found: {', '.join(keys) or 'none'})")
    if arrays["images"].ndim >= 1 and len(arrays["images"]) == 0:
        raise DataError(f"{shown(path)}: no images (empty 'images' array)")
    images, _ = convert_stack(arrays["images"], shown(path))
    for index, image in enumerate(images):
        yield Item(f"{shown(path)}:{index}", image)


def _file_items(path: Path, photos: bool) -> Iterator[Item]:
    """One regular file's Items; anything that goes wrong ends it with one error Item."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            yield from _csv_items(path)
        elif suffix == ".npz":
            yield from _npz_items(path)
        elif photos:
            yield Item(shown(path), None, photo=read_photo(path))
        else:
            yield Item(shown(path), read_image(path)[0])
    except Exception as exc:  # decoders and parsers raise many types; each is one bad input
        yield _failed(path, exc)


def _folder_files(folder: Path) -> Iterator[Path | Item]:
    """Readable-looking files under ``folder`` (sorted paths) and error Items for subfolders
    that cannot be listed; hidden entries are skipped, links to folders not followed."""
    found: list[tuple[str, Path | Item]] = []

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename or folder)
        found.append((str(where), Item(shown(where), None,
                                       f"cannot list folder ({exc.strerror or reason(exc)})")))

    for root, dirs, files in os.walk(folder, onerror=unlisted):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        for name in files:
            suffix = Path(name).suffix.lower()
            if not name.startswith(".") and (suffix in IMAGE_SUFFIXES or suffix in TABLE_SUFFIXES):
                found.append((str(Path(root, name)), Path(root, name)))
    found.sort(key=lambda entry: Path(entry[0]))
    for _, entry in found:
        yield entry


def _path_items(path: Path, photos: bool, given: bool = True) -> Iterator[Item]:
    """Items of a path given on the command line, or (given=False) found in a folder, where
    a link to a folder is not followed."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        yield Item(shown(path), None, "no such file or directory")
        return
    except OSError as exc:
        yield Item(shown(path), None, f"cannot read ({exc.strerror or reason(exc)})")
        return
    if stat.S_ISREG(mode):
        yield from _file_items(path, photos)
    elif stat.S_ISDIR(mode):
        if not given:
            return
        for entry in _folder_files(path):
            yield from (_path_items(entry, photos, False) if isinstance(entry, Path)
                        else iter([entry]))
    else:
        yield Item(shown(path), None, f"{kind(mode)}, not a regular file")


def iter_inputs(inputs: Iterable[str | os.PathLike[str]],
                photos: bool = False) -> Iterator[Item]:
    """Every input as Items, in the order given (folders: sorted, recursive).

    photos: image files keep their whole picture (``Item.photo``) for face detection.
    """
    for raw in inputs:
        yield from _path_items(Path(raw), photos)
