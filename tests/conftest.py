"""Shared fixtures: small generated data, and the real FER2013 folder when FER2013_DIR is set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from fer_ray.config import DataConfig
from fer_ray.data import FerData, RawDataset, prepare
from fer_ray.data.synthetic import make_synthetic

RAY_FIXTURES = {"ray_local", "smoke_experiment", "served", "ray_gpu"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray through a fixture get the ``ray`` marker (modules that start it
    in subprocesses set ``pytestmark``), so ``-m "not slow and not ray"`` is a quick loop.

    ``gpu`` tests run in the serial pass (``make test``'s second): one GPU is shared by
    everything a test starts, and two xdist workers must not race for it. Those that start
    no Ray are marked ``slow`` here (they train on real data), so none lands in the quick
    pass: ``pytest --collect-only -m "gpu and not slow and not ray"`` lists nothing."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("gpu") and not item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    """The real FER2013 npz folder; tests using it skip when FER2013_DIR is unset or missing."""
    value = os.environ.get("FER2013_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("FER2013_DIR is not set (real-data test)")
    return Path(value)


@pytest.fixture(scope="session")
def small_data() -> FerData:
    """1,500 synthetic faces split 90/10: enough for a real, seconds-long training run."""
    raw = RawDataset(train=make_synthetic(1500, seed=0), source="synthetic")
    return prepare(raw, DataConfig(val_fraction=0.1), seed=0)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real local Ray with 2 CPUs, shared by the tests of a session; its workers are
    started knowing where ``inject_fault`` arms a fault."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from fer_ray.trainable import FAULT_ENV

    os.environ[FAULT_ENV] = str(tmp_path_factory.mktemp("fault") / "fault")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def inject_fault(ray_local) -> Iterator[Callable[[str], None]]:  # type: ignore[no-untyped-def]
    """``inject_fault("1:once")``: every trial of the test fails so (the format is
    ``fer_ray.trainable.FAULT_ENV``'s); disarmed when the test ends."""
    from fer_ray.trainable import FAULT_ENV

    armed = Path(os.environ[FAULT_ENV])
    yield armed.write_text
    armed.unlink(missing_ok=True)


SMOKE_SEARCH = {"space": "smoke", "synthetic_size": 600, "max_epochs": 3, "grace_period": 1,
                "num_samples": 5, "name": "exp", "top_k": 3}


@pytest.fixture(scope="session")
def smoke_experiment(ray_local, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A finished 5-trial smoke search (real Ray, real training): (folder, search record)."""
    from fer_ray.experiment import SearchSettings
    from fer_ray.search.run import run_experiment

    storage = tmp_path_factory.mktemp("search")
    record = run_experiment(SearchSettings(**{**SMOKE_SEARCH, "storage": str(storage)}))
    return storage / "exp", record


SERVE_FLAGS = ("--max-batch", "8", "--batch-wait-ms", "20", "--max-upload-mb", "1")


@pytest.fixture(scope="session")
def served(tmp_path_factory):  # type: ignore[no-untyped-def]
    """``python -m fer_ray.serve`` on a free loopback port with a tiny real ensemble (two
    random-weight members), shared by the serve tests; stopped with SIGTERM at the end."""
    from support.cli import save_tiny_ensemble
    from support.serve import running_service

    folder = tmp_path_factory.mktemp("serve")
    ensemble = save_tiny_ensemble(folder / "ensemble", members=2)
    with running_service(ensemble, folder, *SERVE_FLAGS) as service:
        yield service
