"""The VGG-like CNN family of Vulpe-Grigorasi & Grigore (2021), as searched by fer-ray.

Conv blocks (each: ``convs_per_block`` convolutions, each followed by batch norm and the
activation, then 2x2 max-pool and dropout), then dense layers (+ batch norm, dropout) and a
linear classifier with one output per class (7 for FER2013, 8 for FER+). The flatten width
is computed with ``shapes.conv_output_size`` rather than guessed, so any block configuration
gets a correctly sized head (or a clear error when the input is too small for it).

Input: (N, 1, H, W) float in [0, 1]. Normalisation (dataset mean/std) lives in the model as
buffers, so saved weights carry it and prediction needs nothing else. Output: logits
(N, num_classes).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch import nn

from fer_ray.config import ModelConfig, from_dict
from fer_ray.data import NUM_CLASSES
from fer_ray.errors import ConfigError
from fer_ray.models.registry import create_model, list_models, register_model
from fer_ray.models.shapes import conv_output_size

MIN_BLOCKS, MAX_BLOCKS = 2, 6
# Bounds for configs read from files (ensemble.json, config.json, --config): checked from the
# config alone, before anything is allocated. The paper's widest net (5 blocks of three 5x5
# 512-filter convs, dense 1024) has about 96M parameters and 16 layers.
MAX_PARAMETERS = 150_000_000
MAX_LAYERS = 64  # convolutions (stem included) + dense layers
MAX_CLASSES = 1000

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

# The seed report's best network: a 256-filter stem conv, then blocks of 512, 512, 256, 512
# filters (3x3, valid padding, batch norm, 2x2 max-pool, dropout), dense 256 + BN + dropout.
SEED_HW3 = ModelConfig(
    filters=(512, 512, 256, 512), convs_per_block=(1,), dropout=(0.25,), kernel_size=3,
    padding="valid", batch_norm=True, stem_filters=256, dense_units=(256,), dense_dropout=0.5,
)
MODEL_PRESETS: dict[str, ModelConfig] = {
    "seed_hw3": SEED_HW3,
    "vgg_fer_small": ModelConfig(
        filters=(16, 32, 64), convs_per_block=(1,), dropout=(0.1, 0.2, 0.3), dense_units=(128,)
    ),
    "vgg_fer_tiny": ModelConfig(
        filters=(8, 16), convs_per_block=(1,), dropout=(0.1,), dense_units=(32,),
        dense_dropout=0.2,
    ),
}


def per_block(values: tuple[Any, ...], num_blocks: int, key: str) -> tuple[Any, ...]:
    """Expand a per-block field: one value applies to every block, else one per block."""
    if len(values) == 1:
        return values * num_blocks
    if len(values) != num_blocks:
        raise ConfigError(
            f"model.{key}: has {len(values)} values for {num_blocks} blocks "
            "(give one value, or one per block)"
        )
    return values


def _padding(config: ModelConfig) -> int:
    if config.padding == "same":
        if config.kernel_size % 2 == 0:
            raise ConfigError("model.kernel_size: 'same' padding needs an odd kernel size")
        return config.kernel_size // 2
    return 0


def _check_structure(config: ModelConfig) -> tuple[int, ...]:
    """Counts and sizes of a config, checked before any loop runs over them -> convs per block.

    Raises ConfigError naming the field: blocks outside 2..6, sizes below 1, more than
    MAX_LAYERS layers.
    """
    n_blocks = len(config.filters)
    if not MIN_BLOCKS <= n_blocks <= MAX_BLOCKS:
        raise ConfigError(f"model.filters: {n_blocks} blocks, expected {MIN_BLOCKS}..{MAX_BLOCKS}")
    convs = per_block(config.convs_per_block, n_blocks, "convs_per_block")
    at_least_one = {"filters": config.filters, "convs_per_block": convs,
                    "dense_units": config.dense_units,
                    "kernel_size": (config.kernel_size,), "input_size": (config.input_size,)}
    for key, values in at_least_one.items():
        if min(values, default=1) < 1:
            raise ConfigError(f"model.{key}: {min(values)} must be at least 1")
    if config.stem_filters < 0:
        raise ConfigError(f"model.stem_filters: {config.stem_filters} must be 0 or more")
    layers = sum(convs) + (config.stem_filters > 0) + len(config.dense_units)
    if layers > MAX_LAYERS:
        raise ConfigError(f"model: {layers} conv and dense layers, more than the "
                          f"{MAX_LAYERS} allowed")
    return convs


def parameter_count(config: ModelConfig, num_classes: int = NUM_CLASSES) -> int:
    """Numbers in the network's state dict (parameters and batch-norm buffers), from the
    config alone: what its weights file must hold. Nothing is allocated."""
    convs = _check_structure(config)
    k2, bn = config.kernel_size ** 2, config.batch_norm
    total, in_ch = 2, 1  # the normalisation buffers (mean, std)
    if config.stem_filters:
        total += config.stem_filters * (k2 + 1)
        in_ch = config.stem_filters
    for out_ch, n in zip(config.filters, convs, strict=True):
        total += out_ch * (in_ch * k2 + 1) + (n - 1) * out_ch * (out_ch * k2 + 1)
        total += n * (4 * out_ch + 1) if bn else 0  # weight, bias, running mean/var, count
        in_ch = out_ch
    channels, h, w = feature_shape(config)
    width = channels * h * w
    for units in config.dense_units:
        total += units * (width + 1) + ((4 * units + 1) if bn else 0)
        width = units
    return total + num_classes * (width + 1)


def check_model(config: ModelConfig, num_classes: int = NUM_CLASSES) -> int:
    """Refuse (ConfigError) a config that is not a buildable network (sizes, layer counts,
    dropout outside [0, 1)) or has more than MAX_PARAMETERS numbers; returns the parameter
    count. Nothing is allocated."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"model: {num_classes} classes (2..{MAX_CLASSES} allowed)")
    count = parameter_count(config, num_classes)
    dropouts = per_block(config.dropout, len(config.filters), "dropout")
    for p in (*dropouts, config.dense_dropout):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"model: dropout {p} outside [0, 1)")
    if count > MAX_PARAMETERS:
        raise ConfigError(f"model: {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                          "allowed")
    return count


def feature_shape(config: ModelConfig, input_size: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) entering the classifier head, for a square input.

    Raises ConfigError naming the block where the feature map becomes too small (or the
    field, for blocks, sizes or layer counts out of range).
    """
    convs = _check_structure(config)
    n_blocks = len(config.filters)
    size = input_size or config.input_size
    h = w = size
    k, p = config.kernel_size, _padding(config)
    where = "the stem conv"
    try:
        if config.stem_filters:
            h, w = conv_output_size(h, k, 1, p), conv_output_size(w, k, 1, p)
        for block, n_convs in enumerate(convs, start=1):
            where = f"block {block}"
            for _ in range(n_convs):
                h, w = conv_output_size(h, k, 1, p), conv_output_size(w, k, 1, p)
            h, w = conv_output_size(h, 2, 2), conv_output_size(w, 2, 2)
    except ConfigError as exc:
        raise ConfigError(
            f"model: {n_blocks} blocks of {k}x{k} '{config.padding}' convs do not fit a "
            f"{size}x{size} input ({where} sees {h}x{w}: {exc})"
        ) from None
    return config.filters[-1], h, w


class VGGFer(nn.Module):
    """VGG-like FER CNN. forward: (N, 1, H, W) float in [0, 1] -> logits (N, num_classes);
    num_classes defaults to FER2013's 7."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ModelConfig, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        check_model(config, num_classes)
        self.config = config
        self.num_classes = num_classes
        n_blocks = len(config.filters)
        channels, h, w = feature_shape(config)
        convs = per_block(config.convs_per_block, n_blocks, "convs_per_block")
        dropouts = per_block(config.dropout, n_blocks, "dropout")
        act = _ACTIVATIONS[config.activation]
        pad = _padding(config)
        k = config.kernel_size

        self.register_buffer("mean", torch.tensor(0.5))
        self.register_buffer("std", torch.tensor(0.25))
        layers: list[nn.Module] = []
        in_ch = 1
        if config.stem_filters:
            layers += [nn.Conv2d(in_ch, config.stem_filters, k, padding=pad), act()]
            in_ch = config.stem_filters
        for out_ch, n_convs, p in zip(config.filters, convs, dropouts, strict=True):
            for _ in range(n_convs):
                layers.append(nn.Conv2d(in_ch, out_ch, k, padding=pad))
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(act())
                in_ch = out_ch
            layers += [nn.MaxPool2d(2),
                       nn.Dropout2d(p) if config.spatial_dropout else nn.Dropout(p)]
        self.features = nn.Sequential(*layers)

        head: list[nn.Module] = [nn.Flatten()]
        width = channels * h * w
        for units in config.dense_units:
            head.append(nn.Linear(width, units))
            if config.batch_norm:
                head.append(nn.BatchNorm1d(units))
            head += [act(), nn.Dropout(config.dense_dropout)]
            width = units
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)

    def set_normalization(self, mean: float, std: float) -> None:
        """Store the training set's pixel mean/std (of x in [0, 1]) used to standardise input."""
        self.mean.fill_(mean)
        self.std.fill_(max(std, 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.classifier(self.features(x))


def _vgg_fer_factory(base: ModelConfig) -> Any:
    """A factory taking any ModelConfig field as a keyword, defaulting to ``base``, and
    ``num_classes`` (default FER2013's 7)."""

    def factory(num_classes: int = NUM_CLASSES, **hparams: Any) -> VGGFer:
        merged = {**dataclasses.asdict(base), **hparams}
        merged.pop("name", None)
        return VGGFer(from_dict(ModelConfig, merged, prefix="model."), num_classes)

    # create_model checks hyperparameter names against this signature.
    params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(base, f.name))
        for f in dataclasses.fields(ModelConfig)
        if f.name != "name"
    ] + [inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, default=NUM_CLASSES)]
    factory.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return factory


register_model("vgg_fer")(_vgg_fer_factory(ModelConfig()))
for _name, _preset in MODEL_PRESETS.items():
    register_model(_name)(_vgg_fer_factory(_preset))


def build_model(config: ModelConfig, num_classes: int = NUM_CLASSES) -> VGGFer:
    """The model a resolved config describes, built by the registry's factory for
    ``config.name`` (a vgg_fer variant) with every other field as a hyperparameter, with
    ``num_classes`` outputs (the length of the data's ``classes``)."""
    if config.name not in list_models():
        raise ConfigError(f"model.name: unknown model {config.name!r}")
    hparams = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name != "name"}
    model = create_model(config.name, num_classes=num_classes, **hparams)
    assert isinstance(model, VGGFer)
    return model
