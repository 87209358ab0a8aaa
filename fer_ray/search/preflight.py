"""What a search checks before it writes anything or starts Ray, and its claim on its folder.

- ``check_storage``: the experiment folder can be created (nothing is written yet), and a
  fresh search does not land in a folder that already holds an experiment or other files.
- ``check_resources``: the CPUs/GPUs a trial asks for exist: on this machine for a local
  run (Ray is not started for that), on the cluster (joined here) with ``--address``.
- ``experiment_folder``: a fresh search creates its folder and writes ``search.json`` only
  if no other run did meanwhile; when the search then fails before any trial folder exists,
  what this run created is removed again, so failed searches leave no empty folders.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

from fer_ray import storage
from fer_ray._cli import check_reachable
from fer_ray.errors import ConfigError, reason
from fer_ray.experiment import SEARCH_JSON, TRIAL_PREFIX, SearchSettings, trials_that_fit
from fer_ray.models.inference import local_resources
from fer_ray.paths import check_creatable, shown
from fer_ray.search.tuner import _max_concurrent, init_ray


def _occupied(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _already_there(path: str) -> ConfigError:
    name = Path(path).name
    return ConfigError(f"{shown(path)}: already holds an experiment or other files; continue "
                       f"it with --resume --name {name}, or choose another --name")


def check_storage(path: str, resume: bool) -> None:
    """Refuse (ConfigError) a local experiment folder that cannot be created or, for a fresh
    search, already holds anything. Writes nothing; URIs are checked by writing a probe."""
    if storage.is_uri(path):
        storage.check_writable(path)
        return
    check_creatable(Path(path), f"--storage: cannot write to {shown(path)}")
    if not resume and _occupied(Path(path)):
        raise _already_there(path)


def check_resources(settings: SearchSettings) -> int:
    """Refuse (ConfigError) resources no trial can get, before anything is written; else
    return how many trials run at once.

    A local run is checked against this machine without starting Ray; with --address (or a
    Ray this process already runs), the cluster is joined and its resources are read.
    """
    if settings.address is None and not ray.is_initialized():
        return trials_that_fit(settings, *local_resources(), "this machine")
    if settings.address:
        check_reachable(settings.address)
    try:
        init_ray(settings)
    except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError, ...
        raise ConfigError(f"--address {settings.address}: cannot join the Ray cluster "
                          f"({reason(exc)})") from None
    return _max_concurrent(settings)


def _claim(path: str, record: dict[str, Any]) -> list[Path]:
    """Create the local folder and publish search.json if no other run did; the folders
    created (for cleanup)."""
    folder = Path(path)
    try:
        created = storage.make_dirs(folder)
    except OSError as exc:
        raise ConfigError(f"--storage: cannot write to {shown(path)} "
                          f"({exc.strerror or exc})") from None
    if not created and _occupied(folder):
        raise _already_there(path)
    try:
        storage.write_bytes(str(folder / SEARCH_JSON), json.dumps(record, indent=2).encode(),
                            exclusive=True)
    except FileExistsError:
        raise _already_there(path) from None
    except OSError as exc:
        storage.remove_created(created)
        raise ConfigError(f"--storage: cannot write to {shown(path)} "
                          f"({exc.strerror or exc})") from None
    return created


def _undo(folder: Path, created: list[Path]) -> None:
    """Empty the folder and remove what this run created, unless a trial folder exists."""
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if any(p.name.startswith(TRIAL_PREFIX) for p in entries):
        return  # trials ran: their checkpoints are worth a --resume
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    storage.remove_created(created)


@contextmanager
def experiment_folder(path: str, record: dict[str, Any] | None) -> Iterator[None]:
    """The search's claim on ``path`` for the duration of the block (see the module doc).

    record: the fresh search's ``search.json``; None for a resumed search, whose folder is
    used as it is. On object stores search.json is written as is, and nothing is undone.
    """
    if record is None:
        yield
        return
    if storage.is_uri(path):
        storage.write_bytes(storage.join(path, SEARCH_JSON), json.dumps(record, indent=2).encode())
        yield
        return
    created = _claim(path, record)
    try:
        yield
    except BaseException:
        _undo(Path(path), created)
        raise
