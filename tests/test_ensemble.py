"""Ensembles built from a real smoke experiment (and, without Ray, from constructed candidates):
choices on validation (the TTA mode too), save/load, safety."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from support.cli import save_tiny_ensemble

from fer_ray.config import TrainConfig
from fer_ray.data import FerData
from fer_ray.ensemble.build import (
    VARIANTS,
    add_dear_modes,
    build_ensemble,
    build_from_candidates,
    choose_tta,
    variant_name,
)
from fer_ray.ensemble.candidates import Candidates
from fer_ray.ensemble.cli import format_tta, main
from fer_ray.ensemble.model import Ensemble, Member
from fer_ray.ensemble.record import parse_record
from fer_ray.errors import ConfigError, DataError
from fer_ray.experiment import SearchSettings, load_search_data
from fer_ray.metrics import accuracy, log_loss
from fer_ray.models import MODEL_PRESETS, create_model
from fer_ray.models.inference import predict_probas
from fer_ray.tta import TTA_MODES

Experiment = tuple[Path, dict[str, Any]]


@pytest.fixture(scope="module")
def built(smoke_experiment: Experiment, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Any, Path]:
    result = build_ensemble(smoke_experiment[0], top_k=3, method="greedy", tta="none")
    out = tmp_path_factory.mktemp("ens") / "ensemble"
    result.ensemble.save(out)
    return result, out


def test_variants_are_chosen_on_validation(smoke_experiment: Experiment, built: Any) -> None:
    result, _ = built
    df = pd.read_parquet(smoke_experiment[0] / "results.parquet")
    assert result.validation["best single"]["acc"] == pytest.approx(df.iloc[0]["val_acc"])
    # Greedy selection optimises validation log-loss and may pick the best model alone.
    assert result.validation["greedy"]["nll"] <= result.validation["best single"]["nll"] + 1e-9
    # --tta none: flip (which every candidate brings) is reported too; flip_shift is not run.
    assert set(result.validation) == {variant_name(v, m) for v in VARIANTS
                                      for m in ("none", "flip")}
    assert result.ensemble.tta == "none" and result.ensemble.info["tta"]["chosen_on"] == "given"
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


def test_top_k_1_is_the_best_single_model(smoke_experiment: Experiment, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", str(smoke_experiment[0]), "--top-k", "1", "--no-tta",
                 "--out", str(tmp_path / "one")]) == 0
    assert "\nTTA: none given by --tta (val acc " in capsys.readouterr().out
    ensemble = Ensemble.load(tmp_path / "one")
    assert ensemble.tta == "none"
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
    # tta auto: every variant with every mode, on validation and on the test split.
    assert set(results[0].validation) == {variant_name(v, m) for v in VARIANTS
                                          for m in TTA_MODES}
    assert set(results[0].test["test"]) == {*results[0].validation, "final"}
    assert first.info["tta"]["chosen_on"] == "validation"
    assert first.tta == choose_tta(first.info["tta"]["val_acc"])


def probas_with_accuracy(labels: np.ndarray, acc: float) -> np.ndarray:
    """(N, 7) confident probabilities right on the first round(acc * N) faces, wrong after."""
    n_right = round(acc * len(labels))
    guess = np.where(np.arange(len(labels)) < n_right, labels, (labels + 1) % 7)
    probas = np.full((len(labels), 7), 0.05)
    probas[np.arange(len(labels)), guess] = 0.7
    return probas


def tiny_candidates(data: FerData, accs: dict[str, float], members: int = 2) -> Candidates:
    """Real random-weight candidates whose validation probabilities have, per TTA mode, the
    accuracy ``accs[mode]`` (all the same, so every vote has that accuracy)."""
    assert data.val.labels is not None
    config = TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"])
    names = "abcdefgh"[:members]
    nets = [Member(name, config, create_model("vgg_fer_tiny").eval()) for name in names]
    val_probas = {mode: np.stack([probas_with_accuracy(data.val.labels, acc)] * members)
                  for mode, acc in accs.items()}
    return Candidates(pd.DataFrame({"trial_id": list(names)}), nets, data, val_probas,
                      np.zeros(members, dtype=bool))


@pytest.mark.parametrize(("accs", "best"), [
    ((0.6, 0.7, 0.8), "flip_shift"),
    ((0.6, 0.8, 0.7), "flip"),
    ((0.6, 0.7, 0.7), "flip"),  # a tie goes to the cheaper mode
    ((0.8, 0.7, 0.8), "none"),
], ids=["shift-best", "flip-best", "tie", "tta-hurts"])
def test_the_tta_mode_is_the_one_most_accurate_on_validation(
        accs: tuple[float, float, float], best: str, small_data: FerData, tmp_path: Path
        ) -> None:
    cands = tiny_candidates(small_data, dict(zip(TTA_MODES, accs, strict=True)))
    result = build_from_candidates(cands, top_k=2, method="greedy")
    e = result.ensemble
    assert e.tta == best and result.final["variant"] == variant_name("greedy", best)
    tta = e.info["tta"]
    assert tta["mode"] == best and tta["chosen_on"] == "validation"
    assert tta["val_acc"] == pytest.approx(dict(zip(TTA_MODES, accs, strict=True)), abs=0.004)
    assert tta["views"] == {"none": 1, "flip": 2, "flip_shift": 10}
    assert set(tta["ms_per_image"]) == set(TTA_MODES) and min(tta["ms_per_image"].values()) > 0
    assert tta["timed"] == {"images": len(small_data.val), "device": "cpu"}
    assert tta["left_out"] == []
    # The mode travels: written as its name, read back, used by predict_proba.
    e.save(tmp_path / "ens")
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["tta"] == best
    loaded = Ensemble.load(tmp_path / "ens")
    assert loaded.tta == best and loaded.info["tta"] == json.loads(json.dumps(tta))
    images = small_data.val.images[:32]
    by_hand = predict_probas([m.model for m in e.members], images, best)
    np.testing.assert_allclose(loaded.predict_proba(images),
                               e.combine(by_hand), atol=1e-6)


def test_a_tta_mode_given_is_used_whatever_validation_says(small_data: FerData) -> None:
    cands = tiny_candidates(small_data, {"none": 0.8, "flip_shift": 0.6})
    result = build_from_candidates(cands, top_k=2, tta="flip_shift")
    assert result.ensemble.tta == "flip_shift"
    assert set(result.validation) == {variant_name(v, m) for v in VARIANTS
                                      for m in ("none", "flip_shift")}
    assert result.ensemble.info["tta"]["chosen_on"] == "given"
    assert set(result.ensemble.info["tta"]["ms_per_image"]) == {"none", "flip_shift"}
    with pytest.raises(ConfigError, match="^tta: 'mirror' is not a TTA mode"):
        build_ensemble("never-read", tta="mirror")  # refused before anything is loaded


def test_dear_modes_are_computed_for_the_candidates_used_as_the_deadline_allows(
        small_data: FerData) -> None:
    """flip_shift's validation pass runs for the candidates some variant uses; under a
    deadline for only the chosen vote's, or, when not even that fits, for none (left out)."""
    weights = {"chosen": np.array([1.0, 0, 0]), "other": np.array([0.5, 0.5, 0])}
    n_val = len(small_data.val)

    def lacking(seconds_per_view: float) -> Candidates:
        cands = tiny_candidates(small_data, {"none": 0.6, "flip": 0.7}, members=3)
        cands.seconds_per_view = seconds_per_view
        return cands

    cands = lacking(0.0)
    assert add_dear_modes(cands, weights, weights["chosen"], TTA_MODES, None, False) == []
    assert cands.computed["flip_shift"].tolist() == [True, True, False]
    expected = predict_probas([m.model for m in cands.members[:2]], small_data.val.images,
                              "flip_shift")
    np.testing.assert_allclose(cands.val_probas["flip_shift"][:2], expected, atol=1e-6)
    assert not cands.val_probas["flip_shift"][2].any()
    assert cands.has("flip_shift", weights["other"]) and cands.val_probas["flip"][2].any()
    # 10 views x 1 ms per view: 1.5 s per candidate on validation (no test splits here).
    assert n_val == 150 and lacking(1e-3).n_test == 0
    cands = lacking(1e-3)
    assert add_dear_modes(cands, weights, weights["chosen"], TTA_MODES, time.time() + 2.5,
                          False) == []
    assert cands.computed["flip_shift"].tolist() == [True, False, False]
    assert cands.has("flip_shift", weights["chosen"])
    assert not cands.has("flip_shift", weights["other"])
    cands = lacking(1e-3)
    assert add_dear_modes(cands, weights, weights["chosen"], TTA_MODES, time.time() + 1.0,
                          False) == ["flip_shift"]
    assert "flip_shift" not in cands.val_probas
    cands = lacking(1e-3)  # a mode given (--tta flip_shift) is computed however late
    assert add_dear_modes(cands, weights, weights["chosen"], ["flip_shift"],
                          time.time() + 1.0, True) == []
    assert cands.computed["flip_shift"].tolist() == [True, False, False]


