"""One typed configuration for a training run: model, optimisation, augmentation, data.

Frozen dataclasses with defaults. ``from_dict`` refuses unknown keys (naming them), so a typo
in a JSON config or a search space fails loudly instead of being silently ignored. The
resolved config is written as JSON next to every set of weights (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from fer_ray.errors import ConfigError, DataError
from fer_ray.paths import read_json

Activation = Literal["relu", "elu", "leaky_relu", "gelu", "silu"]
Padding = Literal["same", "valid"]
OptimizerName = Literal["sgd", "adam", "adamw", "adamax", "nadam", "rmsprop", "adagrad"]
Schedule = Literal["none", "cosine", "onecycle", "plateau"]
Precision = Literal["auto", "bf16", "fp32"]
LabelSet = Literal["fer2013", "ferplus"]


@dataclass(frozen=True)
class ModelConfig:
    """The paper's VGG-like CNN family (``vgg_fer``); see ``fer_ray.models.vgg_fer``.

    One entry of ``filters`` per conv block (2..6 blocks); per-block fields
    (``convs_per_block``, ``dropout``) hold one value per block.
    """

    name: str = "vgg_fer"
    filters: tuple[int, ...] = (32, 64, 128)
    convs_per_block: tuple[int, ...] = (1, 1, 1)
    dropout: tuple[float, ...] = (0.1, 0.2, 0.3)
    kernel_size: int = 3
    padding: Padding = "same"
    batch_norm: bool = True
    # An extra conv (no norm, no pool) before the first block, as in the seed network.
    stem_filters: int = 0
    dense_units: tuple[int, ...] = (128,)
    dense_dropout: float = 0.4
    activation: Activation = "relu"
    input_size: int = 48
    # Drop whole feature maps (Dropout2d) instead of single activations: as regularising for
    # convs, and ~10x cheaper on CPUs, where drawing one random number per activation costs
    # as much as the convolution it follows.
    spatial_dropout: bool = False


@dataclass(frozen=True)
class OptimConfig:
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    # cosine: per step to 0 after ``warmup_epochs`` of linear warm-up; onecycle: Smith's
    # one-cycle (warm-up over the first quarter from lr/25 to lr, then cosine down to lr/1e4);
    # plateau: halve on a validation plateau (per epoch).
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 64


@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample random augmentation strengths; 0 switches a transform off."""

    hflip: float = 0.5  # probability of a horizontal flip
    rotation: float = 10.0  # max degrees, uniform in [-rotation, rotation]
    scale: float = 0.1  # zoom factor uniform in [1 - scale, 1 + scale]
    translate: float = 0.1  # max shift as a fraction of the image side
    crop: int = 0  # random crop: shift by up to this many whole pixels, zero-filled (pad+crop)
    erasing: float = 0.0  # probability of erasing one random rectangle (2-25 % of the image)
    # Mixing two images and their labels (Beta(alpha, alpha) weights); 0 = off. With both on,
    # each batch uses one of them, chosen at random.
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # None: the built-in synthetic faces
    val_fraction: float = 0.1
    synthetic_size: int = 6000  # images generated when path is None
    subsample: int | None = None  # keep this many training images (stratified), for quick runs
    # What the model learns: "fer2013" (7 classes, the files' labels) or "ferplus" (FER+'s 8
    # emotions, labels = the crowd's majority; faces with an unknown / not-a-face majority
    # are left out). See fer_ray.data.votes.
    labels: LabelSet = "fer2013"
    # The folder of FER+ votes files, <name>_votes.npz for each <name>.npz of the data; None:
    # the folder "ferplus" beside the data's folder (data/fer2013/ -> data/ferplus/).
    votes: str | None = None
    # Training targets: vote_alpha * one_hot(label) + (1 - vote_alpha) * the votes' share
    # per class. None: the label set's default, 1 for fer2013 (the labels alone, no votes
    # read), 0 for ferplus (the vote distribution: Barsoum's "probability" targets).
    vote_alpha: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 10
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    seed: int = 0
    # Training arithmetic: bf16 autocast where the hardware multiplies bf16 natively (CUDA,
    # CPUs with AMX or AVX512-BF16), else fp32 ("auto"). Evaluation is always fp32.
    precision: Precision = "auto"


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {annotation}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = (value,)
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(typing.cast(type, annotation), value, prefix=f"{key}.")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation}")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a config dataclass, by field name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (possibly partial) dict; unknown keys raise ConfigError naming them."""
    types_by_name = field_types(cls)
    unknown = sorted(set(data) - set(types_by_name))
    if unknown:
        known = ", ".join(types_by_name)
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (known: {known})")
    values = {k: _coerce(v, types_by_name[k], prefix + k) for k, v in data.items()}
    return cls(**values)


