"""Build an ensemble from a finished experiment; every choice on validation, test reported once.

Candidates are the experiment's usable trials (completed or stopped early by ASHA; never
diverged, invalid or errored), each at its best checkpoint. Variants compared on validation:
the best single model, uniform soft voting over the top k, and Caruana's greedy selection over
all candidates, each with and without flip TTA. The chosen variant then gets a temperature,
per-class logit biases and a deferral threshold, all fitted on validation. Only then are the
test splits scored, for every variant, so the table shows what the choices were worth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from fer_ray import storage
from fer_ray.data import FerData, fingerprint
from fer_ray.ensemble.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    probs_to_logits,
    temperature_scale,
)
from fer_ray.ensemble.decision import (
    accuracy_coverage_curve,
    defer_mask,
    fit_class_biases,
    predict_with_biases,
    threshold_for_coverage,
)
from fer_ray.ensemble.model import Ensemble, Member
from fer_ray.ensemble.selection import greedy_selection
from fer_ray.errors import DataError
from fer_ray.metrics import accuracy, confusion_matrix, macro_f1, per_class_scores
from fer_ray.models.io import load_model
from fer_ray.search.results import USABLE
from fer_ray.search.settings import (
    SearchSettings,
    load_search_data,
    read_results,
    read_search_json,
    settings_from_record,
)

Method = Literal["uniform", "greedy"]
VARIANTS = ("best single", "uniform top-k", "greedy")


@dataclass
class Candidates:
    """Usable trials, best first, with their models and validation probabilities.

    val_probas: (n_candidates, N_val, 7) without TTA; val_probas_tta: with TTA.
    """

    rows: pd.DataFrame
    members: list[Member]
    data: FerData
    val_probas: np.ndarray
    val_probas_tta: np.ndarray


@dataclass
class BuildResult:
    ensemble: Ensemble
    validation: dict[str, dict[str, float]]  # variant (± TTA) -> metrics
    test: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # split -> ...
    final: dict[str, Any] = field(default_factory=dict)  # calibration / decision / deferral


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds = probs.argmax(1)
    return {"acc": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds),
            "nll": nll(probs, labels)}


def load_candidates(experiment: str, max_candidates: int = 20,
                    extra_test: str | None = None) -> Candidates:
    """The experiment's usable trials (at most ``max_candidates``, best first) and its data."""
    record = read_search_json(experiment)
    settings = settings_from_record(record, experiment)
    df = read_results(experiment)
    rows = df[df["status"].isin(USABLE) & (df["best_checkpoint"] != "")]
    rows = rows.sort_values(settings.metric, ascending=settings.mode != "max", kind="stable")
    rows = rows.head(max_candidates).reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{experiment}: no trial finished an epoch, so there is nothing to "
                        "ensemble")
    if extra_test:
        settings = SearchSettings(**{**settings.to_dict(), "test": extra_test})
    data = load_search_data(settings)
    if fingerprint(data) != record.get("data", {}).get("fingerprint"):
        raise DataError(f"{experiment}: the data no longer matches the experiment's fingerprint")
    assert data.val.labels is not None
    members, probas, probas_tta = [], [], []
    for _, row in rows.iterrows():
        ckpt = storage.fetch_dir(str(row["best_checkpoint"]))
        model, config = load_model(ckpt)
        member = Member(str(row["trial_id"]), config, model,
                        {"trial_id": str(row["trial_id"]), "val_acc": float(row["val_acc"]),
                         "best_epoch": int(row["best_epoch"]), "checkpoint": str(ckpt)})
        stored = np.load(ckpt / "val_probs.npy")
        if not np.array_equal(np.load(ckpt / "val_labels.npy"), data.val.labels):
            raise DataError(f"{ckpt}: validation labels differ from the experiment's split")
        single = Ensemble([member], np.ones(1), tta=True)
        members.append(member)
        probas.append(stored)
        probas_tta.append(single.member_probas(data.val.images)[0])
    return Candidates(rows, members, data, np.stack(probas), np.stack(probas_tta))


def variant_weights(cands: Candidates, top_k: int, seed: int) -> dict[str, np.ndarray]:
    """Member weights (n_candidates,) of each variant, chosen on validation (no TTA)."""
    n = len(cands.members)
    labels = cands.data.val.labels
    assert labels is not None
    single = np.zeros(n)
    single[0] = 1.0
    uniform = np.zeros(n)
    uniform[:min(top_k, n)] = 1.0 / min(top_k, n)
    greedy = greedy_selection(cands.val_probas, labels, ensemble_size=max(20, 2 * top_k),
                              metric="log_loss", seed=seed)
    return {"best single": single, "uniform top-k": uniform, "greedy": greedy}


