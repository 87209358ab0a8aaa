"""Ensembles built from a real smoke experiment: choices on validation, save/load, safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fer_ray.ensemble.build import build_ensemble
from fer_ray.ensemble.cli import main
from fer_ray.ensemble.model import Ensemble
from fer_ray.errors import DataError
from fer_ray.experiment import SearchSettings, load_search_data
from fer_ray.metrics import accuracy, log_loss

Experiment = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def built(smoke_experiment: Experiment, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Any, Path]:
    result = build_ensemble(smoke_experiment[0], top_k=3, method="greedy", tta=False)
    out = tmp_path_factory.mktemp("ens") / "ensemble"
    result.ensemble.save(out)
    return result, out


def test_variants_are_chosen_on_validation(smoke_experiment: Experiment, built: Any) -> None:
    result, _ = built
    df = pd.read_parquet(smoke_experiment[0] / "results.parquet")
    assert result.validation["best single"]["acc"] == pytest.approx(df.iloc[0]["val_acc"])
    # Greedy selection optimises validation log-loss and may pick the best model alone.
    assert result.validation["greedy"]["nll"] <= result.validation["best single"]["nll"] + 1e-9
    assert set(result.validation) == {f"{v}{t}" for v in ("best single", "uniform top-k",
                                                          "greedy") for t in ("", " + TTA")}
    e = result.ensemble
    assert e.weights.sum() == pytest.approx(1.0) and len(e.weights) == len(e.members)
    assert e.temperature > 0 and e.class_biases.shape == (7,)
    final = result.final["validation"]
    assert final["nll_after"] <= final["nll_before"] + 1e-9  # temperature fitted on it
    assert final["adjusted_macro_f1"] >= final["macro_f1"] - 1e-9


def test_saved_ensemble_reloads_without_the_experiment(built: Any, tmp_path: Path) -> None:
    result, out = built
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # self-contained: no path back to the experiment is needed
    record = json.loads((moved / "ensemble.json").read_text())
    assert len(record["members"]) == len(result.ensemble.members)
    assert record["info"]["data_fingerprint"] and "config" in record["members"][0]
    loaded = Ensemble.load(moved)
    images = np.random.default_rng(0).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict_proba(images),
                               result.ensemble.predict_proba(images), atol=1e-6)


def test_ensemble_reproduces_its_validation_accuracy(smoke_experiment: Experiment,
                                                     built: Any) -> None:
    result, out = built
    record = json.loads((smoke_experiment[0] / "search.json").read_text())
    settings = SearchSettings(**record["settings"])
    data = load_search_data(settings)
    assert data.val.labels is not None
    probs = Ensemble.load(out).predict_proba(data.val.images)
    assert accuracy(data.val.labels, probs.argmax(1)) == pytest.approx(
        result.final["validation"]["acc"])
    assert log_loss(data.val.labels, probs) == pytest.approx(
        result.final["validation"]["nll_after"], rel=1e-4)


def test_top_k_1_is_the_best_single_model(smoke_experiment: Experiment, tmp_path: Path) -> None:
    assert main(["--experiment", str(smoke_experiment[0]), "--top-k", "1", "--no-tta",
                 "--out", str(tmp_path / "one")]) == 0
    ensemble = Ensemble.load(tmp_path / "one")
    df = pd.read_parquet(smoke_experiment[0] / "results.parquet")
    assert [m.name for m in ensemble.members] == [df.iloc[0]["trial_id"]]


def test_planted_pickle_in_an_ensemble_executes_nothing(built: Any, tmp_path: Path) -> None:
    _, out = built
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    member = next((planted / "members").glob("*.safetensors"))
    torch.save({"weight": Payload()}, member)
    with pytest.raises(DataError, match="cannot load weights"):
        Ensemble.load(planted)
    assert not marker.exists()


def test_missing_member_file_is_named(built: Any, tmp_path: Path) -> None:
    _, out = built
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    member = next((broken / "members").glob("*.safetensors"))
    member.unlink()
    with pytest.raises(DataError, match=f"{member.name}: missing weights file"):
        Ensemble.load(broken)
    with pytest.raises(DataError, match="not an ensemble folder"):
        Ensemble.load(tmp_path)


def test_the_test_split_changes_no_choice_only_the_reported_figures(
        smoke_experiment: Experiment, tmp_path: Path) -> None:
    """Every choice (members, weights, TTA, temperature, biases, deferral) is made on
    validation: relabelling the test split changes the test figures and nothing else."""
    from fer_ray.data.synthetic import make_synthetic

    split = make_synthetic(300, seed=321)
    assert split.labels is not None
    right, wrong = tmp_path / "right.npz", tmp_path / "wrong.npz"
    np.savez(right, images=split.images, labels=split.labels)
    np.savez(wrong, images=split.images, labels=(split.labels + 1) % 7)
    results = [build_ensemble(smoke_experiment[0], top_k=3, extra_test=str(path))
               for path in (right, wrong)]
    first, second = (r.ensemble for r in results)
    assert [m.name for m in first.members] == [m.name for m in second.members]
    assert np.array_equal(first.weights, second.weights)
    assert (first.tta, first.temperature, first.defer_threshold) == \
        (second.tta, second.temperature, second.defer_threshold)
    assert np.array_equal(first.class_biases, second.class_biases)
    assert results[0].test["test"]["final"]["acc"] != results[1].test["test"]["final"]["acc"]
