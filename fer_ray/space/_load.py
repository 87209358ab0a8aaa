"""Loading search spaces: YAML files parsed and validated into SearchSpace objects.

load_space (by name from SPACES_DIR, or by path), list_spaces and space_from_dict (parsed YAML).
Every problem raises a one-line ConfigError naming the key (and, from load_space, the file);
the file format is described in the ``fer_ray.space`` docstring.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from fer_ray.config import TrainConfig, field_types, merge
from fer_ray.errors import ConfigError
from fer_ray.space._params import (
    DATA_PARAMS,
    NUM_BLOCKS,
    PER_BLOCK_FIELDS,
    SECTIONS,
    Param,
    SearchSpace,
    _as_blocks,
    _element_type,
    _multiple,
)


def _spaces_dir() -> Path:
    """The named spaces: the checkout's top-level ``search_spaces/`` (what users open, copy
    and edit), which a wheel carries as package data in ``fer_ray/space/spaces/``
    (pyproject's package-dir maps one onto the other, so the repository holds one copy)."""
    here = Path(__file__).resolve().parent
    packaged = here / "spaces"
    return packaged if packaged.is_dir() else here.parent.parent / "search_spaces"


SPACES_DIR = _spaces_dir()
TOP_LEVEL = ("description", "base", "params", "points")
# Mirrors fer_ray.models.vgg_fer.MIN_BLOCKS/MAX_BLOCKS (a test checks): importing that module
# imports torch, and loading a space must stay cheap.
MIN_BLOCKS, MAX_BLOCKS = 2, 6
# Options of each distribution type, required ones first; any type also takes per_block.
REQUIRED: dict[str, tuple[str, ...]] = {
    "choice": ("values",), "uniform": ("low", "high"), "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"), "qloguniform": ("low", "high", "q"),
    "int": ("low", "high"), "randint": ("low", "high"),
}
OPTIONAL: dict[str, tuple[str, ...]] = {"int": ("step", "log")}


