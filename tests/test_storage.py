"""Storage: a cached remote folder follows its source; a replaced folder never vanishes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fer_ray import storage


def test_a_fetched_folder_is_fetched_again_when_the_remote_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilding an ensemble at the same URI must not return the old cached copy."""
    monkeypatch.setattr(storage, "CACHE", tmp_path / "cache")
    remote = tmp_path / "bucket" / "ensemble"
    remote.mkdir(parents=True)
    (remote / "ensemble.json").write_text('{"v": 1}')
    uri = f"file://{remote}"
    first = storage.fetch_dir(uri)
    assert (first / "ensemble.json").read_text() == '{"v": 1}'
    assert storage.fetch_dir(uri) == first  # unchanged: the cache serves it
    (remote / "ensemble.json").write_text('{"v": 22}')  # rebuilt: new size and time
    (remote / "members").mkdir()
    (remote / "members" / "m0.safetensors").write_bytes(b"w")
    again = storage.fetch_dir(uri)
    assert (again / "ensemble.json").read_text() == '{"v": 22}'
    assert (again / "members" / "m0.safetensors").read_bytes() == b"w"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [again.name]  # no temp left


def test_a_replaced_folder_exists_at_every_moment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing a folder (a rebuilt ensemble, a rewritten report) swaps old and new in one
    step: after every rename the folder is there, whole, old or new."""
    target = tmp_path / "ensemble"
    owned = ("ensemble.json", "members")
    seen: list[str | None] = []
    real_replace = os.replace

    def replace_and_look(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        json = target / "ensemble.json"
        seen.append(json.read_text() if json.is_file() else None)

    def write(version: int) -> None:
        with storage.replace_dir(target, owned) as tmp:
            (tmp / "members").mkdir()
            (tmp / "ensemble.json").write_text(str(version))

    monkeypatch.setattr(storage.os, "replace", replace_and_look)
    for version in range(3):
        write(version)
    assert None not in seen, seen  # never a moment without an ensemble folder
    assert (target / "ensemble.json").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["ensemble"]  # no temp folders left
