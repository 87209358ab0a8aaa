"""A saved, self-contained ensemble: member weights (safetensors) + ``ensemble.json``.

``Ensemble.load(dir)`` needs neither Ray nor the experiment folder, and never unpickles: the
architectures come from the JSON configs through the model registry, the weights from
safetensors files.

Prediction: each member's softmax (optionally averaged with the mirror image: TTA) ->
weighted soft vote -> temperature scaling -> argmax of log-probabilities + per-class biases;
optionally abstain ("defer") when the confidence is below a threshold chosen on validation.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_ray import storage
from fer_ray.config import TrainConfig, from_dict, to_dict
from fer_ray.data import CLASS_NAMES
from fer_ray.ensemble.calibration import temperature_scale
from fer_ray.ensemble.decision import defer_mask, predict_with_biases
from fer_ray.ensemble.voting import SoftVotingEnsemble
from fer_ray.errors import ConfigError, DataError
from fer_ray.models.io import load_weights, save_weights
from fer_ray.models.vgg_fer import VGGFer, build_model
from fer_ray.train.loop import EVAL_BATCH, predict_probas

ENSEMBLE_JSON = "ensemble.json"
FORMAT_VERSION = 1


@dataclass
class Member:
    """One trained network of the ensemble (``model`` in eval mode)."""

    name: str
    config: TrainConfig
    model: VGGFer
    info: dict[str, Any] = field(default_factory=dict)  # val metrics, trial id, source path


@dataclass
class Ensemble:
    """Weighted soft voting over members, with calibration and a decision rule.

    weights: (n_members,) summing to 1. class_biases: (7,) added to log-probabilities.
    defer_threshold: abstain when confidence (``defer_kind``) is below it; None = never.
    """

    members: list[Member]
    weights: np.ndarray
    tta: bool = False
    temperature: float = 1.0
    class_biases: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES)))
    defer_kind: str = "max_prob"
    defer_threshold: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # validation figures, data fingerprint

    def to(self, device: torch.device | str) -> Ensemble:
        for member in self.members:
            member.model.to(device)
        return self

    def member_probas(self, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """(n_members, N, 7) float32 softmax of each member for (N, 48, 48) uint8 images."""
        return predict_probas([m.model for m in self.members], images, self.tta, batch_size)

    def combine(self, probas: np.ndarray) -> np.ndarray:
        """Member probabilities (n_members, N, 7) -> calibrated ensemble probabilities (N, 7)."""
        voted = SoftVotingEnsemble(self.weights).fit(probas).predict_proba(probas)
        return temperature_scale(voted, self.temperature)

    def predict_proba(self, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """(N, 7) calibrated class probabilities for (N, 48, 48) uint8 images."""
        return self.combine(self.member_probas(images, batch_size))

    def decide(self, probs: np.ndarray, rule: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,), deferred (N,) bool) from ensemble probabilities.

        rule: "argmax" (most accurate) or "adjusted" (per-class biases fitted on validation
        for macro-F1: rare classes such as disgust get predicted more often).
        """
        if rule not in ("argmax", "adjusted"):
            raise ConfigError(f"decision rule {rule!r} is not 'argmax' or 'adjusted'")
        labels = probs.argmax(1) if rule == "argmax" else predict_with_biases(
            probs, self.class_biases)
        if self.defer_threshold is None:
            return labels, np.zeros(len(labels), dtype=bool)
        return labels, defer_mask(probs, self.defer_threshold, self.defer_kind)  # type: ignore[arg-type]

    def predict(self, images: np.ndarray, rule: str = "argmax") -> np.ndarray:
        return self.decide(self.predict_proba(images), rule)[0]

    def save(self, directory: str | Path) -> Path:
        """Write members/<name>.safetensors and ensemble.json.

        Written into a sibling temp folder that then replaces ``directory``, so an interrupted
        save leaves the previous ensemble whole (never old members under a new json).
        """
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "members").mkdir(parents=True)
        try:
            entries = []
            for member in self.members:
                weights_file = f"members/{member.name}.safetensors"
                save_weights(member.model, tmp / weights_file)
                entries.append({"name": member.name, "weights_file": weights_file,
                                "config": to_dict(member.config), "info": member.info})
            record = {
                "format_version": FORMAT_VERSION, "classes": list(CLASS_NAMES),
                "members": entries, "weights": [float(w) for w in self.weights],
                "tta": self.tta, "temperature": float(self.temperature),
                "class_biases": [float(b) for b in self.class_biases],
                "defer": {"kind": self.defer_kind, "threshold": self.defer_threshold},
                "info": self.info,
            }
            storage.write_bytes(str(tmp / ENSEMBLE_JSON), json.dumps(record, indent=2).encode())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Ensemble:
        """Rebuild a saved ensemble on the CPU; DataError naming the file when anything is off."""
        directory = Path(directory)
        path = directory / ENSEMBLE_JSON
        if not path.is_file():
            raise DataError(f"{directory}: not an ensemble folder (no {ENSEMBLE_JSON})")
        try:
            record = json.loads(path.read_text())
            members = []
            for entry in record["members"]:
                config = from_dict(TrainConfig, entry["config"])
                model = build_model(config.model)
                load_weights(model, directory / entry["weights_file"])
                members.append(Member(entry["name"], config, model.eval(), entry.get("info", {})))
            defer = record.get("defer", {})
            ensemble = cls(
                members=members, weights=np.asarray(record["weights"], dtype=np.float64),
                tta=bool(record["tta"]), temperature=float(record["temperature"]),
                class_biases=np.asarray(record["class_biases"], dtype=np.float64),
                defer_kind=defer.get("kind", "max_prob"), defer_threshold=defer.get("threshold"),
                info=record.get("info", {}))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
                ValueError, ConfigError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise DataError(f"{path}: not a valid ensemble ({reason})") from None
        if len(ensemble.weights) != len(members) or not members:
            raise DataError(f"{path}: {len(ensemble.weights)} weights for {len(members)} members")
        return ensemble
