"""Search spaces: the shipped YAMLs load, sample (define-by-run, real Optuna) into valid configs
with per-block tuples of the drawn length, and bad files fail with the file and key named."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from fer_ray import space as space_module
from fer_ray.config import TrainConfig, merge
from fer_ray.errors import ConfigError
from fer_ray.models.vgg_fer import MAX_BLOCKS, MIN_BLOCKS, MODEL_PRESETS
from fer_ray.space import (
    PER_BLOCK_FIELDS,
    SPACES_DIR,
    SearchSpace,
    check_architecture,
    list_spaces,
    load_space,
    space_from_dict,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEED_CONFIG = merge(TrainConfig(model=MODEL_PRESETS["seed_hw3"]),
                    {"optim": {"optimizer": "adam", "lr": 1e-3, "batch_size": 64}})


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _draw(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict]]:
    """``n`` (trial.params, flat) pairs from a seeded random sampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = []
    for _ in range(n):
        trial = study.ask()
        flat = space.sample(trial)
        draws.append((dict(trial.params), flat))
    return draws


def test_shipped_spaces_load() -> None:
    assert {"paper", "small", "smoke"} <= set(list_spaces())
    for name in ("paper", "small", "smoke"):
        space = load_space(name)
        assert space.name == name and space.description and space.params
        assert Path(space.source) == SPACES_DIR / f"{name}.yaml"
    assert load_space(SPACES_DIR / "small.yaml") == load_space("small")  # by path too


def test_block_limits_mirror_the_model() -> None:
    assert (space_module.MIN_BLOCKS, space_module.MAX_BLOCKS) == (MIN_BLOCKS, MAX_BLOCKS)


def test_paper_samples_fit_the_drawn_number_of_blocks() -> None:
    space = load_space("paper")
    seen_blocks = set()
    for params, flat in _draw(space, 200):
        config = space.to_config(flat, TrainConfig())
        n = params["model.num_blocks"]
        seen_blocks.add(n)
        for key in PER_BLOCK_FIELDS:
            assert len(_get(config, key)) == n, key
        # Per-block names only for existing blocks, and every block's draw is used.
        block_names = [k for k in params if re.fullmatch(r"model\.\w+\.\d+", k)]
        assert all(int(k.rsplit(".", 1)[1]) < n for k in block_names)
        assert len(block_names) == 3 * n
        for name, value in params.items():  # no sampled param dropped
            if name == "model.num_blocks":
                continue
            name = re.sub(r"\[.*\]$", "", name)  # a "by" param's branch, e.g. lr[sgd]
            key, _, index = name.rpartition(".") if name[-1].isdigit() else (name, "", "")
            got = _get(config, key)
            got = got[int(index)] if index else got
            got = got[0] if isinstance(got, tuple) else got  # dense_units: one layer
            assert got == pytest.approx(value) if isinstance(value, float) else got == value
        assert config.optim.momentum == 0.9  # a constant
        assert space.contains(config)
    assert seen_blocks == set(range(MIN_BLOCKS, MAX_BLOCKS + 1))


def test_quantized_and_integer_draws_land_on_the_grid() -> None:
    space = load_space("paper")
    rotations = {flat["augment.rotation"] for _, flat in _draw(space, 60, seed=1)}
    assert rotations <= {0.0, 5.0, 10.0, 15.0, 20.0} and len(rotations) > 2


def test_base_and_constants_applied() -> None:
    space = load_space("smoke")
    for _, flat in _draw(space, 10):
        config = space.to_config(flat, TrainConfig(epochs=3))
        assert config.epochs == 3  # untouched fields come from the base config
        assert config.model.dense_units == (16,) and config.optim.schedule == "none"
        assert config.augment.rotation == 0.0 and config.augment.hflip == 0.0
        assert len(config.model.filters) == 2 and set(config.model.filters) <= {4, 8}
        assert config.model.dropout == (0.1, 0.1)
        assert 1e-3 <= config.optim.lr <= 1e-2 and config.optim.batch_size in (64, 128)
        check_architecture(config)


def test_sampling_is_deterministic_with_a_seeded_sampler() -> None:
    space = load_space("paper")
    assert _draw(space, 20, seed=3) == _draw(space, 20, seed=3)
    assert _draw(space, 20, seed=3) != _draw(space, 20, seed=4)


