"""``ensemble.json`` read as a schema: every key, type, length and range checked.

An ensemble folder may come from anywhere (a download, a shared drive), so nothing in it is
trusted: unknown keys and versions are refused, numbers must be finite and in range, member
weight files must lie inside the folder (no ``..``, no absolute paths, no links out of it),
and member configs are bounded (``fer_ray.models.vgg_fer.check_model``) before any model is
built. ``parse_record`` raises ConfigError naming the key; ``Ensemble.load`` adds the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_ray.config import MAX_ENSEMBLE_MEMBERS, TrainConfig, from_dict
from fer_ray.data import LABEL_SETS
from fer_ray.errors import ConfigError
from fer_ray.models.io import model_classes
from fer_ray.models.vgg_fer import check_model
from fer_ray.paths import shown
from fer_ray.tta import TtaMode, tta_mode

FORMAT_VERSION = 1
MAX_MEMBERS = MAX_ENSEMBLE_MEMBERS
MAX_ENSEMBLE_PARAMETERS = 2_000_000_000  # all members together: 8 GB of float32
TEMPERATURE_RANGE = (1e-2, 1e2)  # fit_temperature searches 0.05..20
MAX_ABS_BIAS = 100.0  # fit_class_biases moves in steps of 0.1 from 0
DEFER_KINDS = ("max_prob", "margin")
_KEYS = {"format_version", "classes", "members", "weights", "tta", "temperature",
         "class_biases", "defer", "info"}
_MEMBER_KEYS = {"name", "weights_file", "config", "info"}


@dataclass(frozen=True)
class MemberEntry:
    """One member as ``ensemble.json`` describes it; ``weights_file`` is inside the folder."""

    name: str
    weights_file: Path
    config: TrainConfig
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleRecord:
    """A checked ``ensemble.json``. classes: the members' class names (C of them);
    weights: (n_members,) >= 0; class_biases: (C,)."""

    classes: tuple[str, ...]
    members: list[MemberEntry]
    weights: np.ndarray
    tta: TtaMode  # files written before modes hold true/false: read as "flip"/"none"
    temperature: float
    class_biases: np.ndarray
    defer_kind: str
    defer_threshold: float | None
    info: dict[str, Any]


def _mapping(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key or 'the file'}: expected an object, got "
                          f"{type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{key}{'.' if key else ''}{unknown[0]}: unknown key")
    return value


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r:.40}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{key}: {value!r} is outside {low:g}..{high:g}")
    return float(value)


def _numbers(value: Any, key: str, length: int, low: float, high: float) -> np.ndarray:
    if not isinstance(value, list) or len(value) != length:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise ConfigError(f"{key}: expected a list of {length} numbers, got {got}")
    return np.array([_number(v, f"{key}[{i}]", low, high) for i, v in enumerate(value)])


def _weights_file(value: Any, key: str, directory: Path) -> Path:
    """A member's weight file: a relative path that stays inside the ensemble folder."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a relative file name, got {value!r:.60}")
    if Path(value).is_absolute() or "\\" in value or ".." in Path(value).parts:
        raise ConfigError(f"{key}: {shown(value)!r} is not a path inside the ensemble folder")
    root = directory.resolve()
    resolved = (root / value).resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise ConfigError(f"{key}: {shown(value)!r} leads outside the ensemble folder")
    return resolved


def _member(entry: Any, key: str, directory: Path) -> MemberEntry:
    entry = _mapping(entry, key, _MEMBER_KEYS)
    missing = sorted(_MEMBER_KEYS - {"info"} - set(entry))
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: missing")
    name = entry["name"]
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ConfigError(f"{key}.name: expected a name, got {name!r:.60}")
    if not isinstance(entry["config"], dict):
        raise ConfigError(f"{key}.config: expected an object")
    config = from_dict(TrainConfig, entry["config"], prefix=f"{key}.config.")
    info = entry.get("info", {})
    if not isinstance(info, dict):
        raise ConfigError(f"{key}.info: expected an object")
    return MemberEntry(name, _weights_file(entry["weights_file"], f"{key}.weights_file",
                                           directory), config, info)


