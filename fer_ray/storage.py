"""Where experiments live: a local folder, or an object-store URI (s3://, gs://, file://).

On a cluster every node writes checkpoints to ``--storage`` directly (Ray >= 2.7 does not
sync trial folders to the head), so it must be shared: an NFS path or a URI. fer-ray's own
records (search.json, results.parquet, ensemble/) go to the same place through pyarrow's
filesystems; checkpoints needed on this machine (to evaluate or ensemble) are fetched into a
local cache first. No Ray import.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from fer_ray.errors import ConfigError, DataError, reason
from fer_ray.paths import check_replaceable, require_file, shown

CACHE = Path(os.environ.get("FER_RAY_CACHE", Path(tempfile.gettempdir()) / "fer-ray-cache"))


def is_uri(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(location)
    except (pafs.ArrowInvalid, OSError, ValueError) as exc:
        raise ConfigError(f"{location}: unsupported storage ({exc})") from None


def _temp_sibling(path: Path) -> Path:
    """A hidden name next to ``path``, unique, so concurrent writers never share a temp file."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike[str], exclusive: bool = False) -> Iterator[Path]:
    """A temporary path next to ``path``, moved onto it when the block succeeds and removed
    when it fails: readers see the old file or the new one, never half of one.

    exclusive: publish only if ``path`` does not exist yet (FileExistsError otherwise), so of
    two runs creating the same file exactly one wins.
    """
    target = Path(path)
    tmp = _temp_sibling(target)
    try:
        yield tmp
        if not exclusive:
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target)  # atomic create-if-absent
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: check, then rename
            if target.exists():
                raise FileExistsError(str(target)) from None
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(location: str, data: bytes, exclusive: bool = False) -> None:
    """Write a file; locally via temp file + rename (object stores put objects atomically).

    exclusive (local files): FileExistsError instead of replacing an existing file.
    """
    if not is_uri(location):
        with atomic_path(location, exclusive) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = _filesystem(location)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def read_bytes(location: str) -> bytes:
    """A whole file; a local one must be a regular file (a named pipe would block)."""
    if not is_uri(location):
        require_file(location)
    fs, path = _filesystem(location)
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{location}: cannot read ({exc.__class__.__name__})") from None


def exists(location: str) -> bool:
    fs, path = _filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def check_writable(location: str) -> None:
    """Create the folder and prove a file can be written there."""
    probe = join(location, ".write-test")
    try:
        fs, folder = _filesystem(location)
        fs.create_dir(folder, recursive=True)  # a no-op on object stores
        write_bytes(probe, b"")
        fs, path = _filesystem(probe)
        fs.delete_file(path)
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise ConfigError(f"--storage: cannot write to {location} ({reason})") from None


@contextmanager
def replace_dir(directory: str | os.PathLike[str], owned: Sequence[str]) -> Iterator[Path]:
    """A fresh temp folder next to ``directory`` that replaces it when the block succeeds, so an
    interrupted write leaves the previous folder whole (never old files beside new ones).

    owned: fnmatch patterns of what this kind of folder holds; a folder holding anything else
    is refused (ConfigError) instead of deleted, before and again just before replacing it.
    """
    target = Path(directory).resolve()
    what = shown(directory)
    check_replaceable(target, owned, what)
    tmp, old = _temp_sibling(target), _temp_sibling(target)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot create it ({exc.strerror or exc})") from None
    try:
        try:
            yield tmp
        except OSError as exc:  # a full disk while writing: the previous folder stays
            raise DataError(f"{what}: cannot write ({exc.strerror or exc})") from None
        check_replaceable(target, owned, what)
        if target.exists() and _exchange(tmp, target):
            return  # the old folder is now at tmp, removed below; the target never vanished
        with suppress(FileNotFoundError):
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError as exc:  # another run put a folder there in between
            with suppress(OSError):
                os.replace(old, target)
            raise DataError(f"{what}: was written by another process meanwhile "
                            f"({exc.strerror or exc}); this run's output was dropped") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():  # never drop the previous folder while nothing replaced it
            shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's renameat2, looked up once; None where the C library has none."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE), so a reader of ``b``
    always finds a whole folder. False where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_cwd = -100  # AT_FDCWD: the paths are absolute anyway
    return int(renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b),
                         _RENAME_EXCHANGE)) == 0


def make_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """Create a local folder and its missing parents; returns the ones created, outermost
    first (for ``remove_created``)."""
    target = Path(folder).resolve()
    missing = [p for p in (target, *target.parents) if not p.exists()][::-1]
    target.mkdir(parents=True, exist_ok=True)
    return missing


def remove_created(created: Sequence[Path]) -> None:
    """Remove the folders a failed run created (``make_dirs``) that are empty, innermost
    first. ``os.rmdir`` never removes a folder with anything in it: other runs' files are safe."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def fetch_dir(location: str) -> Path:
    """A local folder holding ``location``: itself, or a cached copy of a remote folder.

    The copy is kept with a stamp of the remote listing (every file's path, size and
    modification time) and fetched again when the remote folder changed, e.g. an ensemble
    rebuilt at the same URI. A new copy is made beside the old one and then swapped in.
    """
    if not is_uri(location):
        return Path(location)
    local = CACHE / hashlib.sha256(location.encode()).hexdigest()[:20]
    fs, remote = _filesystem(location)
    try:
        if fs.get_file_info(remote).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"no folder at {location}")
        stamp = _listing_stamp(fs, remote)
        if (local / ".complete").is_file() and (local / ".complete").read_text() == stamp:
            return local
        fresh = _temp_sibling(local)
        fresh.mkdir(parents=True)
        try:
            pafs.copy_files(remote, str(fresh), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            (fresh / ".complete").write_text(stamp)
            if local.exists():
                shutil.rmtree(local, ignore_errors=True)
            fresh.rename(local)
        finally:  # a failed copy, or another process that swapped its copy in first
            shutil.rmtree(fresh, ignore_errors=True)
    except OSError as exc:
        raise DataError(f"{location}: cannot fetch ({reason(exc)})") from None
    return local


def _listing_stamp(fs: pafs.FileSystem, remote: str) -> str:
    """A hash of every file under ``remote``: relative path, size, modification time."""
    infos = fs.get_file_info(pafs.FileSelector(remote, recursive=True))
    rows = sorted(f"{i.path.removeprefix(remote)}\t{i.size}\t{i.mtime_ns}"
                  for i in infos if i.type == pafs.FileType.File)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def upload_dir(local: Path, location: str) -> None:
    """Copy a local folder to ``location`` (a URI)."""
    fs, path = _filesystem(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