def test_tpe_define_by_run() -> None:
    space = load_space("paper")
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    for _ in range(8):
        trial = study.ask()
        config = space.to_config(space.sample(trial), TrainConfig())
        assert len(config.model.dropout) == len(config.model.filters)
        study.tell(trial, config.optim.lr * len(config.model.filters))
    assert len(study.trials) == 8


def test_contains_seed_network() -> None:
    assert load_space("paper").contains(SEED_CONFIG)
    assert not load_space("small").contains(SEED_CONFIG)
    paper = load_space("paper")
    assert not paper.contains(merge(SEED_CONFIG, {"optim": {"lr": 0.5}}))  # outside bounds
    assert not paper.contains(merge(SEED_CONFIG, {"model": {"filters": [512, 100]}}))
    assert not paper.contains(merge(SEED_CONFIG, {"augment": {"rotation": 7.0}}))  # off grid
    assert not paper.contains(merge(SEED_CONFIG, {"optim": {"momentum": 0.5}}))  # constant


def test_num_blocks_defaults_to_the_base_filters() -> None:
    space = space_from_dict({"base": {"model": {"filters": [8, 16]}},
                             "params": {"model.dropout": {"type": "uniform", "low": 0.0,
                                                          "high": 0.3, "per_block": True}}})
    _, flat = _draw(space, 1)[0]
    assert sorted(flat) == ["model.dropout.0", "model.dropout.1"]
    config = space.to_config(flat, TrainConfig())
    assert config.model.filters == (8, 16) and config.model.convs_per_block == (1, 1)


def test_default_per_block_values_are_broadcast_when_lengths_conflict() -> None:
    # filters per block, dropout not in the space: the default's 3 dropouts can't serve 2
    # blocks, so its first value is used for every block.
    space = space_from_dict({"params": {
        "model.num_blocks": {"type": "randint", "low": 2, "high": 4},
        "model.filters": {"type": "choice", "values": [8, 16], "per_block": True},
        "model.convs_per_block": {"type": "int", "low": 1, "high": 2},  # one draw, all blocks
    }})
    for params, flat in _draw(space, 20):
        config = space.to_config(flat, TrainConfig())
        n = params["model.num_blocks"]
        assert n in (2, 3) and len(config.model.filters) == n
        expected = (0.1,) * n if n == 2 else TrainConfig().model.dropout
        assert config.model.dropout == expected
        assert config.model.convs_per_block == (params["model.convs_per_block"],) * n


def test_overrides_refuse_unknown_and_missing_params() -> None:
    space = load_space("smoke")
    _, flat = _draw(space, 1)[0]
    with pytest.raises(ConfigError, match=r"unknown parameter model\.filters\.2"):
        space.overrides({**flat, "model.filters.2": 8})
    with pytest.raises(ConfigError, match="missing optim.lr"):
        space.overrides({k: v for k, v in flat.items() if k != "optim.lr"})
    with pytest.raises(ConfigError, match="model.num_blocks"):
        space.overrides({**flat, "model.num_blocks": 3})  # differs from the constant


def test_check_architecture() -> None:
    check_architecture(SEED_CONFIG)
    deep = dataclasses.replace(SEED_CONFIG.model, filters=(32,) * 6, kernel_size=5,
                               padding="valid", stem_filters=0)
    with pytest.raises(ConfigError, match="do not fit"):
        check_architecture(dataclasses.replace(SEED_CONFIG, model=deep))