class _Loader(yaml.SafeLoader):
    """SafeLoader reading ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; people write both)
    and refusing duplicate keys (the first would otherwise vanish silently). Merge keys
    (``<<: *anchor``) work as YAML says: a key written next to them overrides the merged one."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()  # ids of the mapping nodes whose keys were checked

    def flatten_mapping(self, node: Any) -> None:
        # Called on every mapping before its merge keys are expanded (and again, harmlessly,
        # after): check the keys written in it, once, while they can still be told apart.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            keys: list[Any] = []
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in keys:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                keys.append(key)
        super().flatten_mapping(node)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _coerce(key: str, value: Any, where: str, element: bool) -> Any:
    """``value`` type-checked by merging it into a default TrainConfig (config.py stays the one
    source of truth for field types); ``element``: one element of a tuple field, as drawn."""
    if key == NUM_BLOCKS:
        if isinstance(value, bool) or not isinstance(value, int) \
                or not MIN_BLOCKS <= value <= MAX_BLOCKS:
            raise ConfigError(f"{where}: {value!r} is not a number of blocks "
                              f"({MIN_BLOCKS}..{MAX_BLOCKS})")
        return value
    section, name = key.split(".")
    try:
        merged = getattr(getattr(merge(TrainConfig(), {section: {name: value}}), section), name)
    except ConfigError as exc:  # "optim.lr: expected a number" -> "<where>: expected a number"
        problem = re.sub(r"^" + re.escape(key) + r"(\[\d+\])?: ", "", str(exc))
        raise ConfigError(f"{where}: {problem}") from None
    return merged[0] if element and isinstance(merged, tuple) else merged


def _number(spec: dict[str, Any], option: str, where: str, integer: bool) -> Any:
    value = spec[option]
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or not math.isfinite(value):
        raise ConfigError(f"{where}.{option}: expected {'an integer' if integer else 'a number'}"
                          f", got {value!r}")
    return value


def _parse_by(key: str, spec: dict[str, Any], earlier: tuple[Param, ...]) -> Param:
    """A ``by`` entry: one distribution or constant per value of an earlier choice."""
    where = f"params.{key}"
    by = spec["by"]
    parent = next((p for p in earlier if p.key == by), None)
    if parent is None or parent.type not in ("choice", "const") or parent.per_block \
            or by == NUM_BLOCKS:
        raise ConfigError(f"{where}.by: {by!r} must name an earlier choice in params")
    branches = []
    for label, branch_spec in spec.items():
        if label == "by":
            continue
        value = next((v for v in parent.values if str(v) == str(label)), None)
        if value is None:
            raise ConfigError(f"{where}.{label}: not a value of {by} "
                              f"({', '.join(map(str, parent.values))})")
        try:
            branch = _parse_param(key, branch_spec, earlier)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(where, f"{where}.{label}", 1)) from None
        if branch.per_block or branch.type == "by":
            raise ConfigError(f"{where}.{label}: a branch is one distribution or a constant")
        branches.append((value, branch))
    return Param(key, "by", by=by, branches=tuple(branches))


def _parse_param(key: str, spec: Any, earlier: tuple[Param, ...] = ()) -> Param:
    """One ``params`` entry, validated; messages start with ``params.<key>``."""
    where = f"params.{key}"
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"{where}: unknown key (expected section.field with section one "
                          f"of {', '.join(SECTIONS)})")
    known = [*field_types(SECTIONS[section]), *(["num_blocks"] if section == "model" else [])]
    if section == "data":  # the data and its split are the search's, the same for all trials
        known = [k.partition(".")[2] for k in DATA_PARAMS]
    if name not in known:
        raise ConfigError(f"{where}: unknown key (known {section} keys: {', '.join(known)})")
    if not isinstance(spec, dict):  # a bare value: a constant
        return Param(key, "const", values=(_coerce(key, spec, where, element=False),))
    if "by" in spec:
        if key in PER_BLOCK_FIELDS or key == NUM_BLOCKS:
            raise ConfigError(f"{where}.by: not for per-block fields or num_blocks")
        return _parse_by(key, spec, earlier)
    kind = spec.get("type")
    if kind not in REQUIRED:
        problem = "missing" if kind is None else f"{kind!r} is not a distribution type"
        raise ConfigError(f"{where}.type: {problem} (known: {', '.join(REQUIRED)})")
    per_block, log, grow = _check_options(key, spec, kind, where)
    if kind == "choice":
        return _parse_choice(key, spec, where, per_block, grow)
    return _parse_range(key, spec, kind, where, per_block, log, grow)


def _check_options(key: str, spec: dict[str, Any], kind: str, where: str
                   ) -> tuple[bool, bool, float | None]:
    """The options a distribution of ``kind`` takes, all present and of the right kind:
    (per_block, log, grow)."""
    options = (*REQUIRED[kind], *OPTIONAL.get(kind, ()), "per_block",
               *(["grow"] if key == "model.filters" else []))
    for option in spec:
        if option not in (*options, "type"):
            raise ConfigError(f"{where}.{option}: not an option of {kind} "
                              f"(known: {', '.join(options)})")
    for option in REQUIRED[kind]:
        if option not in spec:
            raise ConfigError(f"{where}: missing '{option}' ({kind} needs "
                              f"{', '.join(REQUIRED[kind])})")
    per_block, log = spec.get("per_block", False), spec.get("log", False)
    if not isinstance(per_block, bool) or not isinstance(log, bool):
        raise ConfigError(f"{where}: per_block and log must be true or false")
    if per_block and key not in PER_BLOCK_FIELDS:
        raise ConfigError(f"{where}.per_block: only for fields with one value per block "
                          f"({', '.join(PER_BLOCK_FIELDS)})")
    grow = spec.get("grow")
    if grow is not None and (isinstance(grow, bool) or not isinstance(grow, (int, float))
                             or not 1 <= grow <= 4 or per_block):
        raise ConfigError(f"{where}.grow: a number in [1, 4] (the factor from one block's "
                          f"filters to the next's), without per_block; got {grow!r}")
    if key == NUM_BLOCKS and kind not in ("int", "randint", "choice"):
        raise ConfigError(f"{where}.type: num_blocks takes int, randint, choice or a constant")
    return per_block, log, grow


def _parse_choice(key: str, spec: dict[str, Any], where: str, per_block: bool,
                  grow: float | None) -> Param:
    values = spec["values"]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
    for i, v in enumerate(values):  # Optuna's categorical choices must be scalars
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise ConfigError(f"{where}.values[{i}]: expected a scalar, got {v!r}")
    return Param(key, "choice", per_block=per_block, grow=grow, values=tuple(
        _coerce(key, v, f"{where}.values[{i}]", element=True) for i, v in enumerate(values)))


def _parse_range(key: str, spec: dict[str, Any], kind: str, where: str, per_block: bool,
                 log: bool, grow: float | None) -> Param:
    """A numeric distribution (int, randint, uniform, loguniform, quniform, ...)."""
    integer = kind in ("int", "randint")
    low, high = (_number(spec, option, where, integer) for option in ("low", "high"))
    step = _number(spec, "step", where, integer=True) if "step" in spec else 1
    if kind == "int" and (step < 1 or (high - low) % step or (log and step != 1)):
        raise ConfigError(f"{where}.step: must be >= 1, divide high - low, and be 1 with "
                          f"log (Optuna's rule), got {step}")
    if key == NUM_BLOCKS:  # every value, not the bounds (randint's high is never drawn)
        for n in range(low, high + (kind == "int"), step):
            _coerce(key, n, where, element=True)
    else:
        for option, bound in (("low", low), ("high", high)):
            _coerce(key, bound, f"{where}.{option}", element=True)
    if _element_type(key) is int and kind in ("uniform", "loguniform"):
        raise ConfigError(f"{where}.type: {kind} draws floats but {key} holds integers "
                          "(use int, randint, choice or quniform)")
    if low >= high:
        raise ConfigError(f"{where}: empty range (low {low} must be < high {high})")
    if (kind in ("loguniform", "qloguniform") or log) and low <= 0:
        raise ConfigError(f"{where}.low: {kind}{' log' if log else ''} needs low > 0, got {low}")
    q = _number(spec, "q", where, integer=False) if "q" in spec else None
    if q is not None:
        if q <= 0:
            raise ConfigError(f"{where}.q: must be > 0, got {q}")
        if _element_type(key) is int and not float(q).is_integer():
            raise ConfigError(f"{where}.q: {key} holds integers, so q must be whole, got {q}")
        if not (_multiple(low, q) and _multiple(high, q)):
            raise ConfigError(f"{where}.q: low ({low}) and high ({high}) must be multiples "
                              f"of q ({q})")
    return Param(key, kind, low=low, high=high, q=q, step=step, log=log, per_block=per_block,
                 grow=grow)


def space_from_dict(data: Any, name: str = "<dict>", source: str = "<dict>") -> SearchSpace:
    """A validated SearchSpace from parsed YAML (messages name the key; load_space adds the
    file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"top level: expected a mapping with {', '.join(TOP_LEVEL)}, "
                          f"got {'nothing' if data is None else type(data).__name__}")
    for section in data:
        if section not in TOP_LEVEL:
            raise ConfigError(f"{section}: unknown top-level section (known: "
                              f"{', '.join(TOP_LEVEL)})")
    description, base = data.get("description") or "", data.get("base") or {}
    if not isinstance(description, str):
        raise ConfigError(f"description: expected text, got {description!r}")
    if not isinstance(base, dict):
        raise ConfigError(f"base: expected a mapping nested like TrainConfig, got {base!r}")
    try:
        merge(TrainConfig(), base)
    except ConfigError as exc:
        raise ConfigError(f"base: {exc}") from None
    if not isinstance(data.get("params"), dict):
        raise ConfigError("params: expected a mapping of section.field: distribution")
    params: tuple[Param, ...] = ()
    for key, spec in data["params"].items():
        params += (_parse_param(str(key), spec, params),)
    for p in params:
        section, field = p.key.split(".")
        if field in base.get(section, {}):
            raise ConfigError(f"params.{p.key}: also set in base (set it in one place)")
    space = SearchSpace(name, source, description, base, params,
                        _parse_points(data.get("points"), base))
    _check_blocks(space)
    for i, config in enumerate(space.point_configs()):
        problem = space.outside(config)
        if problem is not None:
            raise ConfigError(f"points[{i}]: {problem} is outside the space")
    return space


