"""A search space's parameters and the configs drawn from them.

Param (one distribution or constant), SearchSpace (define-by-run sampling on an Optuna trial,
flat params -> config overrides, whether a config lies in the space) and check_architecture.
The file format is described in the ``fer_ray.space`` docstring; reading and validating YAML
files is in ``fer_ray.space._load``. Imports neither Ray nor torch (check_architecture imports
the model module only when called).
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fer_ray.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    field_types,
    merge,
)
from fer_ray.errors import ConfigError

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig, "augment": AugmentConfig,
                             "data": DataConfig}
# The data section's only searchable field: every trial must see the same data and split.
DATA_PARAMS = ("data.vote_alpha",)
NUM_BLOCKS = "model.num_blocks"
PER_BLOCK_FIELDS = ("model.filters", "model.convs_per_block", "model.dropout")


def _element_type(key: str) -> Any:
    """Type of one value of a field (the element type of a tuple field); int for num_blocks."""
    if key == NUM_BLOCKS:
        return int
    section, name = key.split(".")
    annotation = field_types(SECTIONS[section])[name]
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation


def _multiple(value: float, q: float) -> bool:
    return abs(value / q - round(value / q)) < 1e-6


@dataclass(frozen=True)
class Param:
    """One ``params`` entry: a distribution over a config field, or a constant.

    ``type`` is a distribution type, ``"const"`` (``values`` then holds the one value) or
    ``"by"``: one distribution (or constant) per value of the earlier param ``by``, in
    ``branches`` (e.g. a learning-rate range per optimizer); a value without a branch leaves
    the field at its base value. Values are stored type-coerced, so ``contains`` can compare
    them with a config's.
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
    grow: float | None = None  # model.filters only: later blocks multiply the first by this
    by: str | None = None
    branches: tuple[tuple[Any, Param], ...] = ()

    def branch(self, by_value: Any) -> tuple[str, Param] | None:
        """For a ``by`` param: (Optuna name, distribution) used when ``by`` is ``by_value``."""
        for value, param in self.branches:
            if value == by_value and type(value) is type(by_value):
                return f"{self.key}[{value}]", param
        return None

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
    """A loaded, validated search space (see the ``fer_ray.space`` docstring for the format)."""

    name: str
    source: str
    description: str
    base: dict[str, Any]
    params: tuple[Param, ...]
    # Known-good configurations (nested overrides over base), evaluated before any draw.
    points: tuple[dict[str, Any], ...] = ()

    def point_configs(self, base: TrainConfig | None = None) -> list[TrainConfig]:
        """The ``points`` as full configs over ``base`` (default: TrainConfig()) + space base."""
        start = merge(base or TrainConfig(), self.base)
        return [merge(start, point) for point in self.points]

    def outside(self, config: TrainConfig) -> str | None:
        """The first field of ``config`` the space cannot propose (None: ``contains``)."""
        if self.contains(config):
            return None
        for p in self.params:
            if p.key != NUM_BLOCKS and not _admits(p, _get(config, p.key),
                                                   len(config.model.filters), config):
                return p.key
        return "model.num_blocks or a base value"

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

    def _names(self, p: Param, num_blocks: int | None, flat: dict[str, Any]
               ) -> list[str]:
        """The flat names ``p`` fills for these blocks and the values drawn before it."""
        if p.type == "by":
            chosen = p.branch(flat.get(p.by or ""))
            return [chosen[0]] if chosen is not None else []
        return p.names(num_blocks)

    def sample(self, trial: BaseTrial) -> dict[str, Any]:
        """Draw a configuration define-by-run; returns flat params, constants included.

        The number of blocks is drawn first, so only existing blocks' params are suggested;
        a ``by`` param after the value it depends on.
        """
        flat: dict[str, Any] = {}
        num_blocks, varying = self.fixed_blocks(), self._varying_blocks()
        if varying is not None:
            num_blocks = flat[NUM_BLOCKS] = varying.suggest(trial, NUM_BLOCKS)
        for p in self.params:
            if p.type == "const":
                flat[p.key] = p.values[0]
            elif p.type == "by":
                chosen = p.branch(flat[p.by or ""])
                if chosen is not None:
                    name, dist = chosen
                    flat[name] = dist.values[0] if dist.type == "const" \
                        else dist.suggest(trial, name)
            elif p is not varying:
                flat.update((name, p.suggest(trial, name)) for name in p.names(num_blocks))
        return flat

    def params_of(self, config: TrainConfig) -> dict[str, Any]:
        """The flat params that ``to_config`` turns back into ``config`` (which must lie in
        the space: see ``contains``); how a known-good config is proposed to the searcher."""
        num_blocks = len(config.model.filters)
        flat: dict[str, Any] = {}
        for p in self.params:
            if p.key == NUM_BLOCKS:
                flat[NUM_BLOCKS] = num_blocks if p.type != "const" else p.values[0]
            elif p.type == "const":
                flat[p.key] = p.values[0]
            elif p.type == "by":
                chosen = p.branch(_get(config, p.by or ""))
                if chosen is not None:
                    flat[chosen[0]] = _scalar(_get(config, p.key))
            elif p.per_block:
                flat.update(zip(p.names(num_blocks),
                                _as_blocks(_get(config, p.key), num_blocks) or (), strict=True))
            elif p.grow is not None:
                flat[p.key] = config.model.filters[0]
            else:
                flat[p.key] = _scalar(_get(config, p.key))
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
        expected = [n for p in self.params for n in self._names(p, num_blocks, flat)]
        wrong = [f"unknown parameter {n}" for n in flat if n not in expected] + [
            f"missing {n}" for p in self.params if p.type != "const"
            for n in self._names(p, num_blocks, flat) if n not in flat]
        if wrong:
            raise ConfigError(f"space {self.name}: {wrong[0]}")
        nested = copy.deepcopy(self.base)
        for p in self.params:
            if p.type == "const":
                value = p.values[0]
                if p.key in flat and _as_tuple(flat[p.key]) != _as_tuple(value):
                    raise ConfigError(f"{p.key}: {flat[p.key]!r} differs from space "
                                      f"{self.name}'s constant {value!r}")
            elif p.type == "by":
                names = self._names(p, num_blocks, flat)
                if not names:
                    continue  # no branch for this value: the field keeps its base value
                value = flat[names[0]]
                dist = p.branch(flat[p.by or ""])[1]  # type: ignore[index]
                if not _admits(dist, value, num_blocks or 1):
                    raise ConfigError(f"{names[0]}: {value!r} is outside space {self.name}")
            else:
                value = tuple(flat[n] for n in p.names(num_blocks)) if p.per_block \
                    else flat[p.key]
                if p.grow is not None:  # one draw: the first block's filters
                    value = _grown(flat[p.key], p.grow, num_blocks or len(config.model.filters))
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
        return all(_admits(p, _get(config, p.key), num_blocks, config)
                   for p in self.params if p.key != NUM_BLOCKS)


