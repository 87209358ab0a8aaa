"""Named training setups for ``python -m fer_ray.train --preset NAME``."""

from __future__ import annotations

from typing import Any

from fer_ray.config import AugmentConfig, OptimConfig, TrainConfig, load_config, merge
from fer_ray.errors import ConfigError
from fer_ray.models.vgg_fer import MODEL_PRESETS

PRESETS: dict[str, TrainConfig] = {
    # Seconds on a CPU: for tests and smoke runs.
    "tiny": TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"], epochs=2),
    # A narrow 3-block net: a few minutes per FER2013 epoch on 2 CPU cores.
    "small": TrainConfig(model=MODEL_PRESETS["vgg_fer_small"], epochs=3),
    # The seed report's network and recipe (flip/rotate/scale, Adam, early stopping); GPU-sized.
    "seed_hw3": TrainConfig(
        model=MODEL_PRESETS["seed_hw3"],
        optim=OptimConfig(optimizer="adam", lr=1e-3, batch_size=64, schedule="plateau"),
        augment=AugmentConfig(hflip=0.5, rotation=15.0, scale=0.1, translate=0.1),
        epochs=50,
        patience=10,
    ),
}


def get_preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


# Config keys the command lines of train and ablate set, with their flags (for messages).
FLAG_KEYS = {"epochs": "--epochs", "patience": "--patience", "seed": "--seed",
             "optim.batch_size": "--batch-size", "optim.lr": "--lr",
             "data.val_fraction": "--val-fraction", "data.subsample": "--subsample",
             "data.synthetic_size": "--synthetic-size", "data.vote_alpha": "--vote-alpha"}


def resolve_config(preset: str, config_file: str | None, overrides: dict[str, Any]
                   ) -> TrainConfig:
    """A preset, then a config JSON (``config_file``), then ``overrides`` (a nested dict of
    config keys; None means unset and is dropped): later wins."""
    config = get_preset(preset)
    if config_file:
        config = load_config(config_file, base=config)
    return merge(config, _drop_none(overrides))


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    """Remove unset (None) values, recursively, so they do not override the config."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_none(value)
        if value is not None and value != {}:
            out[key] = value
    return out
