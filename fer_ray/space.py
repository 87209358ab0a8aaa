"""Search spaces: YAML files naming TrainConfig fields and the distributions to draw them from.

A space file has ``description``, an optional ``base`` (fixed overrides, nested like
TrainConfig) and ``params``: ``"section.field": distribution`` (or a bare value = a constant)
for the sections model, optim and augment. ``model.num_blocks`` is special: the number of conv
blocks. Fields holding one value per block (model.filters, model.convs_per_block,
model.dropout) may be ``per_block: true``: one draw per existing block, named
``model.filters.0``, ``model.filters.1``, ... in Optuna.

Everything is checked at load time (unknown keys, types by merging into a default TrainConfig,
empty ranges), so a typo fails before a cluster starts instead of being silently ignored.
Sampling is define-by-run on an Optuna trial; this module imports neither Ray nor torch.
"""

from __future__ import annotations

import copy
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fer_ray.config import AugmentConfig, ModelConfig, OptimConfig, TrainConfig, field_types, merge
from fer_ray.errors import ConfigError

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig, "augment": AugmentConfig}
TOP_LEVEL = ("description", "base", "params")
NUM_BLOCKS = "model.num_blocks"
PER_BLOCK_FIELDS = ("model.filters", "model.convs_per_block", "model.dropout")
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
    and refusing duplicate keys (the first would otherwise vanish silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", node.value[i][0].start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _element_type(key: str) -> Any:
    """Type of one value of a field (the element type of a tuple field); int for num_blocks."""
    if key == NUM_BLOCKS:
        return int
    section, name = key.split(".")
    annotation = field_types(SECTIONS[section])[name]
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation


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


def _multiple(value: float, q: float) -> bool:
    return abs(value / q - round(value / q)) < 1e-6


@dataclass(frozen=True)
class Param:
    """One ``params`` entry: a distribution over a config field, or a constant.

    ``type`` is a distribution type or ``"const"`` (``values`` then holds the one value).
    Values are stored type-coerced, so ``contains`` can compare them with a config's.
    """

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    q: float | None = None
    step: int = 1
    log: bool = False
    per_block: bool = False

    def names(self, num_blocks: int | None) -> list[str]:
        """Optuna parameter names: one per existing block for per-block params."""
        return [f"{self.key}.{i}" for i in range(num_blocks or 0)] if self.per_block \
            else [self.key]

    def suggest(self, trial: BaseTrial, name: str) -> Any:
        """Draw one value from ``trial`` under ``name``."""
        if self.type == "choice":
            return trial.suggest_categorical(name, list(self.values))
        low, high, q = float(self.low or 0), float(self.high or 0), float(self.q or 0)
        integer = _element_type(self.key) is int
        if self.type == "int":
            return trial.suggest_int(name, int(low), int(high), step=self.step, log=self.log)
        if self.type == "randint":  # high exclusive, as in Ray Tune
            return trial.suggest_int(name, int(low), int(high) - 1)
        if self.type == "quniform" and integer:
            return trial.suggest_int(name, int(low), int(high), step=int(q))
        if self.type == "quniform":
            value = trial.suggest_float(name, low, high, step=q)
        elif self.type == "qloguniform":
            # Optuna has no log+step for floats: draw log-uniformly and round to a multiple of
            # q, as Ray Tune does; low and high are multiples of q, so clipping keeps it so.
            value = min(max(round(trial.suggest_float(name, low, high, log=True) / q) * q,
                            low), high)
        else:
            return trial.suggest_float(name, low, high, log=self.type == "loguniform")
        value = float(f"{value:.12g}")  # 0.15000000000000002 -> 0.15 in configs and tables
        return round(value) if integer else value

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (one element) can be drawn from this distribution."""
        if self.type in ("const", "choice"):
            return any(value == v and type(value) is type(v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        low, high = float(self.low or 0), float(self.high or 0) - (self.type == "randint")
        if not low - 1e-9 <= value <= high + 1e-9:
            return False
        if self.type in ("int", "randint"):
            return float(value).is_integer() and (value - low) % self.step == 0
        return self.q is None or _multiple(value, self.q)


def _as_blocks(value: Any, num_blocks: int) -> tuple[Any, ...] | None:
    """A per-block value as one entry per block (one value = all blocks); None if it can't be."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if len(values) == 1:
        return values * num_blocks
    return values if len(values) == num_blocks else None


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _leaf_keys(nested: dict[str, Any], prefix: str = "") -> list[str]:
    return [k for key, value in nested.items()
            for k in (_leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                      else [prefix + key])]


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated search space (see the module docstring for the format)."""

    name: str
    source: str
    description: str
    base: dict[str, Any]
    params: tuple[Param, ...]

    def param(self, key: str) -> Param | None:
        """The ``params`` entry for ``key`` ("optim.lr"), if any."""
        return next((p for p in self.params if p.key == key), None)

    def fixed_blocks(self) -> int | None:
        """The number of blocks when the space sets it without varying it, else None.

        Without ``model.num_blocks``, per-block params use the filter count of a constant
        ``model.filters``, else of the base, else of the default config.
        """
        blocks, filters = self.param(NUM_BLOCKS), self.param("model.filters")
        if blocks is not None:
            return int(blocks.values[0]) if blocks.type == "const" else None
        if not any(p.key in PER_BLOCK_FIELDS for p in self.params):
            return None
        if filters is not None and filters.type == "const":
            return len(filters.values[0])
        return len(merge(TrainConfig(), self.base).model.filters)

    def _varying_blocks(self) -> Param | None:
        blocks = self.param(NUM_BLOCKS)
        return blocks if blocks is not None and blocks.type != "const" else None

    def sample(self, trial: BaseTrial) -> dict[str, Any]:
        """Draw a configuration define-by-run; returns flat params, constants included.

        The number of blocks is drawn first, so only existing blocks' params are suggested.
        """
        flat: dict[str, Any] = {}
        num_blocks, varying = self.fixed_blocks(), self._varying_blocks()
        if varying is not None:
            num_blocks = flat[NUM_BLOCKS] = varying.suggest(trial, NUM_BLOCKS)
        for p in self.params:
            if p.type == "const":
                flat[p.key] = p.values[0]
            elif p is not varying:
                flat.update((name, p.suggest(trial, name)) for name in p.names(num_blocks))
        return flat

    def overrides(self, flat: dict[str, Any], config: TrainConfig | None = None
                  ) -> dict[str, Any]:
        """Flat params -> nested overrides for ``config.merge``: base, constants and draws.

        When the space sets the number of blocks, all three per-block fields get one value per
        block; a field the space leaves alone comes from ``config`` (default: TrainConfig()),
        its first value broadcast if its length doesn't fit. Unknown or missing names raise
        ConfigError, so nothing is silently dropped.
        """
        config = config or TrainConfig()
        num_blocks, varying = self.fixed_blocks(), self._varying_blocks()
        if varying is not None:
            num_blocks = flat.get(NUM_BLOCKS)
            if not varying.admits(num_blocks):
                raise ConfigError(f"{NUM_BLOCKS}: {num_blocks!r} is outside space {self.name}")
        expected = [n for p in self.params for n in p.names(num_blocks)]
        wrong = [f"unknown parameter {n}" for n in flat if n not in expected] + [
            f"missing {n}" for p in self.params if p.type != "const"
            for n in p.names(num_blocks) if n not in flat]
        if wrong:
            raise ConfigError(f"space {self.name}: {wrong[0]}")
        nested = copy.deepcopy(self.base)
        for p in self.params:
            if p.type == "const":
                value = p.values[0]
                if p.key in flat and _as_tuple(flat[p.key]) != _as_tuple(value):
                    raise ConfigError(f"{p.key}: {flat[p.key]!r} differs from space "
                                      f"{self.name}'s constant {value!r}")
            else:
                value = tuple(flat[n] for n in p.names(num_blocks)) if p.per_block \
                    else flat[p.key]
            if p.key != NUM_BLOCKS:
                section, name = p.key.split(".")
                nested.setdefault(section, {})[name] = value
        if num_blocks is not None:
            model = nested.setdefault("model", {})
            for key in PER_BLOCK_FIELDS:
                name = key.split(".")[1]
                value = model.get(name, getattr(config.model, name))
                blocks = _as_blocks(value, num_blocks)
                if blocks is None and name not in model and name != "filters":
                    blocks = (value[0],) * num_blocks  # a default's per-block values
                if blocks is None:
                    raise ConfigError(f"{key}: has {len(value)} values for {num_blocks} blocks")
                model[name] = blocks
        return nested

    def to_config(self, flat: dict[str, Any], base: TrainConfig) -> TrainConfig:
        """``base`` with this space's overrides for ``flat`` merged in (ConfigError if invalid).

        Checks types only; ``check_architecture`` tells whether the network fits the input.
        """
        return merge(base, self.overrides(flat, base))

    def contains(self, config: TrainConfig) -> bool:
        """Whether the space can propose ``config``: base values and constants equal, every
        sampled field inside its distribution (a per-block tuple of length 1 = all blocks)."""
        num_blocks, varying = len(config.model.filters), self._varying_blocks()
        if varying is not None and not varying.admits(num_blocks):
            return False
        if varying is None and self.fixed_blocks() not in (None, num_blocks):
            return False
        expected = merge(TrainConfig(), self.base)
        for key in _leaf_keys(self.base):
            want, have = _get(expected, key), _get(config, key)
            if key in PER_BLOCK_FIELDS:
                want, have = _as_blocks(want, num_blocks), _as_blocks(have, num_blocks)
                if want is None:  # the base's per-block values can't fit this many blocks
                    return False
            if want != have:
                return False
        return all(_admits(p, _get(config, p.key), num_blocks)
                   for p in self.params if p.key != NUM_BLOCKS)


def _admits(p: Param, value: Any, num_blocks: int) -> bool:
    """Whether ``p`` can produce a config field's ``value`` (``contains`` for one field)."""
    if p.key in PER_BLOCK_FIELDS:
        values = _as_blocks(value, num_blocks)
        if values is None or p.type == "const":
            return values is not None and values == _as_blocks(p.values[0], num_blocks)
        if not p.per_block and len(set(values)) != 1:  # one draw shared by all blocks
            return False
        return all(p.admits(v) for v in values)
    if p.type == "const":
        return bool(value == p.values[0])
    if isinstance(value, tuple):  # e.g. dense_units: a drawn scalar is one dense layer
        return len(value) == 1 and p.admits(value[0])
    return p.admits(value)


def _number(spec: dict[str, Any], option: str, where: str, integer: bool) -> Any:
    value = spec[option]
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or not math.isfinite(value):
        raise ConfigError(f"{where}.{option}: expected {'an integer' if integer else 'a number'}"
                          f", got {value!r}")
    return value


def _parse_param(key: str, spec: Any) -> Param:
    """One ``params`` entry, validated; messages start with ``params.<key>``."""
    where = f"params.{key}"
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"{where}: unknown key (expected section.field with section one "
                          f"of {', '.join(SECTIONS)})")
    known = [*field_types(SECTIONS[section]), *(["num_blocks"] if section == "model" else [])]
    if name not in known:
        raise ConfigError(f"{where}: unknown key (known {section} keys: {', '.join(known)})")
    if not isinstance(spec, dict):  # a bare value: a constant
        return Param(key, "const", values=(_coerce(key, spec, where, element=False),))
    kind = spec.get("type")
    if kind not in REQUIRED:
        problem = "missing" if kind is None else f"{kind!r} is not a distribution type"
        raise ConfigError(f"{where}.type: {problem} (known: {', '.join(REQUIRED)})")
    options = (*REQUIRED[kind], *OPTIONAL.get(kind, ()), "per_block")
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
    if key == NUM_BLOCKS and kind not in ("int", "randint", "choice"):
        raise ConfigError(f"{where}.type: num_blocks takes int, randint, choice or a constant")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
        for i, v in enumerate(values):  # Optuna's categorical choices must be scalars
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise ConfigError(f"{where}.values[{i}]: expected a scalar, got {v!r}")
        return Param(key, kind, per_block=per_block, values=tuple(
            _coerce(key, v, f"{where}.values[{i}]", element=True) for i, v in enumerate(values)))

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
    return Param(key, kind, low=low, high=high, q=q, step=step, log=log, per_block=per_block)


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
    params = tuple(_parse_param(str(key), spec) for key, spec in data["params"].items())
    for p in params:
        section, field = p.key.split(".")
        if field in base.get(section, {}):
            raise ConfigError(f"params.{p.key}: also set in base (set it in one place)")
    space = SearchSpace(name, source, description, base, params)
    _check_blocks(space)
    return space


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


def check_architecture(config: TrainConfig) -> None:
    """Raise ConfigError when the network does not fit the input (or per-block lengths clash).

    The searcher reports such trials as invalid instead of training them. Imports the model
    module (and so torch) only when called.
    """
    from fer_ray.models.vgg_fer import feature_shape, per_block

    feature_shape(config.model)
    per_block(config.model.dropout, len(config.model.filters), "dropout")
