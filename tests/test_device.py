"""Devices and precision: trials follow their resources, one precision for evaluation, and
(marked gpu, skipped without CUDA) the CUDA path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fer_ray.config import merge
from fer_ray.data import load_data
from fer_ray.ensemble.model import Ensemble, Member
from fer_ray.experiment import SearchSettings
from fer_ray.models.io import load_model
from fer_ray.train import fit, get_preset
from fer_ray.trainable import trial_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SMOKE = {"space": "smoke", "synthetic_size": 600, "max_epochs": 3, "grace_period": 3}


@pytest.mark.parametrize(("gpus", "device"), [(0.0, "cpu"), (0.25, "cuda"), (1.0, "cuda")])
def test_a_trial_trains_where_its_resources_are(gpus: float, device: str) -> None:
    """gpus_per_trial 0 means the CPU even on a GPU machine (Ray no longer hides GPUs from
    actors that asked for none); a share of a GPU means the GPU Ray assigned."""
    assert trial_device(gpus) == device


def test_checkpoint_probabilities_equal_what_predict_computes(
        smoke_experiment: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """One precision: the validation probabilities a trial stored (fp32 evaluation) are what
    ``python -m fer_ray.predict`` computes for the same images, to 1e-5, on the CPU."""
    from fer_ray.experiment import load_search_data

    path, _ = smoke_experiment
    best = pd.read_parquet(path / "results.parquet").iloc[0]["best_checkpoint"]
    model, config = load_model(best)
    single = Ensemble([Member("best", config, model)], np.ones(1), tta="none", temperature=1.0)
    single.save(tmp_path / "single")
    data = load_search_data(SearchSettings(**{**SMOKE, "storage": str(path.parent)}))
    np.savez(tmp_path / "val.npz", images=data.val.images)
    out = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, "-m", "fer_ray.predict", "--ensemble",
                           str(tmp_path / "single"), "--device", "cpu", "--out", str(out),
                           str(tmp_path / "val.npz")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    predicted = pd.read_csv(out).filter(like="p_").to_numpy()
    stored = np.load(Path(best) / "val_probs.npy")
    assert np.abs(predicted - stored).max() <= 1e-5


def test_cuda_out_of_memory_ends_the_trial_as_oom_and_the_search_goes_on(
        inject_fault: Any, tmp_path: Path) -> None:
    """An OOM is reported once (status oom, a clear message) and never retried: the same
    config would not fit the second time either."""
    from fer_ray.search.run import run_experiment

    inject_fault("1:oom")
    record = run_experiment(SearchSettings(**{**SMOKE, "num_samples": 2, "max_failures": 2,
                                              "storage": str(tmp_path), "name": "exp"}))
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    assert record["trials"] == {"oom": 2}
    assert df["error"].str.startswith("CUDA out of memory: injected").all()
    for trial in df["trial_id"]:
        lines = (tmp_path / "exp" / f"trial_{trial}" / "result.json").read_text().splitlines()
        assert [json.loads(line)["status_flag"] for line in lines] == ["ok", "oom"]


def test_parallel_cpu_streams_give_the_probabilities_of_one_stream(small_data: Any) -> None:
    from fer_ray.models.inference import predict_logits, predict_probas

    models = [fit(merge(get_preset("tiny"), {"epochs": 1, "seed": s}), small_data, "cpu").model
              for s in (0, 1)]
    images = small_data.val.images
    together = predict_probas(models, images, tta="flip_shift", batch_size=16, workers=2)
    alone = np.stack([torch.softmax(predict_logits(m, images, batch_size=16, tta="flip_shift"),
                                    dim=1).numpy() for m in models])
    np.testing.assert_allclose(together, alone, atol=1e-6, rtol=0)


@cuda
@pytest.mark.gpu
def test_half_a_gpu_per_trial_runs_two_trials_at_once_on_the_gpu(ray_gpu: Any,
                                                                 tmp_path: Path) -> None:
    from fer_ray.search.run import run_experiment

    run_experiment(SearchSettings(**{**SMOKE, "num_samples": 2, "gpus_per_trial": 0.5,
                                     "storage": str(tmp_path), "name": "exp"}))
    spans = []
    for trial in pd.read_parquet(tmp_path / "exp" / "results.parquet")["trial_id"]:
        lines = (tmp_path / "exp" / f"trial_{trial}" / "result.json").read_text().splitlines()
        results = [json.loads(line) for line in lines]
        assert {r["device"] for r in results} == {"cuda"}
        spans.append((results[0]["train_end"] - results[0]["epoch_seconds"],
                      results[-1]["train_end"]))
    (a0, a1), (b0, b1) = spans
    assert max(a0, b0) < min(a1, b1)  # the two trials overlapped in time


@cuda
@pytest.mark.gpu
def test_cpu_trials_leave_the_gpu_untouched(ray_gpu: Any, tmp_path: Path) -> None:
    from fer_ray.search.run import run_experiment

    run_experiment(SearchSettings(**{**SMOKE, "num_samples": 2, "gpus_per_trial": 0.0,
                                     "storage": str(tmp_path), "name": "exp"}))
    for trial in pd.read_parquet(tmp_path / "exp" / "results.parquet")["trial_id"]:
        lines = (tmp_path / "exp" / f"trial_{trial}" / "result.json").read_text().splitlines()
        for r in map(json.loads, lines):
            assert r["device"] == "cpu" and r["cuda_initialized"] is False


@cuda
@pytest.mark.gpu
def test_predict_on_cuda_gives_the_cpu_labels(fer2013_dir: Path) -> None:
    config = merge(get_preset("small"), {"epochs": 1, "data": {
        "path": str(fer2013_dir), "subsample": 4000}})
    data = load_data(config.data, seed=0)
    model = fit(config, data, "cpu").model
    ensemble = Ensemble([Member("m", config, model)], np.ones(1), tta="flip")
    test = np.load(fer2013_dir / "public_test.npz")["images"]
    on_cpu = ensemble.predict_proba(test)
    on_gpu = ensemble.to("cuda").predict_proba(test)
    assert (on_cpu.argmax(1) == on_gpu.argmax(1)).mean() >= 0.999


@pytest.fixture(scope="module")
def ray_gpu():  # type: ignore[no-untyped-def]
    """A local Ray with the machine's GPUs: the session-wide one when it runs already (it
    sees the GPUs too), else one of its own, shut down after this module's tests (so a later
    ``ray_local`` can start its own)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
