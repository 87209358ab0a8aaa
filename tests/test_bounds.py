"""Model configs from files are bounded before anything is allocated (issue 11).

``parameter_count`` must equal what torch builds, or the bound and the weights-file check
would refuse good models (or pass bad ones); a refused config must never reach torch (the
huge cases here would need terabytes if they did).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fer_ray.config import ModelConfig
from fer_ray.errors import ConfigError, DataError
from fer_ray.models.io import build_checked, save_weights
from fer_ray.models.vgg_fer import (
    MAX_PARAMETERS,
    MODEL_PRESETS,
    VGGFer,
    check_model,
    parameter_count,
)

CONFIGS = [
    MODEL_PRESETS["vgg_fer_tiny"],
    MODEL_PRESETS["vgg_fer_small"],
    MODEL_PRESETS["seed_hw3"],
    ModelConfig(filters=(4, 8, 16), convs_per_block=(1, 2, 3), dropout=(0.0,),
                kernel_size=5, dense_units=(32, 16), batch_norm=False),
    ModelConfig(filters=(3, 5), convs_per_block=(2,), dropout=(0.1,), padding="valid",
                stem_filters=6, dense_units=(), input_size=64),
]


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_parameter_count_is_what_torch_builds(config: ModelConfig) -> None:
    state = VGGFer(config).state_dict()
    assert parameter_count(config) == sum(t.numel() for t in state.values())


def test_the_widest_paper_net_fits_the_bound() -> None:
    """5 blocks of three 5x5 convs of 512 filters behind a 256-filter stem, dense 1024."""
    widest = ModelConfig(filters=(512,) * 5, convs_per_block=(3,), dropout=(0.0,),
                         kernel_size=5, stem_filters=256, dense_units=(1024,))
    assert 90e6 < check_model(widest) <= MAX_PARAMETERS


@pytest.mark.parametrize(("change", "message"), [
    ({"dense_units": (10**9,)}, "parameters, more than the 150,000,000 allowed"),
    ({"filters": (10**6, 10**6)}, "parameters, more than"),
    ({"convs_per_block": (10**9,)}, "layers, more than the 64 allowed"),
    ({"dense_units": (8,) * 100}, "layers, more than the 64 allowed"),
    ({"filters": (0, 8)}, "model.filters: 0 must be at least 1"),
    ({"dense_units": (-5,)}, "model.dense_units: -5 must be at least 1"),
    ({"kernel_size": 0}, "model.kernel_size: 0 must be at least 1"),
    ({"stem_filters": -1}, "model.stem_filters: -1 must be 0 or more"),
    ({"input_size": 10**6}, "parameters, more than"),
])
def test_refused_from_the_config_alone(change: dict[str, object], message: str) -> None:
    config = ModelConfig(**{**MODEL_PRESETS["vgg_fer_tiny"].__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        check_model(config)
    with pytest.raises(ConfigError, match=message):
        VGGFer(config)  # every way of building goes through the check


def test_weights_are_checked_against_the_config_before_building(tmp_path: Path) -> None:
    tiny = MODEL_PRESETS["vgg_fer_tiny"]
    path = tmp_path / "w.safetensors"
    save_weights(VGGFer(tiny), path)
    assert isinstance(build_checked(tiny, path), VGGFer)
    wider = ModelConfig(**{**tiny.__dict__, "filters": (16, 16)})
    with pytest.raises(DataError, match=r"does not match its config .*features\.0\."):
        build_checked(wider, path)
    deeper = ModelConfig(**{**tiny.__dict__, "dense_units": (32, 32)})
    with pytest.raises(DataError, match="does not match its config"):
        build_checked(deeper, path)
    huge = ModelConfig(**{**tiny.__dict__, "dense_units": (10**9,)})
    with pytest.raises(DataError, match="its config is refused"):
        build_checked(huge, path)


def test_meta_device_build_allocates_nothing() -> None:
    """expected_shapes builds on the meta device: even a large net costs no memory."""
    from fer_ray.models.io import expected_shapes

    widest = ModelConfig(filters=(512,) * 5, convs_per_block=(3,), dropout=(0.0,),
                         kernel_size=5, dense_units=(1024,))
    shapes = expected_shapes(widest)
    assert shapes["features.0.weight"] == (512, 1, 5, 5)
    assert torch.Size(shapes["classifier.1.weight"]) == (1024, 512)