GOOD = "params:\n  optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
BAD_CASES = [
    # (file contents, text the message must contain besides the file name)
    ("optimz: {}\n" + GOOD, "optimz: unknown top-level section"),
    ("params:\n  optim.lrr: 0.1\n", "params.optim.lrr: unknown key (known optim keys: "
                                    "optimizer, lr"),
    ("params:\n  data.path: x\n", "params.data.path: unknown key (known data keys: vote_alpha)"),
    ("params:\n  train.lr: 1\n", "params.train.lr: unknown key (expected section.field"),
    ("params:\n  lr: 0.1\n", "params.lr: unknown key (expected section.field"),
    ("params:\n  optim.lr: {type: gaussian, low: 0, high: 1}\n",
     "params.optim.lr.type: 'gaussian' is not a distribution type"),
    ("params:\n  optim.lr: {low: 0.1, high: 1}\n", "params.optim.lr.type: missing"),
    ("params:\n  optim.lr: {type: uniform, low: 0.1}\n", "params.optim.lr: missing 'high'"),
    ("params:\n  optim.lr: {type: choice}\n", "params.optim.lr: missing 'values'"),
    ("params:\n  optim.lr: {type: uniform, low: 0.1, high: 1, q: 2}\n",
     "params.optim.lr.q: not an option of uniform"),
    ("params:\n  optim.lr: {type: choice, values: [fast]}\n",
     "params.optim.lr.values[0]: expected a number"),
    ("params:\n  optim.lr: {type: uniform, low: slow, high: 1}\n",
     "params.optim.lr.low: expected a number"),
    ("params:\n  model.padding: {type: choice, values: [same, full]}\n",
     "params.model.padding.values[1]: 'full' is not one of"),
    ("params:\n  optim.batch_size: {type: uniform, low: 16, high: 256}\n",
     "params.optim.batch_size.type: uniform draws floats"),
    ("params:\n  model.batch_norm: {type: int, low: 0, high: 1}\n",
     "params.model.batch_norm.low: expected true/false"),
    ("params:\n  optim.lr: 1.0e-3\n  optim.optimizer: 3\n", "params.optim.optimizer: 3 is not"),
    ("params:\n  optim.lr: {type: uniform, low: 0.1, high: 0.1}\n",
     "params.optim.lr: empty range"),
    ("params:\n  optim.batch_size: {type: int, low: 64, high: 32}\n",
     "params.optim.batch_size: empty range"),
    ("params:\n  optim.lr: {type: choice, values: []}\n",
     "params.optim.lr.values: expected a non-empty list"),
    ("params:\n  augment.rotation: {type: quniform, low: 0, high: 20, q: 0}\n",
     "params.augment.rotation.q: must be > 0"),
    ("params:\n  augment.rotation: {type: quniform, low: 0, high: 20, q: 3}\n",
     "params.augment.rotation.q: low (0) and high (20) must be multiples"),
    ("params:\n  optim.lr: {type: loguniform, low: 0, high: 0.1}\n",
     "params.optim.lr.low: loguniform needs low > 0"),
    ("params:\n  optim.lr: {type: qloguniform, low: -1, high: 1, q: 0.5}\n",
     "params.optim.lr.low: qloguniform needs low > 0"),
    ("params:\n  optim.batch_size: {type: int, low: 32, high: 256, step: 100}\n",
     "params.optim.batch_size.step"),
    ("params:\n  model.dense_units: {type: choice, values: [64], per_block: true}\n",
     "params.model.dense_units.per_block: only for fields with one value per block"),
    ("params:\n  model.num_blocks: {type: int, low: 2, high: 7}\n"
     "  model.filters: {type: choice, values: [8], per_block: true}\n",
     "params.model.num_blocks: 7 is not a number of blocks"),
    ("params:\n  model.num_blocks: 1\n  model.filters: 8\n",
     "params.model.num_blocks: 1 is not a number of blocks"),
    ("params:\n  model.num_blocks: {type: int, low: 2, high: 4}\n",
     "params.model.num_blocks: needs model.filters"),
    ("base:\n  model: {dropout: [0.1, 0.2]}\nparams:\n"
     "  model.num_blocks: {type: int, low: 2, high: 4}\n"
     "  model.filters: {type: choice, values: [8], per_block: true}\n",
     "base.model.dropout: 2 values do not fit a varying number of blocks"),
    ("base:\n  optim: {lrr: 0.1}\n" + GOOD, "base: unknown config key optim.lrr"),
    ("base:\n  optim: {lr: 0.1}\n" + GOOD, "params.optim.lr: also set in base"),
    ("params:\n  optim.lr: {type: uniform, low: 0.1, high: 1\n", "line "),
    ("params:\n  optim.lr: 0.1\n  optim.lr: 0.2\n", "line 3: invalid YAML: duplicate key"),
    ("- optim.lr\n- 0.1\n", "top level: expected a mapping"),
    ("", "top level: expected a mapping"),
    ("description: no params\n", "params: expected a mapping"),
    ("params:\n  optim.lr: {by: optim.optimizer, sgd: 0.1}\n",
     "params.optim.lr.by: 'optim.optimizer' must name an earlier choice"),
    ("params:\n  optim.optimizer: {type: choice, values: [sgd, adam]}\n"
     "  optim.lr: {by: optim.optimizer, adamw: 0.1}\n",
     "params.optim.lr.adamw: not a value of optim.optimizer (sgd, adam)"),
    ("params:\n  optim.optimizer: {type: choice, values: [sgd, adam]}\n"
     "  optim.lr: {by: optim.optimizer, sgd: {type: uniform, low: 1, high: 0.1}}\n",
     "params.optim.lr.sgd: empty range"),
    ("params:\n  optim.optimizer: {type: choice, values: [sgd]}\n"
     "  model.filters: {by: optim.optimizer, sgd: 8}\n",
     "params.model.filters.by: not for per-block fields"),
    (GOOD + "points: {optim: {lr: 0.001}}\n", "points: expected a list of mappings"),
    (GOOD + "points:\n  - {optim: {lrr: 0.001}}\n", "points[0]: unknown config key optim.lrr"),
    (GOOD + "points:\n  - {optim: {lr: 0.5}}\n", "points[0]: optim.lr is outside the space"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CASES)
def test_bad_space_files_name_the_file_and_key(tmp_path: Path, text: str, message: str
                                               ) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_space(str(path))
    assert str(path.name) in str(info.value) and message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_space_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such search space \(available spaces: .*small"):
        load_space("nope")
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        load_space(str(tmp_path / "missing.yaml"))


def test_yaml_float_shorthand_and_good_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text("params:\n  optim.lr: {type: loguniform, low: 1e-4, high: 1e-2}\n"
                    "  augment.rotation: {type: int, low: 0, high: 20, step: 5}\n")
    space = load_space(path)
    assert space.name == "mine" and space.param("optim.lr").low == 1e-4  # type: ignore[union-attr]


MERGED = """params:
  optim.optimizer: {type: choice, values: [sgd, adam]}
  optim.lr:
    by: optim.optimizer
    sgd: &lr {type: loguniform, low: 1.0e-3, high: 1.0e-1}
    adam:
      <<: *lr
      high: 1.0e-2
"""


def test_yaml_merge_keys_give_the_merged_values_and_the_written_ones_win(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "merged.yaml"
    path.write_text(MERGED)
    lr = load_space(path).param("optim.lr")
    assert lr is not None and lr.type == "by"
    bounds = {value: (p.type, p.low, p.high) for value, p in lr.branches}
    assert bounds == {"sgd": ("loguniform", 1e-3, 1e-1), "adam": ("loguniform", 1e-3, 1e-2)}


def test_a_key_written_twice_next_to_a_merge_key_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(MERGED + "      high: 2.0e-2\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(info.value) == f"{path}: line 9: invalid YAML: duplicate key 'high'"


def test_constant_filters_set_the_number_of_blocks() -> None:
    space = space_from_dict({"params": {
        "model.filters": [8, 16],
        "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3, "per_block": True}}})
    _, flat = _draw(space, 1)[0]
    assert {"model.dropout.0", "model.dropout.1"} <= set(flat) and "model.dropout.2" not in flat
    config = space.to_config(flat, TrainConfig())
    assert config.model.filters == (8, 16) and len(config.model.dropout) == 2
    assert space.contains(config)


BY_SPACE = """
params:
  optim.optimizer: {type: choice, values: [sgd, adam, adamw]}
  optim.lr:
    by: optim.optimizer
    sgd: {type: loguniform, low: 1.0e-2, high: 1.0e-1}
    adam: 3.0e-4
  optim.weight_decay: {by: optim.optimizer, adamw: {type: choice, values: [0.01, 0.05]}}
points:
  - {optim: {optimizer: sgd, lr: 0.05}}
  - {optim: {optimizer: adamw, weight_decay: 0.05}}
"""


def test_by_params_draw_one_distribution_per_value(tmp_path: Path) -> None:
    path = tmp_path / "by.yaml"
    path.write_text(BY_SPACE)
    space = load_space(str(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        flat = space.sample(study.ask())
        config = space.to_config(flat, TrainConfig())
        seen.add(config.optim.optimizer)
        assert space.contains(config) and space.params_of(config) == flat
        if config.optim.optimizer == "sgd":
            assert 1e-2 <= config.optim.lr <= 1e-1 and set(flat) == {
                "optim.optimizer", "optim.lr[sgd]"}
        elif config.optim.optimizer == "adam":
            assert config.optim.lr == 3e-4
        else:  # no lr branch for adamw: the default rate
            assert config.optim.lr == TrainConfig().optim.lr
            assert config.optim.weight_decay in (0.01, 0.05)
    assert seen == {"sgd", "adam", "adamw"}
    outside = merge(TrainConfig(), {"optim": {"optimizer": "sgd", "lr": 0.5}})
    assert space.outside(outside) == "optim.lr"
    with pytest.raises(ConfigError, match=r"optim.lr\[sgd\]: 0.5 is outside"):
        space.to_config({"optim.optimizer": "sgd", "optim.lr[sgd]": 0.5}, TrainConfig())


def test_grown_filters_double_from_block_to_block(tmp_path: Path) -> None:
    path = tmp_path / "grow.yaml"
    path.write_text("params:\n  model.num_blocks: {type: int, low: 2, high: 4}\n"
                    "  model.filters: {type: choice, values: [16, 24], grow: 2}\n")
    space = load_space(str(path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        flat = space.sample(study.ask())
        config = space.to_config(flat, TrainConfig())
        first, n = flat["model.filters"], flat["model.num_blocks"]
        assert config.model.filters == tuple(first * 2**i for i in range(n))
        assert space.contains(config) and space.params_of(config) == flat
        seen.add(config.model.filters)
    assert len(seen) >= 4
    odd = merge(TrainConfig(), {"model": {"filters": [16, 48, 64]}})
    assert space.outside(odd) == "model.filters"
    path.write_text("params:\n  model.filters: {type: choice, values: [16], grow: 9}\n")
    with pytest.raises(ConfigError, match=r"params.model.filters.grow: a number in \[1, 4\]"):
        load_space(str(path))


def test_points_lie_in_their_spaces_and_round_trip() -> None:
    for name in ("small", "paper"):
        space = load_space(name)
        assert space.points, name
        for config in space.point_configs():
            assert space.contains(config)
            again = space.to_config(space.params_of(config), TrainConfig())
            assert again.optim == config.optim and again.augment == config.augment
            assert again.model.filters == config.model.filters


def test_small_contains_the_hand_written_recipe() -> None:
    """3 blocks of two 3x3 convs (32/64/128), BN, dropout, dense 256, flips, Adam one-cycle,
    batch 128: the network and recipe fer-ray is measured against (bench_quality.py)."""
    recipe = merge(TrainConfig(), {
        "model": {"filters": [32, 64, 128], "convs_per_block": [2], "dropout": [0.25],
                  "spatial_dropout": False, "dense_units": [256], "dense_dropout": 0.5},
        "optim": {"optimizer": "adam", "lr": 0.002, "weight_decay": 0.0,
                  "schedule": "onecycle", "batch_size": 128, "label_smoothing": 0.0,
                  "nesterov": True},
        "augment": {"hflip": 0.5, "rotation": 0.0, "scale": 0.0, "translate": 0.0}})
    assert load_space("small").contains(recipe)


def test_paper_points_start_from_the_seed_network() -> None:
    seed = load_space("paper").point_configs()[0]
    preset = MODEL_PRESETS["seed_hw3"]
    assert seed.model.filters == preset.filters and seed.model.stem_filters == 256
    assert (seed.optim.optimizer, seed.optim.lr, seed.optim.batch_size) == ("adam", 1e-3, 64)


def _architecture(config: TrainConfig) -> tuple[int, int, tuple[int, ...]]:
    return len(config.model.filters), config.model.filters[0], config.model.convs_per_block


def _augmentation(config: TrainConfig) -> tuple[float, float, float]:
    return config.augment.erasing, config.augment.rotation, config.augment.mixup


def test_small_points_are_members_that_differ() -> None:
    """On 2 cores the first two points are the ensemble: they differ in the network (blocks
    or first filters) and in augmentation, not only in a loss tweak (BENCHMARKS.md,
    "Members that disagree", says how each was chosen)."""
    first, second = load_space("small").point_configs()[:2]
    assert _architecture(first) != _architecture(second)
    assert _augmentation(first) != _augmentation(second)
