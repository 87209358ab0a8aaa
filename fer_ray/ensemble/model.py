"""A saved, self-contained ensemble: member weights (safetensors) + ``ensemble.json``.

``Ensemble.load(dir)`` needs neither Ray nor the experiment folder, and never unpickles: the
architectures come from the JSON configs through the model registry, the weights from
safetensors files.

Prediction: each member's softmax (with TTA, of the mean of its logits over the mode's views:
the image, its mirror image, and with ``flip_shift`` both shifted by 2 px; ``fer_ray.tta``) ->
weighted soft vote -> temperature scaling -> argmax of log-probabilities + per-class biases;
optionally abstain ("defer") when the confidence is below a threshold chosen on validation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_ray import storage
from fer_ray.config import TrainConfig, to_dict
from fer_ray.ensemble.calibration import temperature_scale
from fer_ray.ensemble.decision import decide_labels
from fer_ray.ensemble.record import FORMAT_VERSION, parse_record
from fer_ray.ensemble.voting import SoftVotingEnsemble
from fer_ray.errors import ConfigError, DataError
from fer_ray.models.inference import EVAL_BATCH, predict_probas
from fer_ray.models.io import build_checked, model_classes, save_weights
from fer_ray.models.vgg_fer import VGGFer
from fer_ray.paths import read_json
from fer_ray.tta import TtaMode, tta_mode

ENSEMBLE_JSON = "ensemble.json"
ENSEMBLE_FILES = (ENSEMBLE_JSON, "members")  # all an ensemble folder holds


@dataclass
class Member:
    """One trained network of the ensemble (``model`` in eval mode)."""

    name: str
    config: TrainConfig
    model: VGGFer
    info: dict[str, Any] = field(default_factory=dict)  # val metrics, trial id, source path


def _weights_file(member: Member) -> str:
    return f"members/{member.name}.safetensors"


@dataclass
class Ensemble:
    """Weighted soft voting over members, with calibration and a decision rule.

    weights: (n_members,) summing to 1. class_biases: (C,) added to log-probabilities, C the
    members' classes (``classes``; zeros when not given).
    tta: the TTA mode (``fer_ray.tta``; true/false are read as "flip"/"none").
    defer_threshold: abstain when confidence (``defer_kind``) is below it; None = never.
    """

    members: list[Member]
    weights: np.ndarray
    tta: TtaMode = "none"
    temperature: float = 1.0
    class_biases: np.ndarray = field(default_factory=lambda: np.zeros(0))
    defer_kind: str = "max_prob"
    defer_threshold: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # validation figures, data fingerprint

    def __post_init__(self) -> None:
        self.tta = tta_mode(self.tta)
        if self.class_biases.size == 0:
            self.class_biases = np.zeros(len(self.classes))

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the probabilities' columns: the members' (all the same)."""
        sets = {model_classes(m.config) for m in self.members}
        if len(sets) != 1:
            raise ConfigError(f"ensemble members predict different classes: "
                              f"{' / '.join(', '.join(s) for s in sorted(sets))}")
        return next(iter(sets))

    def to(self, device: torch.device | str) -> Ensemble:
        for member in self.members:
            member.model.to(device)
        return self

    def member_probas(self, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """(n_members, N, C) float32 softmax of each member for (N, 48, 48) uint8 images."""
        return predict_probas([m.model for m in self.members], images, self.tta, batch_size)

    def combine(self, probas: np.ndarray) -> np.ndarray:
        """Member probabilities (n_members, N, C) -> calibrated ensemble probabilities (N, C)."""
        voted = SoftVotingEnsemble(self.weights).fit(probas).predict_proba(probas)
        return temperature_scale(voted, self.temperature)

    def predict_proba(self, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """(N, C) calibrated class probabilities for (N, 48, 48) uint8 images."""
        return self.combine(self.member_probas(images, batch_size))

    def decide(self, probs: np.ndarray, rule: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,), deferred (N,) bool) from ensemble probabilities.

        rule: "argmax" (most accurate) or "adjusted" (per-class biases fitted on validation
        for macro-F1: rare classes such as disgust get predicted more often).
        """
        return decide_labels(probs, rule, self.class_biases, self.defer_threshold,
                             self.defer_kind)

    def predict(self, images: np.ndarray, rule: str = "argmax") -> np.ndarray:
        return self.decide(self.predict_proba(images), rule)[0]

    def to_json(self) -> bytes:
        """The ``ensemble.json`` that ``save`` writes: everything but the member weights."""
        entries = [{"name": m.name, "weights_file": _weights_file(m),
                    "config": to_dict(m.config), "info": m.info} for m in self.members]
        record = {
            "format_version": FORMAT_VERSION, "classes": list(self.classes),
            "members": entries, "weights": [float(w) for w in self.weights],
            "tta": self.tta, "temperature": float(self.temperature),
            "class_biases": [float(b) for b in self.class_biases],
            "defer": {"kind": self.defer_kind, "threshold": self.defer_threshold},
            "info": self.info,
        }
        return json.dumps(record, indent=2).encode()

    @property
    def ensemble_id(self) -> str:
        """sha256 of ``to_json()``: of the ``ensemble.json`` of a folder ``save`` wrote. An
        exported ``.onnx`` carries it, so both engines name the same ensemble the same way."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write members/<name>.safetensors and ensemble.json.

        Written into a sibling temp folder that then replaces ``directory``, so an interrupted
        save leaves the previous ensemble whole (never old members under a new json). A
        folder holding anything but an ensemble is refused (ConfigError), never replaced.
        """
        with storage.replace_dir(directory, ENSEMBLE_FILES) as tmp:
            (tmp / "members").mkdir()
            for member in self.members:
                save_weights(member.model, tmp / _weights_file(member))
            storage.write_bytes(str(tmp / ENSEMBLE_JSON), self.to_json())
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Ensemble:
        """Rebuild a saved ensemble on the CPU; DataError naming the file when anything is off.

        ``ensemble.json`` is checked as a schema first (``record.parse_record``: types,
        lengths, finite values, the format version, member files inside the folder, bounded
        member configs), and each weights file against its config before a model is built.
        """
        directory = Path(directory)
        path = directory / ENSEMBLE_JSON
        if not directory.is_dir() or not path.exists():
            raise DataError(f"{directory}: not an ensemble folder (no {ENSEMBLE_JSON})")
        try:
            record = parse_record(read_json(path), directory)
        except ConfigError as exc:
            raise DataError(f"{path}: not a valid ensemble ({exc})") from None
        members = [Member(m.name, m.config, build_checked(m.config.model, m.weights_file,
                                                          len(record.classes)),
                          m.info) for m in record.members]
        return cls(members=members, weights=record.weights, tta=record.tta,
                   temperature=record.temperature, class_biases=record.class_biases,
                   defer_kind=record.defer_kind, defer_threshold=record.defer_threshold,
                   info=record.info)