def _combine(probas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, probas, axes=1)


def build_ensemble(experiment: str | os.PathLike[str], top_k: int = 5, method: Method = "greedy",
                   tta: bool | None = None, target_coverage: float = 0.9,
                   seed: int = 0, max_candidates: int = 20,
                   extra_test: str | None = None) -> BuildResult:
    """Choose, calibrate and package an ensemble; score every variant on the test splits.

    tta: None chooses on validation (accuracy) whether flip TTA helps.
    """
    experiment = str(experiment)
    cands = load_candidates(experiment, max(max_candidates, top_k), extra_test)
    labels = cands.data.val.labels
    assert labels is not None
    weights = variant_weights(cands, top_k, seed)
    validation = {}
    for name, w in weights.items():
        validation[name] = scores(_combine(cands.val_probas, w), labels)
        validation[f"{name} + TTA"] = scores(_combine(cands.val_probas_tta, w), labels)
    chosen = "uniform top-k" if method == "uniform" else "greedy"
    if top_k == 1:
        chosen = "best single"
    if tta is None:
        tta = validation[f"{chosen} + TTA"]["acc"] > validation[chosen]["acc"]
    w = weights[chosen]
    keep = np.flatnonzero(w > 0)
    val_probs = _combine(cands.val_probas_tta if tta else cands.val_probas, w)

    temperature = fit_temperature(probs_to_logits(val_probs), labels)
    calibrated = temperature_scale(val_probs, temperature)
    biases = fit_class_biases(calibrated, labels, objective="macro_f1")
    threshold = threshold_for_coverage(calibrated, "max_prob", target_coverage)
    ensemble = Ensemble([cands.members[i] for i in keep], w[keep] / w[keep].sum(), tta=tta,
                        temperature=temperature, class_biases=biases, defer_kind="max_prob",
                        defer_threshold=threshold)
    final = {"variant": chosen + (" + TTA" if tta else ""), "validation":
             decision_report(val_probs, calibrated, labels, ensemble)}
    ensemble.info = {"experiment": str(experiment), "variant": final["variant"],
                     "top_k": top_k, "method": method, "target_coverage": target_coverage,
                     "data_fingerprint": fingerprint(cands.data), "validation": validation,
                     "final_validation": final["validation"]}

    test: dict[str, dict[str, dict[str, float]]] = {}
    for split_name, split in cands.data.tests.items():
        if split.labels is None:
            continue
        pool = Ensemble(cands.members, np.ones(len(cands.members)) / len(cands.members))
        plain = pool.member_probas(split.images)
        pool.tta = True
        flipped = pool.member_probas(split.images)
        table = {}
        for name, wv in weights.items():
            table[name] = scores(_combine(plain, wv), split.labels)
            table[f"{name} + TTA"] = scores(_combine(flipped, wv), split.labels)
        raw = _combine(flipped if tta else plain, w)
        table["final"] = decision_report(raw, temperature_scale(raw, temperature), split.labels,
                                         ensemble)
        test[split_name] = table
    ensemble.info["test"] = test
    return BuildResult(ensemble, validation, test, final)


def decision_report(raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray,
                    ensemble: Ensemble) -> dict[str, Any]:
    """Calibration (NLL/ECE before and after T), argmax vs adjusted rule, deferral figures."""
    adjusted = predict_with_biases(calibrated, ensemble.class_biases)
    argmax = calibrated.argmax(1)
    deferred = defer_mask(calibrated, ensemble.defer_threshold or 0.0, "max_prob")
    kept = ~deferred
    curve = accuracy_coverage_curve(calibrated, labels, "max_prob")
    return {
        "acc": accuracy(labels, argmax), "macro_f1": macro_f1(labels, argmax),
        "nll_before": nll(raw, labels), "nll_after": nll(calibrated, labels),
        "ece_before": expected_calibration_error(raw, labels),
        "ece_after": expected_calibration_error(calibrated, labels),
        "adjusted_acc": accuracy(labels, adjusted),
        "adjusted_macro_f1": macro_f1(labels, adjusted),
        "recall_argmax": per_class_scores(confusion_matrix(labels, argmax))["recall"].tolist(),
        "recall_adjusted": per_class_scores(confusion_matrix(labels, adjusted))["recall"].tolist(),
        "coverage": float(kept.mean()),
        "acc_on_kept": accuracy(labels[kept], argmax[kept]) if kept.any() else 0.0,
        "curve_coverage": curve["coverage"][:: max(1, len(curve["coverage"]) // 50)].tolist(),
        "curve_accuracy": curve["accuracy"][:: max(1, len(curve["accuracy"]) // 50)].tolist(),
    }
