"""Config: typed defaults; unknown keys and bad types refused, naming the key; JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fer_ray.config import (
    ModelConfig,
    TrainConfig,
    from_dict,
    load_config,
    merge,
    to_dict,
)
from fer_ray.errors import ConfigError


def test_round_trip_through_json(tmp_path: Path) -> None:
    config = merge(TrainConfig(), {"model": {"filters": [8, 16, 32]}, "optim": {"lr": 0.01}})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(to_dict(config)))
    assert load_config(path) == config
    assert config.model.filters == (8, 16, 32)  # lists become tuples: configs stay hashable


def test_partial_override_keeps_other_fields() -> None:
    config = merge(TrainConfig(epochs=7), {"optim": {"batch_size": 32}})
    assert config.epochs == 7 and config.optim.batch_size == 32
    assert config.optim.lr == TrainConfig().optim.lr


@pytest.mark.parametrize(("overrides", "message"), [
    ({"optim": {"lrr": 0.1}}, "unknown config key optim.lrr"),
    ({"epochz": 3}, "unknown config key epochz"),
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
    ({"epochs": 2.5}, "epochs: expected an integer"),
    ({"model": {"padding": "full"}}, "model.padding: 'full' is not one of"),
    ({"model": {"batch_norm": "yes"}}, "model.batch_norm: expected true/false"),
    ({"model": {"filters": [8, "x"]}}, r"model.filters\[1\]: expected an integer"),
    ({"augment": 3}, "augment: expected a mapping"),
])
def test_bad_values_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        merge(TrainConfig(), overrides)


def test_scalar_becomes_one_element_tuple() -> None:
    assert from_dict(ModelConfig, {"dropout": 0.3}).dropout == (0.3,)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.json: no such file"):
        load_config(tmp_path / "missing.json")
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"config": {"optim": {"learning_rate": 1}}}))
    with pytest.raises(ConfigError, match="typo.json: unknown config key optim.learning_rate"):
        load_config(typo)
