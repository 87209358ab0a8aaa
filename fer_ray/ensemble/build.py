"""Build an ensemble from a finished experiment; every choice on validation, test reported once.

Candidates are the usable trials' kept checkpoints (``candidates.py``: best and latest epoch
of every completed, ASHA-stopped or deadline-stopped trial; never diverged, invalid or
errored). Variants compared on validation: the best single model, uniform soft voting over
the top k trials (never ones ASHA stopped at its first rung, unless too few others exist),
and Caruana's greedy selection over all candidates, each with and without flip TTA. The
chosen variant then gets a temperature, per-class logit biases and a deferral threshold, all
fitted on validation. Only then are the test splits scored, for every variant, so the table
shows what the choices were worth (with a deadline, only the chosen ensemble when time is
short).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fer_ray.data import fingerprint
from fer_ray.ensemble.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    probs_to_logits,
    temperature_scale,
)
from fer_ray.ensemble.candidates import Candidates, load_candidates
from fer_ray.ensemble.decision import (
    accuracy_coverage_curve,
    defer_mask,
    fit_class_biases,
    predict_with_biases,
    threshold_for_coverage,
)
from fer_ray.ensemble.model import Ensemble
from fer_ray.ensemble.selection import greedy_selection
from fer_ray.ensemble.voting import soft_vote
from fer_ray.metrics import accuracy, confusion_matrix, macro_f1, per_class_scores

Method = Literal["uniform", "greedy"]
VARIANTS = ("best single", "uniform top-k", "greedy")


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


def variant_weights(cands: Candidates, top_k: int, seed: int) -> dict[str, np.ndarray]:
    """Member weights (n_candidates,) of each variant, chosen on validation (no TTA)."""
    n = len(cands.members)
    labels = cands.data.val.labels
    assert labels is not None
    single = np.zeros(n)
    single[0] = 1.0
    # One checkpoint per trial (its best), best trials first, skipping trials ASHA stopped at
    # its first rung while enough others remain.
    trials = cands.rows["trial_id"].astype(str).tolist()
    firsts = [i for i in range(n) if trials.index(trials[i]) == i]
    ranked = [i for i in firsts if not cands.first_rung[i]]
    ranked += [i for i in firsts if cands.first_rung[i]]
    picked = ranked[:min(top_k, len(ranked))]
    uniform = np.zeros(n)
    uniform[picked] = 1.0 / len(picked)
    greedy = greedy_selection(cands.val_probas, labels, ensemble_size=max(20, 2 * top_k),
                              metric="log_loss", seed=seed)
    return {"best single": single, "uniform top-k": uniform, "greedy": greedy}


def build_ensemble(experiment: str | os.PathLike[str], top_k: int = 5, method: Method = "greedy",
                   tta: bool | None = None, target_coverage: float = 0.9,
                   seed: int = 0, max_candidates: int = 20,
                   extra_test: str | None = None, deadline: float | None = None,
                   device: str = "auto") -> BuildResult:
    """Choose, calibrate and package an ensemble; score every variant on the test splits.

    tta: None chooses on validation (accuracy) whether flip TTA helps.
    deadline: epoch seconds by which to be done (a search's time budget): fewer candidates
    are loaded, and only the chosen ensemble is scored on the tests when time is short.
    device: where the candidates run (auto: a GPU when there is one); always fp32.
    """
    experiment = str(experiment)
    cands = load_candidates(experiment, max(max_candidates, top_k), extra_test, deadline,
                            device=device)
    labels = cands.data.val.labels
    assert labels is not None
    weights = variant_weights(cands, top_k, seed)
    validation = {}
    for name, w in weights.items():
        validation[name] = scores(soft_vote(cands.val_probas, w), labels)
        validation[f"{name} + TTA"] = scores(soft_vote(cands.val_probas_tta, w), labels)
    chosen = "uniform top-k" if method == "uniform" else "greedy"
    if top_k == 1:
        chosen = "best single"
    if tta is None:
        tta = validation[f"{chosen} + TTA"]["acc"] > validation[chosen]["acc"]
    w = weights[chosen]
    keep = np.flatnonzero(w > 0)
    val_probs = soft_vote(cands.val_probas_tta if tta else cands.val_probas, w)

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
                     "candidates": len(cands.members),
                     "top_k": top_k, "method": method, "target_coverage": target_coverage,
                     "data_fingerprint": fingerprint(cands.data), "validation": validation,
                     "final_validation": final["validation"]}

    ensemble.info["test"] = score_tests(cands, weights, w, tta, ensemble, deadline)
    return BuildResult(ensemble, validation, ensemble.info["test"], final)


def score_tests(cands: Candidates, weights: dict[str, np.ndarray], chosen: np.ndarray,
                tta: bool, ensemble: Ensemble, deadline: float | None
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Every variant (± TTA) and the final ensemble on each labelled test split.

    Only the candidates some variant uses are run. When a deadline leaves no time for all of
    them, only the chosen ensemble's members are, and the table holds just "final".
    """
    used = np.flatnonzero(np.any([wv > 0 for wv in weights.values()], axis=0))
    if deadline is not None and \
            time.time() + cands.seconds_per_member_test * len(used) > deadline:
        used, weights = np.flatnonzero(chosen > 0), {}
    test: dict[str, dict[str, dict[str, float]]] = {}
    for split_name, split in cands.data.tests.items():
        if split.labels is None:
            continue
        pool = Ensemble([cands.members[i] for i in used], np.ones(len(used)) / len(used))
        plain = np.zeros((len(cands.members), len(split), cands.val_probas.shape[2]),
                         np.float32)
        flipped = plain.copy()
        plain[used] = pool.member_probas(split.images)
        pool.tta = True
        flipped[used] = pool.member_probas(split.images)
        table = {}
        for name, wv in weights.items():
            table[name] = scores(soft_vote(plain, wv), split.labels)
            table[f"{name} + TTA"] = scores(soft_vote(flipped, wv), split.labels)
        raw = soft_vote(flipped if tta else plain, chosen)
        table["final"] = decision_report(raw, temperature_scale(raw, ensemble.temperature),
                                         split.labels, ensemble)
        test[split_name] = table
    return test


def decision_report(raw: np.ndarray, calibrated: np.ndarray, labels: np.ndarray,
                    ensemble: Ensemble) -> dict[str, Any]:
    """Calibration (NLL/ECE before and after T), argmax vs adjusted rule, deferral figures."""
    adjusted = predict_with_biases(calibrated, ensemble.class_biases)
    argmax = calibrated.argmax(1)
    k = calibrated.shape[1]
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
        "recall_argmax": per_class_scores(confusion_matrix(labels, argmax, k))["recall"].tolist(),
        "recall_adjusted": per_class_scores(confusion_matrix(labels, adjusted, k)
                                            )["recall"].tolist(),
        "coverage": float(kept.mean()),
        "acc_on_kept": accuracy(labels[kept], argmax[kept]) if kept.any() else 0.0,
        "curve_coverage": curve["coverage"][:: max(1, len(curve["coverage"]) // 50)].tolist(),
        "curve_accuracy": curve["accuracy"][:: max(1, len(curve["accuracy"]) // 50)].tolist(),
    }