def _classes(value: Any, members: list[MemberEntry]) -> tuple[str, ...]:
    """The record's class names: a known label set's, the one every member was trained on
    (a member config without ``data.labels`` is FER2013's)."""
    known = [list(names) for names in LABEL_SETS.values()]
    if value not in known:
        raise ConfigError(f"classes: {value!r:.120} are not one of fer-ray's label sets "
                          f"({'; '.join(', '.join(k) for k in known)})")
    for i, m in enumerate(members):
        if list(model_classes(m.config)) != value:
            raise ConfigError(f"members[{i}].config.data.labels: {m.config.data.labels!r} "
                              f"predicts {', '.join(model_classes(m.config))}, not the "
                              f"ensemble's classes {', '.join(value)}")
    return tuple(value)


def _members(value: Any, directory: Path) -> list[MemberEntry]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MEMBERS:
        got = f"{len(value)} members" if isinstance(value, list) else type(value).__name__
        raise ConfigError(f"members: expected a list of 1..{MAX_MEMBERS} members, got {got}")
    members = [_member(e, f"members[{i}]", directory) for i, e in enumerate(value)]
    for attr in ("name", "weights_file"):
        seen = [getattr(m, attr) for m in members]
        dup = next((v for i, v in enumerate(seen) if v in seen[:i]), None)
        if dup is not None:
            raise ConfigError(f"members: two members have the {attr} {shown(str(dup))!r}")
    total = 0
    for i, m in enumerate(members):
        try:
            total += check_model(m.config.model, len(model_classes(m.config)))
        except ConfigError as exc:
            raise ConfigError(f"members[{i}].config.{exc}") from None
    if total > MAX_ENSEMBLE_PARAMETERS:
        raise ConfigError(f"members: {total:,} parameters in all, more than the "
                          f"{MAX_ENSEMBLE_PARAMETERS:,} allowed")
    return members


def parse_record(record: Any, directory: Path) -> EnsembleRecord:
    """Check a decoded ``ensemble.json`` of the folder ``directory`` (see the module doc)."""
    record = _mapping(record, "", _KEYS)
    missing = sorted(_KEYS - {"info", "defer"} - set(record))
    if missing:
        raise ConfigError(f"{missing[0]}: missing")
    version = record["format_version"]
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ConfigError(f"format_version: {version!r:.20} is not supported (this fer-ray "
                          f"reads version {FORMAT_VERSION})")
    members = _members(record["members"], directory)
    classes = _classes(record["classes"], members)
    weights = _numbers(record["weights"], "weights", len(members), 0.0, math.inf)
    if not weights.sum() > 0:
        raise ConfigError("weights: at least one must be > 0")
    tta = tta_mode(record["tta"], "tta")
    defer = _mapping(record.get("defer", {}), "defer", {"kind", "threshold"})
    kind = defer.get("kind", "max_prob")
    if kind not in DEFER_KINDS:
        raise ConfigError(f"defer.kind: {kind!r:.40} is not one of {', '.join(DEFER_KINDS)}")
    threshold = defer.get("threshold")
    info = record.get("info", {})
    if not isinstance(info, dict):
        raise ConfigError("info: expected an object")
    return EnsembleRecord(
        classes=classes, members=members, weights=weights, tta=tta,
        temperature=_number(record["temperature"], "temperature", *TEMPERATURE_RANGE),
        class_biases=_numbers(record["class_biases"], "class_biases", len(classes),
                              -MAX_ABS_BIAS, MAX_ABS_BIAS),
        defer_kind=kind,
        defer_threshold=None if threshold is None else _number(threshold, "defer.threshold",
                                                                0.0, 1.0),
        info=info)
