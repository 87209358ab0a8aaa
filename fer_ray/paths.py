"""Paths a user gives on a command line, checked before any work starts. No torch, no Ray.

Inputs are read only when they are regular files (or folders): a named pipe or a device would
block or never end. Small JSON inputs (configs, ``ensemble.json``) are read with a size limit.
Outputs must not be a folder where a file is
expected, one of the inputs, or a folder holding files the command did not write, and their
folder must exist or be creatable. Every check raises one line naming the flag and the path;
none of them writes anything.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fer_ray.errors import ConfigError, DataError

MAX_JSON_BYTES = 64 * 2**20  # ensemble.json / config.json are kilobytes; this is generous

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def shown(path: str | os.PathLike[str]) -> str:
    """A path for a one-line message or a CSV cell: control characters and bytes that are not
    UTF-8 (surrogates from the file system) are written as escapes, so one line stays one."""
    text = os.fspath(path)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        text = text.encode("unicode_escape").decode("ascii")
    return text


def kind(mode: int) -> str:
    """'a folder', 'a named pipe', ... for a stat mode; 'a regular file' otherwise."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file")


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise DataError(f"{shown(path)}: no such file or directory") from None
    except OSError as exc:  # permission, a symlink loop, a name too long
        raise DataError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None


def require_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when it is a regular file (symlinks followed); DataError otherwise."""
    path = Path(path)
    mode = _stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise DataError(f"{shown(path)}: {kind(mode)}, not a regular file")
    return path


def require_file_or_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` when it is a regular file or a folder; DataError for anything else."""
    path = Path(path)
    mode = _stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{shown(path)}: {kind(mode)}, not a regular file or folder")
    return path


def read_limited(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (the limit is in the message)."""
    path = require_file(path)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise DataError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise DataError(f"{shown(path)}: larger than the {max_bytes // 2**20} MiB limit for "
                        "this kind of file")
    return data


def read_json(path: str | os.PathLike[str], max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A small JSON file: UTF-8, at most ``max_bytes``. NaN and Infinity are read as Python
    writes them (fer-ray's own files may hold them in free-form metadata); the schemas that
    read numbers that matter (``check_config``, ``ensemble.record``) refuse non-finite ones."""
    data = read_limited(path, max_bytes)
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(f"{shown(path)}: not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise DataError(f"{shown(path)}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{shown(path)}: not valid JSON ({exc})") from None


def check_name(name: str, flag: str = "--name") -> str:
    """A plain folder name (letters, digits, '.', '_', '-', '+', '=', '@', ','), not a path:
    no separators, no '..', not hidden, at most 200 characters."""
    ok = (0 < len(name) <= 200 and name[0].isalnum()
          and all(c.isalnum() or c in "._-+=@," for c in name))
    if not ok:
        raise ConfigError(f"{flag} {shown(name)!r}: not a plain name (letters, digits and "
                          "._-+=@, starting with a letter or digit; no '/' or '..')")
    return name


def _absolute(path: Path) -> Path:
    """The real path (links resolved), as the command will use it: '~' is the shell's job."""
    return path.resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def check_creatable(folder: Path, what: str) -> None:
    """``folder`` exists as a writable folder, or can be created: its nearest existing
    ancestor is a writable folder. ``what`` starts the message (e.g. '--out x.csv')."""
    target = probe = _absolute(folder)
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link: the folder cannot be created through it
            raise ConfigError(f"{what}: {shown(probe)} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        found = kind(probe.stat().st_mode)
        if probe == target:
            raise ConfigError(f"{what}: {shown(probe)} is {found}, not a folder")
        raise ConfigError(f"{what}: cannot create a folder inside {shown(probe)}, which is "
                          f"{found}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {shown(probe)} is not writable")


def check_output_file(out: str | os.PathLike[str], flag: str,
                      inputs: Iterable[str | os.PathLike[str]]) -> Path:
    """An output file that can be written without harming an input (see the module doc).

    Refused: a folder or any other non-regular file; one of ``inputs`` (also through a link);
    a path inside an input folder (it would be read as an input). Returns the path as given.
    """
    out = Path(out)
    what = f"{flag} {shown(out)}"
    target = _absolute(out)
    if target.exists() and not target.is_file():
        raise ConfigError(f"{what}: is {kind(target.stat().st_mode)}, not a file")
    for raw in inputs:
        source = _absolute(Path(raw))
        if target == source or (target.exists() and source.exists()
                                and os.path.samefile(target, source)):
            raise ConfigError(f"{what}: is also an input, which writing it would destroy")
        if source.is_dir() and _inside(target, source):
            raise ConfigError(f"{what}: is inside the input folder {shown(raw)}, where it "
                              "would be read as an input")
    check_creatable(target.parent, what)
    return out


def foreign_entries(directory: Path, owned: Sequence[str]) -> list[str]:
    """Names in ``directory`` that match none of the ``owned`` patterns (fnmatch)."""
    return sorted(p.name for p in directory.iterdir()
                  if not any(fnmatch.fnmatch(p.name, pattern) for pattern in owned))


def check_replaceable(directory: Path, owned: Sequence[str], what: str) -> None:
    """``directory`` may be replaced by a command's output folder: it does not exist, or it is
    a folder holding only names matching ``owned`` (what an earlier run wrote there)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"{what}: is {kind(directory.stat().st_mode)}, not a folder")
    try:
        foreign = foreign_entries(directory, owned)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot list it ({exc.strerror or exc})") from None
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ConfigError(f"{what}: already holds files this command did not write "
                          f"({', '.join(map(shown, foreign[:3]))}{more}); replacing the "
                          "folder would delete them, so give a new or empty folder")


def check_output_dir(out: str | os.PathLike[str], flag: str, owned: Sequence[str],
                     inputs: Iterable[str | os.PathLike[str]],
                     may_hold: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """An output folder the command may create or replace (see ``check_replaceable``).

    Refused besides: an input or a folder holding one, and a folder inside an input folder
    (it would be read as data) unless that input is in ``may_hold`` (an experiment may hold
    its ensemble and report). Returns the path as given.
    """
    out = Path(out)
    what = f"{flag} {shown(out)}"
    target = _absolute(out)
    holders = {_absolute(Path(p)) for p in may_hold}
    for raw in inputs:
        source = _absolute(Path(raw))
        if target == source or _inside(source, target):
            raise ConfigError(f"{what}: would replace the input {shown(raw)}")
        if source.is_dir() and _inside(target, source) and source not in holders:
            raise ConfigError(f"{what}: is inside the input folder {shown(raw)}, where it "
                              "would be read as data")
    check_replaceable(target, owned, what)
    check_creatable(target.parent, what)
    return out
