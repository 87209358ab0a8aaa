"""Named training setups for ``python -m fer_ray.train --preset NAME``."""

from __future__ import annotations

from fer_ray.config import AugmentConfig, OptimConfig, TrainConfig
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