def merge(config: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """A copy of ``config`` with a (partial, nested) dict of overrides applied and type-checked.

    ``merge(cfg, {"optim": {"lr": 0.01}, "epochs": 5})`` changes just those fields; unknown
    keys raise ConfigError naming them.
    """
    current = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(current))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (known: {', '.join(current)})"
        )
    types_by_name = field_types(type(config))
    for key, value in overrides.items():
        if dataclasses.is_dataclass(current[key]) and isinstance(value, dict):
            current[key] = merge(current[key], value, prefix=f"{prefix}{key}.")
        else:
            current[key] = _coerce(value, types_by_name[key], prefix + key)
    return type(config)(**current)


def read_config_dict(path: str | Path) -> dict[str, Any]:
    """The config mapping in a JSON file (a bare config, or a saved ``{"config": ...}``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        data = read_json(path)  # a regular file, of bounded size, strict JSON
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a saved model's config.json wraps the config with metadata
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from JSON, full or partial (missing fields come from ``base``/defaults)."""
    try:
        return merge(base or TrainConfig(), read_config_dict(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None


MAX_ENSEMBLE_MEMBERS = 64  # an ensemble's networks (--top-k); loading refuses more
MAX_SYNTHETIC = 1_000_000  # built-in faces to generate: 2.3 GB of images; FER2013 has 35,887
# (low, high, whether high itself is allowed) per field: ranges where training means something.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "epochs": (1, 1e6, True), "patience": (0, 1e6, True), "seed": (0, 2**32 - 1, True),
    "optim.lr": (0, 1e3, True), "optim.weight_decay": (0, 1e3, True),
    "optim.momentum": (0, 1, False), "optim.warmup_epochs": (0, 1e6, True),
    "optim.label_smoothing": (0, 1, False), "optim.batch_size": (1, 2**20, True),
    "augment.hflip": (0, 1, True), "augment.rotation": (0, 180, True),
    "augment.scale": (0, 1, False), "augment.translate": (0, 1, True),
    "augment.crop": (0, 47, True), "augment.erasing": (0, 1, True),
    "augment.mixup": (0, 1e3, True), "augment.cutmix": (0, 1e3, True),
    "data.val_fraction": (0, 1, False), "data.synthetic_size": (1, MAX_SYNTHETIC, True),
    "data.subsample": (1, 2**40, True), "data.vote_alpha": (0, 1, True),
}
_POSITIVE = {"optim.lr", "data.val_fraction"}  # 0 itself is refused


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_config(config: TrainConfig, flags: dict[str, str] | None = None) -> TrainConfig:
    """Refuse (ConfigError naming the key) values outside what training can use: counts below
    1, probabilities outside [0, 1], non-finite numbers. The model's own fields are checked
    when it is built (``fer_ray.models.vgg_fer.check_model``). Returns ``config``.

    flags: key -> the command-line flag that sets it, named in the message too.
    """
    for key, (low, high, closed) in _RANGES.items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is None:
            continue
        inside = low <= value <= high if closed else low <= value < high
        if not (math.isfinite(value) and inside) or (key in _POSITIVE and value == 0):
            where = f"{key} ({flags[key]})" if flags and key in flags else key
            span = (f"{'(' if key in _POSITIVE else '['}{_number(low)}, {_number(high)}"
                    f"{']' if closed else ')'}")
            raise ConfigError(f"{where}: {value!r} is outside {span}")
    return config