def _grown(first: int, grow: float, num_blocks: int) -> tuple[int, ...]:
    """Filters per block from the first block's: (32, 64, 128) for 32, grow 2, 3 blocks."""
    return tuple(round(first * grow**i) for i in range(num_blocks))


def _scalar(value: Any) -> Any:
    """A drawn scalar's value in a config: dense_units (256,) was drawn as 256."""
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _admits(p: Param, value: Any, num_blocks: int, config: TrainConfig | None = None) -> bool:
    """Whether ``p`` can produce a config field's ``value`` (``contains`` for one field)."""
    if p.type == "by":
        chosen = p.branch(_get(config, p.by or "")) if config is not None else None
        if chosen is None:  # no branch: the field must keep its base value
            section, name = p.key.split(".")
            return bool(value == getattr(getattr(TrainConfig(), section), name))
        return _admits(chosen[1], value, num_blocks)
    if p.grow is not None:
        values = _as_blocks(value, num_blocks)
        return values is not None and p.admits(values[0]) \
            and values == _grown(values[0], p.grow, num_blocks)
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


def check_architecture(config: TrainConfig) -> None:
    """Raise ConfigError when the network does not fit the input (or per-block lengths clash).

    The searcher reports such trials as invalid instead of training them. Imports the model
    module (and so torch) only when called.
    """
    from fer_ray.models.vgg_fer import feature_shape, per_block

    feature_shape(config.model)
    per_block(config.model.dropout, len(config.model.filters), "dropout")
