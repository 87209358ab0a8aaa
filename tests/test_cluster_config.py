"""The cluster configs pass Ray's own autoscaler schema checks, offline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / name).read_text()))


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.onprem.yaml"])
def test_cluster_config_is_valid(name: str) -> None:
    config = prepare_config(copy.deepcopy(_load(name)))
    validate_config(config)
    commands = " ".join(config["setup_commands"])
    # ray[default]: the job server that `ray job submit` needs; tune: the search.
    assert "ray[default,tune]==2.60.0" in commands and "torch==2.14.1" in commands
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_aws_workers_are_gpu_nodes_scaling_from_zero() -> None:
    config = _load("cluster.yaml")
    workers = config["available_node_types"]["gpu_worker"]
    assert config["provider"]["type"] == "aws" and workers["min_workers"] == 0
    assert workers["node_config"]["InstanceType"].startswith("g")
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_a_misspelt_key_is_caught_by_the_schema() -> None:
    config = _load("cluster.yaml")
    config["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
