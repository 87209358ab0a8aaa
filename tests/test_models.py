"""Models: the shape helper against torch, the seed network, the registry's errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from fer_ray.config import ModelConfig
from fer_ray.errors import ConfigError
from fer_ray.models import (
    MODEL_PRESETS,
    VGGFer,
    conv2d_output_shape,
    conv_output_size,
    create_model,
    feature_shape,
    list_models,
)


@pytest.mark.parametrize(("n", "k", "s", "p"), [
    (48, 3, 1, 0), (48, 3, 1, 1), (48, 5, 1, 2), (47, 3, 2, 0), (48, 2, 2, 0), (5, 5, 1, 0),
    (9, 3, 2, 1), (64, 7, 3, 3),
])
def test_conv_output_size_matches_torch(n: int, k: int, s: int, p: int) -> None:
    out = nn.Conv2d(1, 1, k, stride=s, padding=p)(torch.zeros(1, 1, n, n)).shape[-1]
    assert conv_output_size(n, k, s, p) == out


def test_conv2d_output_shape_uses_each_axis() -> None:
    """The seed's formula used the width for both axes; a non-square input shows the bug."""
    conv = nn.Conv2d(1, 1, (3, 5), stride=2, padding=(1, 0))
    expected = tuple(conv(torch.zeros(1, 1, 40, 64)).shape[-2:])
    assert conv2d_output_shape((40, 64), (3, 5), 2, (1, 0)) == expected == (20, 30)


def test_conv_output_size_rejects_window_larger_than_input() -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        conv_output_size(2, 3)


def _torch_features(config: ModelConfig, size: int) -> tuple[int, ...] | None:
    """Run the model's feature extractor in torch; None when torch itself rejects the shapes."""
    layers: list[nn.Module] = []
    pad = config.kernel_size // 2 if config.padding == "same" else 0
    ch = 1
    if config.stem_filters:
        layers.append(nn.Conv2d(ch, config.stem_filters, config.kernel_size, padding=pad))
        ch = config.stem_filters
    n = len(config.filters)
    convs = config.convs_per_block * (n if len(config.convs_per_block) == 1 else 1)
    for f, c in zip(config.filters, convs, strict=True):
        for _ in range(c):
            layers.append(nn.Conv2d(ch, f, config.kernel_size, padding=pad))
            ch = f
        layers.append(nn.MaxPool2d(2))
    try:
        return tuple(nn.Sequential(*layers)(torch.zeros(1, 1, size, size)).shape[1:])
    except RuntimeError:
        return None


# Every block configuration the search spaces allow: 2..6 blocks, kernel 3/5, same/valid
# padding, 1..3 convs per block, with and without a stem, at 48x48 and 64x64.
GRID = list(itertools.product(range(2, 7), (3, 5), ("same", "valid"), (1, 2, 3), (0, 2), (48, 64)))


@pytest.mark.parametrize(("blocks", "k", "padding", "convs", "stem", "size"), GRID)
def test_feature_shape_matches_torch_for_every_search_config(
    blocks: int, k: int, padding: str, convs: int, stem: int, size: int
) -> None:
    config = ModelConfig(filters=(2,) * blocks, convs_per_block=(convs,), dropout=(0.0,),
                         kernel_size=k, padding=padding, stem_filters=stem,  # type: ignore[arg-type]
                         input_size=size)
    expected = _torch_features(config, size)
    if expected is None:
        with pytest.raises(ConfigError, match="do not fit"):
            feature_shape(config)
    else:
        assert feature_shape(config) == expected
        model = VGGFer(config).eval()
        assert model(torch.rand(2, 1, size, size)).shape == (2, 7)


def test_mixed_per_block_values() -> None:
    config = ModelConfig(filters=(4, 8, 16), convs_per_block=(1, 2, 3), dropout=(0.0, 0.1, 0.2))
    assert feature_shape(config) == _torch_features(config, 48) == (16, 6, 6)
    with pytest.raises(ConfigError, match="convs_per_block: has 2 values for 3 blocks"):
        VGGFer(ModelConfig(filters=(4, 8, 16), convs_per_block=(1, 2)))


def _keras_param_count(model: nn.Module) -> int:
    """Keras counts BN moving mean/variance as parameters; torch keeps them as buffers."""
    bn = sum(m.running_mean.numel() + m.running_var.numel()  # type: ignore[operator,union-attr]
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return sum(p.numel() for p in model.parameters()) + bn


def test_seed_hw3_matches_the_report() -> None:
    """The report's Keras summary at 64x64: 6,437,127 parameters; at 48x48 the flatten is 512."""
    at64 = create_model("seed_hw3", input_size=64)
    assert _keras_param_count(at64) == 6_437_127
    assert feature_shape(MODEL_PRESETS["seed_hw3"]) == (512, 1, 1)
    at48 = create_model("seed_hw3").eval()
    assert at48(torch.rand(2, 1, 48, 48)).shape == (2, 7)
    convs = [m for m in at48.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [256, 512, 512, 256, 512]


def test_registry_errors_are_clear() -> None:
    assert {"vgg_fer", "seed_hw3", "vgg_fer_small", "vgg_fer_tiny"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'resnet9'"):
        create_model("resnet9")
    with pytest.raises(ConfigError, match="unknown hyperparameter 'filterz'"):
        create_model("vgg_fer", filterz=(8, 16))
    with pytest.raises(ConfigError, match="expected 2..6"):
        create_model("vgg_fer", filters=(8,))
    with pytest.raises(ConfigError, match="model.padding"):
        create_model("vgg_fer", padding="full")


def test_normalisation_travels_with_the_weights() -> None:
    model = create_model("vgg_fer_tiny")
    assert isinstance(model, VGGFer)
    model.set_normalization(0.4, 0.2)
    state = model.state_dict()
    assert float(state["mean"]) == pytest.approx(0.4) and float(state["std"]) == pytest.approx(0.2)
