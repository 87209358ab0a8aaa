"""Build an ensemble from a finished experiment; every choice on validation, test reported once.

Candidates are the usable trials' kept checkpoints (``candidates.py``: best and latest epoch
of every completed, ASHA-stopped or deadline-stopped trial; never diverged, invalid or
errored). Variants compared on validation: the best single model, uniform soft voting over
the top k trials (never ones ASHA stopped at its first rung, unless too few others exist),
and Caruana's greedy selection over all candidates, each with every TTA mode (none, flip,
flip_shift; ``fer_ray.tta``); the mode is the one whose vote is most accurate. The
chosen variant then gets a temperature, per-class logit biases and a deferral threshold, all
fitted on validation. Only then are the test splits scored, for every variant, so the table
shows what the choices were worth (with a deadline, only the chosen ensemble when time is
short).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
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
from fer_ray.ensemble.candidates import Candidates, add_mode, load_candidates
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
from fer_ray.models.inference import predict_probas, predict_probas_by_mode
from fer_ray.tta import TTA_MODES, TTA_VIEWS, TtaMode, tta_mode

Method = Literal["uniform", "greedy"]
VARIANTS = ("best single", "uniform top-k", "greedy")
COST_IMAGES = 256  # validation faces the TTA modes' inference cost is measured on


@dataclass
class BuildResult:
    ensemble: Ensemble
    validation: dict[str, dict[str, float]]  # variant (+ TTA mode) -> metrics
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
    greedy = greedy_selection(cands.val_probas["none"], labels, ensemble_size=max(20, 2 * top_k),
                              metric="log_loss", seed=seed)
    return {"best single": single, "uniform top-k": uniform, "greedy": greedy}


def variant_name(variant: str, mode: str) -> str:
    """A row of the validation and test tables: the variant, and its TTA mode unless none."""
    return variant if mode == "none" else f"{variant} + {mode}"


def choose_tta(val_acc: dict[str, float]) -> TtaMode:
    """The TTA mode of ``val_acc`` (mode -> validation accuracy of the chosen vote) with the
    highest accuracy; a tie goes to the cheaper mode (fewer views per image)."""
    best = max(val_acc.values())
    return next(mode for mode in TTA_MODES if val_acc.get(mode) == best)


def build_ensemble(experiment: str | os.PathLike[str], top_k: int = 5, method: Method = "greedy",
                   tta: str | None = None, target_coverage: float = 0.9,
                   seed: int = 0, max_candidates: int = 20,
                   extra_test: str | None = None, deadline: float | None = None,
                   device: str = "auto") -> BuildResult:
    """Choose, calibrate and package an ensemble; score every variant on the test splits.

    tta: a TTA mode (``fer_ray.tta``: none, flip, flip_shift), or None / "auto": the mode
    whose vote is the most accurate on validation (``choose_tta``); ConfigError naming
    ``tta`` for anything else.
    deadline: epoch seconds by which to be done (a search's time budget): fewer candidates
    are loaded, and only the chosen ensemble is scored on the tests when time is short.
    device: where the candidates run (auto: a GPU when there is one); always fp32.
    """
    given = None if tta in (None, "auto") else tta_mode(tta, "tta")
    experiment = str(experiment)
    cands = load_candidates(experiment, max(max_candidates, top_k), extra_test, deadline,
                            device=device)
    return build_from_candidates(cands, top_k, method, given, target_coverage, seed,
                                 deadline, experiment)


def build_from_candidates(cands: Candidates, top_k: int = 5, method: Method = "greedy",
                          tta: TtaMode | None = None, target_coverage: float = 0.9,
                          seed: int = 0, deadline: float | None = None, experiment: str = ""
                          ) -> BuildResult:
    """``build_ensemble`` once the candidates are loaded; tta None: the TTA mode is chosen
    on validation (``choose_tta``) among every mode the deadline leaves time for."""
    labels = cands.data.val.labels
    assert labels is not None
    weights = variant_weights(cands, top_k, seed)
    chosen = "uniform top-k" if method == "uniform" else "greedy"
    if top_k == 1:
        chosen = "best single"
    w = weights[chosen]
    left_out = add_dear_modes(cands, weights, w, TTA_MODES if tta is None else (tta,),
                              deadline, forced=tta is not None)
    validation = {variant_name(name, mode): scores(soft_vote(probas, wv), labels)
                  for name, wv in weights.items() for mode, probas in cands.val_probas.items()
                  if cands.has(mode, wv)}
    val_acc: dict[str, float] = {mode: validation[variant_name(chosen, mode)]["acc"]
                                 for mode in TTA_MODES if cands.has(mode, w)}
    mode = choose_tta(val_acc) if tta is None else tta
    keep = np.flatnonzero(w > 0)
    val_probs = soft_vote(cands.val_probas[mode], w)

    temperature = fit_temperature(probs_to_logits(val_probs), labels)
    calibrated = temperature_scale(val_probs, temperature)
    biases = fit_class_biases(calibrated, labels, objective="macro_f1")
    threshold = threshold_for_coverage(calibrated, "max_prob", target_coverage)
    ensemble = Ensemble([cands.members[i] for i in keep], w[keep] / w[keep].sum(), tta=mode,
                        temperature=temperature, class_biases=biases, defer_kind="max_prob",
                        defer_threshold=threshold)
    final = {"variant": variant_name(chosen, mode), "validation":
             decision_report(val_probs, calibrated, labels, ensemble)}
    ensemble.info = {"experiment": str(experiment), "variant": final["variant"],
                     "candidates": len(cands.members),
                     "top_k": top_k, "method": method, "target_coverage": target_coverage,
                     "data_fingerprint": fingerprint(cands.data), "validation": validation,
                     "final_validation": final["validation"],
                     "tta": {**tta_cost(ensemble, cands.data.val.images, val_acc, tta is None),
                             "left_out": left_out}}

    ensemble.info["test"] = score_tests(cands, weights, w, mode, ensemble, deadline)
    return BuildResult(ensemble, validation, ensemble.info["test"], final)


def add_dear_modes(cands: Candidates, weights: dict[str, np.ndarray], chosen: np.ndarray,
                   modes: Sequence[TtaMode], deadline: float | None, forced: bool) -> list[str]:
    """Give the candidates the validation probabilities of the ``modes`` they lack (dearer
    than flip), for the candidates some variant uses; under a deadline for only the chosen
    vote's if that is what fits. Returns the modes left out: those for which not even the
    chosen vote (and then its test splits) fits before the deadline, unless ``forced``.
    """
    used = np.flatnonzero(np.any([wv > 0 for wv in weights.values()], axis=0))
    members = np.flatnonzero(chosen > 0)
    left_out: list[str] = []
    for mode in modes:
        if mode in cands.computed and cands.computed[mode].all():
            continue
        # Its validation pass now, and the chosen members' test pass with it later.
        fits = [which for which in (used, members) if deadline is None or time.time()
                + cands.seconds(len(which), len(cands.data.val), mode)
                + cands.seconds(len(members), cands.n_test, mode) < deadline]
        if fits or forced:
            add_mode(cands, mode, fits[0] if fits else members)
        else:
            left_out.append(mode)
    return left_out


def tta_cost(ensemble: Ensemble, images: np.ndarray, val_acc: dict[str, float],
             chosen_on_validation: bool) -> dict[str, Any]:
    """The TTA choice and what it costs: ``mode``, ``chosen_on`` ("validation" or "given"),
    ``val_acc`` (mode -> validation accuracy of the chosen vote, for each mode compared),
    ``views`` and ``ms_per_image`` (mode -> milliseconds per image of the whole ensemble's
    ``predict_probas`` with that mode, for each mode compared; measured on the first
    COST_IMAGES of ``images`` (N, 48, 48) uint8 on the members' device; ``timed``: how many,
    where)."""
    sample = images[:COST_IMAGES]
    models = [m.model for m in ensemble.members]
    ms_per_image = {}
    for mode in val_acc:
        started = time.perf_counter()
        predict_probas(models, sample, tta_mode(mode))
        ms_per_image[mode] = 1000 * (time.perf_counter() - started) / max(len(sample), 1)
    return {"mode": ensemble.tta, "chosen_on": "validation" if chosen_on_validation else "given",
            "val_acc": val_acc, "views": {mode: TTA_VIEWS[mode] for mode in val_acc},
            "ms_per_image": ms_per_image,
            "timed": {"images": len(sample),
                      "device": str(next(models[0].parameters()).device)}}


def score_tests(cands: Candidates, weights: dict[str, np.ndarray], chosen: np.ndarray,
                tta: TtaMode, ensemble: Ensemble, deadline: float | None
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Every variant with every TTA mode of validation, and the final ensemble, on each
    labelled test split.

    Only the candidates some variant uses are run, once with the dearest mode's views (which
    give every cheaper mode). When a deadline leaves no time for all of them, only the chosen
    ensemble's members are (with its mode), and the table holds just "final".
    """
    used = np.flatnonzero(np.any([wv > 0 for wv in weights.values()], axis=0))
    modes: Sequence[TtaMode] = [m for m in TTA_MODES if m in cands.val_probas]
    if deadline is not None and \
            time.time() + cands.seconds(len(used), cands.n_test, modes[-1]) > deadline:
        used, weights, modes = np.flatnonzero(chosen > 0), {}, [tta]
    test: dict[str, dict[str, dict[str, float]]] = {}
    for split_name, split in cands.data.tests.items():
        if split.labels is None:
            continue
        computed = predict_probas_by_mode([cands.members[i].model for i in used],
                                          split.images, modes)
        by_mode = {}
        for mode, probas in computed.items():  # unused candidates: zeros, weight 0
            by_mode[mode] = np.zeros((len(cands.members), len(split), probas.shape[2]),
                                     np.float32)
            by_mode[mode][used] = probas
        table = {variant_name(name, mode): scores(soft_vote(probas, wv), split.labels)
                 for name, wv in weights.items() for mode, probas in by_mode.items()}
        raw = soft_vote(by_mode[tta], chosen)
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
