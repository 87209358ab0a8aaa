"""The Ray Tune trainable: one trial = one config trained epoch by epoch, checkpointed each epoch.

Each epoch it reports val_acc, val_loss, val_macro_f1, train_loss, epoch, lr, images/s and a
checkpoint holding what later stages need: ``model.safetensors`` + ``config.json`` (the
resolved config, the trial's sampled params, the epoch's metrics), ``val_probs.npy`` /
``val_labels.npy``, and ``trainer_state.pt`` (optimizer, schedule and RNG state, loaded with
``weights_only=True``) so a retried trial continues where it stopped, not from epoch 0.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from fer_ray.config import TrainConfig
from fer_ray.data import Split
from fer_ray.errors import ConfigError
from fer_ray.models.io import save_model
from fer_ray.space import SearchSpace, check_architecture
from fer_ray.train.loop import Trainer

TRAINER_STATE = "trainer_state.pt"
VAL_PROBS = "val_probs.npy"
VAL_LABELS = "val_labels.npy"


@dataclass(frozen=True)
class TrialData:
    """Arrays every trial trains on; shipped once through the object store.

    train_images/val_images: (N, 48, 48) uint8; train_labels/val_labels: (N,) int64.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


@dataclass(frozen=True)
class TrialSetup:
    """What turns a trial's sampled params into a TrainConfig, and how to run it."""

    space: SearchSpace
    base: TrainConfig
    max_epochs: int
    cpus_per_trial: float
    device: str = "auto"
    # Fault injection for tests: raise after this epoch (0 = off), on the first attempt only
    # ("once") or on every attempt ("always").
    fail_at_epoch: int = 0
    fail_mode: str = "once"


def trial_config(params: dict[str, Any], setup: TrialSetup) -> TrainConfig:
    """The resolved config of a trial: base (which trains for max_epochs) + sampled params."""
    return setup.space.to_config(params, setup.base)


def _node_id() -> str:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not in a Ray worker (direct calls in tests)
        return ""


def _report_terminal(status: str, epoch: int, extra: dict[str, Any] | None = None) -> None:
    """A final result for a trial that cannot train (invalid config) or must stop (diverged).

    val_acc 0 tells TPE the region is bad; the flag tells results/ensemble to skip the trial.
    """
    metrics: dict[str, Any] = {"val_acc": 0.0, "val_loss": math.inf, "val_macro_f1": 0.0,
                               "epoch": epoch, "status_flag": status, "node_id": _node_id()}
    tune.report({**metrics, **(extra or {})})


def fer_trainable(params: dict[str, Any], data: TrialData, setup: TrialSetup) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(..., data=, setup=)``)."""
    torch.set_num_threads(max(1, int(setup.cpus_per_trial)))
    try:
        config = trial_config(params, setup)
        check_architecture(config)
    except ConfigError as exc:
        _report_terminal("invalid", 0, {"error": str(exc)})
        return

    # Arrays from the object store are read-only views; the trainer copies them to its device.
    train = Split(data.train_images, data.train_labels, "train")
    val = Split(data.val_images, data.val_labels, "val")
    trainer = Trainer(config, train, val, setup.device)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / TRAINER_STATE, weights_only=True,
                               map_location=trainer.device)
            trainer.load_state_dict(state)
    resumed_from = trainer.epoch
    if setup.fail_mode == "always" and 0 < setup.fail_at_epoch <= resumed_from:
        raise RuntimeError(f"injected failure on resume at epoch {resumed_from}")

    while trainer.epoch < setup.max_epochs:
        metrics: dict[str, Any] = dict(trainer.run_epoch())
        metrics.update(node_id=_node_id(), resumed_from=resumed_from, status_flag="ok")
        if not math.isfinite(metrics["train_loss"]):
            # A NaN/inf loss never recovers: stop now, without a checkpoint of broken weights.
            _report_terminal("diverged", trainer.epoch, {"train_loss": metrics["train_loss"]})
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_model(trainer.model, tmp, config,
                       extra={"params": params, "metrics": metrics, "epoch": trainer.epoch})
            np.save(Path(tmp) / VAL_PROBS, trainer.val_probs)
            np.save(Path(tmp) / VAL_LABELS, trainer.val_labels)
            torch.save(trainer.state_dict(), Path(tmp) / TRAINER_STATE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        if trainer.epoch == setup.fail_at_epoch and (resumed_from == 0
                                                     or setup.fail_mode == "always"):
            raise RuntimeError(f"injected failure after epoch {trainer.epoch}")