@pytest.mark.parametrize(("stored", "mode"), [(True, "flip"), (False, "none"),
                                              ("flip_shift", "flip_shift")])
def test_ensemble_files_from_before_tta_modes_still_load(
        stored: Any, mode: str, tmp_path: Path) -> None:
    folder = save_tiny_ensemble(tmp_path / "ens")
    record = json.loads((folder / "ensemble.json").read_text())
    assert record["tta"] == "none"  # new files write the mode's name
    record["tta"] = stored
    (folder / "ensemble.json").write_text(json.dumps(record))
    assert Ensemble.load(folder).tta == mode
    assert parse_record(record, folder).tta == mode


def test_an_unknown_tta_mode_is_refused_naming_tta(tmp_path: Path) -> None:
    folder = save_tiny_ensemble(tmp_path / "ens")
    record = json.loads((folder / "ensemble.json").read_text())
    for bad in ("sideways", 1, None):
        record["tta"] = bad
        with pytest.raises(ConfigError, match=f"^tta: {bad!r} is not a TTA mode"):
            parse_record(record, folder)
    (folder / "ensemble.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"not a valid ensemble \(tta: None is not a TTA mode"):
        Ensemble.load(folder)


def test_the_tta_line_names_the_mode_its_accuracy_and_its_cost() -> None:
    tta = {"mode": "flip_shift", "chosen_on": "validation",
           "val_acc": {"none": 0.679, "flip": 0.6842, "flip_shift": 0.6871},
           "views": {"none": 1, "flip": 2, "flip_shift": 10},
           "ms_per_image": {"none": 0.31, "flip": 0.62, "flip_shift": 3.1},
           "timed": {"images": 256, "device": "cpu"}}
    assert format_tta(tta) == (
        "TTA: flip_shift chosen on validation (val acc 0.6871 vs flip 0.6842, none 0.6790); "
        "10 view(s), 3.10 ms/image vs 0.31 without\n"
        "  ensemble ms/image by mode: none 0.31, flip 0.62, flip_shift 3.10 (on cpu, 256 "
        "validation faces)")
    late = {**tta, "mode": "flip", "val_acc": {"none": 0.679, "flip": 0.6842},
            "ms_per_image": {"none": 0.31, "flip": 0.62}, "left_out": ["flip_shift"]}
    assert format_tta(late).startswith(
        "TTA: flip chosen on validation (val acc 0.6842 vs none 0.6790); flip_shift not "
        "compared (no time left before the deadline); 2 view(s), 0.62 ms/image vs 0.31 "
        "without\n  ensemble ms/image by mode: none 0.31, flip 0.62 (on cpu")


def test_the_tta_flag_takes_a_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--experiment", "x", "--tta", "mirror"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --tta: invalid choice: 'mirror'") and \
        err.count("\n") == 1


class _TickingClock:
    """A stand-in for the ``time`` module: every ``time()`` call is one second later."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        self.now += 1.0
        return self.now - 1.0


def test_the_test_scoring_reserve_counts_only_the_candidates_there_are(
        smoke_experiment: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a candidate takes 1 s on the clock; scoring one on a test split as large as
    validation, 1 s too. With 3 candidates and the deadline 8 s away, the second fits (the
    test splits then score at most 3 members: 2 + 1 * 4 = 6 < 8); a reserve for 8 members
    (2 + 1 * 9) left a 10-minute search's second member out."""
    import fer_ray.ensemble.candidates as candidates_module

    record = json.loads((smoke_experiment[0] / "search.json").read_text())
    val = load_search_data(SearchSettings(**record["settings"])).val
    assert val.labels is not None
    test_file = tmp_path / "test.npz"
    np.savez(test_file, images=np.asarray(val.images), labels=np.asarray(val.labels))
    monkeypatch.setattr(candidates_module, "time", _TickingClock())
    cands = candidates_module.load_candidates(str(smoke_experiment[0]), max_candidates=3,
                                              extra_test=str(test_file), deadline=8.0)
    assert len(cands.members) == 2
