"""The models an ensemble is chosen from: every usable trial's kept checkpoints.

A trial keeps its best epoch's checkpoint and its latest one; both are candidates (the best
first), so greedy selection can pick either. Each candidate brings its stored validation
probabilities and, computed here in fp32, those with flip TTA; dearer TTA modes (flip_shift:
5x flip's views) are computed later, by ``add_mode``, for only the few candidates some variant
uses. With a deadline, candidates are added best first while the time they cost still leaves
room for scoring the test splits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fer_ray import storage
from fer_ray.data import FerData, fingerprint
from fer_ray.ensemble.model import Member
from fer_ray.errors import DataError
from fer_ray.experiment import (
    USABLE,
    SearchSettings,
    TrialStatus,
    checkpoint_location,
    load_search_data,
    read_results,
    read_search_json,
    settings_from_record,
)
from fer_ray.models.inference import predict_probas, resolve_device
from fer_ray.models.io import VAL_LABELS, VAL_PROBS, load_model
from fer_ray.tta import TTA_VIEWS, TtaMode


@dataclass
class Candidates:
    """Candidate checkpoints, best first, with their models and validation probabilities.

    val_probas: TTA mode -> (n_candidates, N_val, C): "none" the stored probabilities, the
    other modes (``fer_ray.tta``) computed here. computed: mode -> (n_candidates,) bool, the
    candidates ``val_probas[mode]`` holds (zeros for the others); default: all of them.
    first_rung: per candidate, whether ASHA stopped its trial at the first rung (such
    trials saw too few epochs to be averaged in uniformly).
    seconds_per_view: measured fp32 seconds of one candidate on one image for one view
    (loading included): what the deadline's estimates are made of.
    """

    rows: pd.DataFrame
    members: list[Member]
    data: FerData
    val_probas: dict[str, np.ndarray]
    first_rung: np.ndarray
    seconds_per_view: float = 0.0
    computed: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mode in self.val_probas:
            self.computed.setdefault(mode, np.ones(len(self.members), dtype=bool))

    @property
    def n_test(self) -> int:
        """Faces in all labelled test splits."""
        return sum(len(s) for s in self.data.tests.values() if s.labels is not None)

    def seconds(self, n_members: int, n_images: int, mode: str) -> float:
        """Estimated seconds to run ``n_members`` candidates with ``mode`` on n_images."""
        return self.seconds_per_view * n_members * n_images * TTA_VIEWS[mode]

    def has(self, mode: str, weights: np.ndarray) -> bool:
        """Whether ``val_probas[mode]`` holds every candidate of ``weights`` (n_candidates,)
        with a weight > 0."""
        return mode in self.computed and bool(self.computed[mode][weights > 0].all())


def add_mode(cands: Candidates, mode: TtaMode, which: np.ndarray) -> None:
    """Compute the validation probabilities with ``mode`` of the candidates ``which``
    (indices) that lack them, into ``cands.val_probas[mode]``."""
    probas = cands.val_probas.setdefault(mode, np.zeros_like(cands.val_probas["none"]))
    done = cands.computed.setdefault(mode, np.zeros(len(cands.members), dtype=bool))
    todo = [int(i) for i in which if not done[i]]
    if todo:
        probas[todo] = predict_probas([cands.members[i].model for i in todo],
                                      cands.data.val.images, mode)
        done[todo] = True


def _checkpoint_list(rows: pd.DataFrame, metric: str, mode: str) -> list[dict[str, Any]]:
    """Every kept checkpoint of the rows' trials: trials' best ones first, then the rest,
    each group ordered by the metric."""
    best: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for _, row in rows.iterrows():
        kept = json.loads(row["checkpoints_json"]) if "checkpoints_json" in row \
            and isinstance(row["checkpoints_json"], str) else []
        kept = kept or [{"path": row["best_checkpoint"], "epoch": int(row["best_epoch"]),
                         metric: float(row[metric])}]
        for i, ckpt in enumerate(kept):
            entry = {**ckpt, "trial_id": str(row["trial_id"]), "row": row, "is_best": i == 0}
            (best if i == 0 else rest).append(entry)
    for group in (best, rest):
        group.sort(key=lambda c: c[metric], reverse=mode == "max")
    return best + rest


def _usable_rows(experiment: str, settings: SearchSettings) -> pd.DataFrame:
    df = read_results(experiment)
    rows = df[df["status"].isin(USABLE) & (df["best_checkpoint"] != "")]
    rows = rows.sort_values(settings.metric, ascending=settings.mode != "max", kind="stable")
    if rows.empty:
        raise DataError(f"{experiment}: no trial finished an epoch, so there is nothing to "
                        "ensemble")
    return rows.reset_index(drop=True)


def load_candidates(experiment: str, max_candidates: int = 20, extra_test: str | None = None,
                    deadline: float | None = None, test_members: int = 8,
                    device: str = "auto") -> Candidates:
    """The experiment's candidate checkpoints (at most ``max_candidates``, best first, none
    that ``duplicates_another`` one before it), their models on ``device`` (auto: a GPU when
    there is one), and their validation probabilities without TTA (stored) and with flip TTA.

    deadline: epoch seconds by which the ensemble must be built: candidates stop being
    added when one more would leave too little time to score ``test_members`` models (or as
    many as there are candidates, if fewer) on
    the test splits (at least the best candidate is always loaded).
    """
    record = read_search_json(experiment)
    settings = settings_from_record(record, experiment)
    rows = _usable_rows(experiment, settings)
    if extra_test:
        settings = SearchSettings(**{**settings.to_dict(), "test": extra_test})
    data = load_search_data(settings)
    if fingerprint(data) != record.get("data", {}).get("fingerprint"):
        raise DataError(f"{experiment}: the data no longer matches the experiment's fingerprint")
    assert data.val.labels is not None
    n_test = sum(len(s) for s in data.tests.values() if s.labels is not None)
    target = resolve_device(device)
    members: list[Member] = []
    probas: dict[str, list[np.ndarray]] = {"none": [], "flip": []}
    first_rung: list[bool] = []
    chosen_rows: list[pd.Series] = []
    per_view = per_member_test = 0.0
    listed = _checkpoint_list(rows, settings.metric, settings.mode)[:max_candidates]
    # The test splits score at most the members there can be: with two trials (2 cores), two.
    scored = min(test_members, len(listed))
    for ckpt in listed:
        if deadline is not None and members and \
                time.time() + per_member_test * (scored + 1) >= deadline:
            break
        started = time.time()
        ckpt["path"] = checkpoint_location(experiment, ckpt["trial_id"], str(ckpt["path"]))
        member, stored = _load_candidate(ckpt, data)
        if duplicates_another(stored, probas["none"]):
            continue  # e.g. a trial's latest epoch next to its best, both annealed
        member.model.to(target)
        probas["flip"].append(predict_probas([member.model], data.val.images, "flip")[0])
        probas["none"].append(stored)
        per_view = (time.time() - started) / max(len(data.val) * TTA_VIEWS["flip"], 1)
        # What scoring a member on the test splits with flip TTA costs; dearer modes are
        # weighed against the deadline when they come up (build.dear_modes).
        per_member_test = per_view * n_test * TTA_VIEWS["flip"]
        members.append(member)
        row = ckpt["row"]
        first_rung.append(row["status"] == TrialStatus.EARLY_STOPPED
                          and int(row["epochs_run"]) <= settings.grace())
        chosen_rows.append(row)
    return Candidates(pd.DataFrame(chosen_rows).reset_index(drop=True), members, data,
                      {mode: np.stack(p) for mode, p in probas.items()},
                      np.array(first_rung, dtype=bool), per_view)


# Two candidates whose validation predictions agree on this share of the faces are one model
# for a vote: a one-cycle trial's last epochs differ in a handful of faces.
DUPLICATE_AGREEMENT = 0.99


def duplicates_another(val_probs: np.ndarray, kept: list[np.ndarray]) -> bool:
    """Whether a candidate's validation probabilities (N_val, C) predict the same class as
    one of the ``kept`` candidates' on at least DUPLICATE_AGREEMENT of the faces."""
    labels = val_probs.argmax(1)
    return any(float(np.mean(other.argmax(1) == labels)) >= DUPLICATE_AGREEMENT
               for other in kept)


def _load_candidate(ckpt: dict[str, Any], data: FerData) -> tuple[Member, np.ndarray]:
    """A checkpoint's model as a Member, and its stored validation probabilities (N_val, C)."""
    folder = storage.fetch_dir(str(ckpt["path"]))
    model, config = load_model(folder)
    trial_id = ckpt["trial_id"]
    name = trial_id if ckpt["is_best"] else f"{trial_id}-epoch{ckpt['epoch']}"
    row = ckpt["row"]
    member = Member(name, config, model,
                    {"trial_id": trial_id, "val_acc": float(ckpt.get("val_acc", row["val_acc"])),
                     "epoch": int(ckpt["epoch"]), "best_epoch": int(row["best_epoch"]),
                     "checkpoint": str(folder)})
    stored = np.load(folder / VAL_PROBS)
    if not np.array_equal(np.load(folder / VAL_LABELS), np.asarray(data.val.labels)):
        raise DataError(f"{folder}: validation labels differ from the experiment's split")
    return member, stored