def _parse_points(points: Any, base: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """``points``: a list of partial configs (nested like base), each a valid config."""
    if points is None:
        return ()
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError("points: expected a list of mappings nested like TrainConfig")
    for i, point in enumerate(points):
        try:
            merge(merge(TrainConfig(), base), point)
        except ConfigError as exc:
            raise ConfigError(f"points[{i}]: {exc}") from None
    return tuple(points)


def _check_blocks(space: SearchSpace) -> None:
    """Per-block constants (in params or base) must fit every number of blocks drawn."""
    if space.param(NUM_BLOCKS) is not None and space.param("model.filters") is None \
            and "filters" not in space.base.get("model", {}):
        raise ConfigError(f"params.{NUM_BLOCKS}: needs model.filters in params or base")
    fixed = space.fixed_blocks()
    if fixed is not None and not MIN_BLOCKS <= fixed <= MAX_BLOCKS:
        raise ConfigError(f"base.model.filters: {fixed} blocks, expected "
                          f"{MIN_BLOCKS}..{MAX_BLOCKS} (or set {NUM_BLOCKS})")
    if fixed is None and space.param(NUM_BLOCKS) is None:
        return  # the space leaves the blocks alone
    for key in PER_BLOCK_FIELDS:
        p = space.param(key)
        if p is not None and p.type != "const":
            continue
        where, value = (f"params.{key}", p.values[0]) if p is not None else \
            (f"base.{key}", space.base.get("model", {}).get(key.split(".")[1]))
        if value is None or _as_blocks(value, fixed or 1) is not None:
            continue
        raise ConfigError(f"{where}: {len(value)} values do not fit "
                          f"{fixed or 'a varying number of'} blocks (give one value, or make "
                          "it a per_block param)")


def list_spaces() -> list[str]:
    """Names of the spaces in SPACES_DIR."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A space by name ("small" -> search_spaces/small.yaml) or by path to a YAML file.

    Every problem raises ConfigError with one line naming the file and the key.
    """
    text = os.fspath(name_or_path)
    is_path = text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text
    path = Path(text) if is_path else SPACES_DIR / f"{text}.yaml"
    try:  # show the path as the user would type it: relative to the working directory
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    if not path.is_file():
        raise ConfigError(f"{shown}: {'no such file' if is_path else 'no such search space'} "
                          f"(available spaces: {', '.join(list_spaces())})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{shown}: {line}invalid YAML: {getattr(exc, 'problem', None) or exc}"
                          ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read ({exc})") from None
    try:
        return space_from_dict(data, name=path.stem, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{shown}: {exc}") from None
