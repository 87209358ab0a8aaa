"""Where experiments live: a local folder, or an object-store URI (s3://, gs://, file://).

On a cluster every node writes checkpoints to ``--storage`` directly (Ray >= 2.7 does not
sync trial folders to the head), so it must be shared: an NFS path or a URI. fer-ray's own
records (search.json, results.parquet, ensemble/) go to the same place through pyarrow's
filesystems; checkpoints needed on this machine (to evaluate or ensemble) are fetched into a
local cache first. No Ray import.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from fer_ray.errors import ConfigError, DataError

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


def write_bytes(location: str, data: bytes) -> None:
    """Write a file; locally via temp file + rename (object stores put objects atomically)."""
    if not is_uri(location):
        local = Path(location)
        tmp = local.with_name(f".{local.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return
    fs, path = _filesystem(location)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def read_bytes(location: str) -> bytes:
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


def fetch_dir(location: str) -> Path:
    """A local folder holding ``location``: itself, or a cached copy of a remote folder."""
    if not is_uri(location):
        return Path(location)
    local = CACHE / hashlib.sha256(location.encode()).hexdigest()[:20]
    if not (local / ".complete").exists():
        fs, remote = _filesystem(location)
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(remote, str(local), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        (local / ".complete").touch()
    return local


def upload_dir(local: Path, location: str) -> None:
    """Copy a local folder to ``location`` (a URI)."""
    fs, path = _filesystem(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
