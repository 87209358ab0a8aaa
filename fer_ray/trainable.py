"""The Ray Tune trainable: one trial = one config trained epoch by epoch, checkpointed each epoch.

Each epoch it reports val_acc, val_loss, val_macro_f1, train_loss, epoch, planned_epochs, lr,
images/s and a checkpoint holding what later stages need: ``model.safetensors`` +
``config.json`` (the resolved config, the trial's sampled params, the epoch's metrics),
``val_probs.npy`` / ``val_labels.npy``, and ``trainer_state.pt`` (optimizer, schedule and RNG
state, without the weights, loaded with ``weights_only=True``) so a retried trial continues
where it stopped, not from epoch 0.

With a deadline (``TrialSetup.stop_at``) a trial plans its optimizer steps to end just before
it (``fer_ray.train.budget``): after each epoch it re-plans from its measured pace, up or
down, and its learning-rate schedule anneals by the new end, a partial last epoch included.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import tempfile
import time
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
from fer_ray.experiment import EPOCH_OK, TrialStatus, split_trial_number, trial_seed
from fer_ray.models.io import VAL_LABELS, VAL_PROBS, WEIGHTS, load_weights, read_config, save_model
from fer_ray.space import SearchSpace, check_architecture
from fer_ray.train.budget import DeadlinePlanner, evaluate_from
from fer_ray.train.loop import Trainer

TRAINER_STATE = "trainer_state.pt"
# Test hook (tests/conftest.py's inject_fault): the path of a file that, while it exists, holds
# "EPOCH:MODE": every trial raises after EPOCH on its first attempt only ("once"), on every
# attempt ("always", resumes included), or as CUDA running out of memory ("oom"). A file, not
# the value itself, so a test can arm the workers of a Ray cluster started before it.
FAULT_ENV = "FER_RAY_TEST_FAULT"


@dataclass(frozen=True)
class TrialData:
    """Arrays every trial trains on; shipped once through the object store.

    train_images/val_images: (N, 48, 48) uint8; train_labels/val_labels: (N,) int64;
    normalization: the training pixels' (mean, std) in [0, 1], computed once on the driver.
    train_vote_probs: (N, C) float32 FER+ vote shares (``Split.vote_probs``), or None.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    normalization: tuple[float, float] | None = None
    train_vote_probs: np.ndarray | None = None


@dataclass(frozen=True)
class TrialSetup:
    """What turns a trial's sampled params into a TrainConfig, and how to run it."""

    space: SearchSpace
    base: TrainConfig
    max_epochs: int
    cpus_per_trial: float
    gpus_per_trial: float = 0.0
    stop_at: float | None = None  # epoch seconds by which every trial must have stopped
    trial_seconds: float | None = None  # each trial's time share (budgeted searches)
    # Whether the scheduler compares trials on the way (ASHA): then every epoch is evaluated
    # and reported; without it a budgeted trial evaluates from half its plan on.
    early_stopping: bool = True


def trial_config(params: dict[str, Any], setup: TrialSetup) -> TrainConfig:
    """The resolved config of a trial: base (which trains for max_epochs) + sampled params,
    with the trial's own seed (``trial_seed`` of the searcher's trial number)."""
    sampled, number = split_trial_number(params)
    config = setup.space.to_config(sampled, setup.base)
    return dataclasses.replace(config, seed=trial_seed(setup.base.seed, number))


def _node_id() -> str:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not in a Ray worker (direct calls in tests)
        return ""


def _report_terminal(status: TrialStatus, epoch: int, extra: dict[str, Any] | None = None) -> None:
    """A final result for a trial that cannot train (invalid config) or must stop (diverged).

    val_acc 0 tells TPE the region is bad; the flag tells results/ensemble to skip the trial.
    """
    metrics: dict[str, Any] = {"val_acc": 0.0, "val_loss": math.inf, "val_macro_f1": 0.0,
                               "epoch": epoch, "status_flag": status.value,
                               "node_id": _node_id()}
    tune.report({**metrics, **(extra or {})})


def _resume(trainer: Trainer) -> None:
    """Continue from the trial's last checkpoint, if any, with the epochs it had planned."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as directory:
        load_weights(trainer.model, Path(directory) / WEIGHTS)
        # On the CPU: Optimizer.load_state_dict moves the moments to the parameters' device
        # and keeps Adam's step counter on the host, as torch expects (no per-step syncs).
        state = torch.load(Path(directory) / TRAINER_STATE, weights_only=True,
                           map_location="cpu")
        trainer.load_state_dict(state)  # with the steps it had planned
        saved, _ = read_config(directory)
    if "total_steps" not in state:  # saved before plans were in steps
        trainer.plan_epochs(saved.epochs)


def _report_epoch(trainer: Trainer, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Report the epoch with a lean checkpoint: weights once (safetensors), config, the
    validation probabilities, and the optimizer/schedule/RNG state without the weights."""
    with tempfile.TemporaryDirectory() as tmp:
        save_model(trainer.model, tmp, trainer.config,
                   extra={"params": params, "metrics": metrics, "epoch": trainer.epoch})
        np.save(Path(tmp) / VAL_PROBS, trainer.val_probs)
        np.save(Path(tmp) / VAL_LABELS, trainer.val_labels)
        state = {k: v for k, v in trainer.state_dict().items() if k != "model"}
        torch.save(state, Path(tmp) / TRAINER_STATE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_device(gpus_per_trial: float) -> str:
    """Where a trial trains: the GPU Ray assigned it when it asked for one, else the CPU.

    Ray 2.60 no longer hides GPUs from actors that asked for none, so "auto" would put CPU
    trials on a GPU that Ray counts as free. Ray sets CUDA_VISIBLE_DEVICES for actors that
    asked for a GPU (or a fraction of one), so "cuda" is the assigned device.
    """
    return "cuda" if gpus_per_trial > 0 else "cpu"


def fer_trainable(params: dict[str, Any], data: TrialData, setup: TrialSetup) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(..., data=, setup=)``)."""
    started = time.time()
    torch.set_num_threads(max(1, int(setup.cpus_per_trial)))
    try:
        config = trial_config(params, setup)
        check_architecture(config)
    except ConfigError as exc:
        _report_terminal(TrialStatus.INVALID, 0, {"error": str(exc)})
        return

    # Arrays from the object store are read-only views; the trainer copies them to its device.
    train = Split(data.train_images, data.train_labels, "train", data.train_vote_probs)
    val = Split(data.val_images, data.val_labels, "val")
    trainer: Trainer | None = None
    try:
        trainer = Trainer(config, train, val, trial_device(setup.gpus_per_trial),
                          data.normalization)
        _train_trial(trainer, params, setup, started)
    except torch.cuda.OutOfMemoryError as exc:
        # A config that does not fit never will: report it once, no retry; the search goes on.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        _report_terminal(TrialStatus.OOM, trainer.epoch if trainer else 0,
                         {"error": f"CUDA out of memory: {first}"[:300]})
    finally:
        # A reused actor trains the next trial next: free this one's model, optimizer and
        # device-resident data now rather than whenever the garbage collector runs.
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _inject_fault(epoch: int, resumed_from: int) -> None:
    """Raise the fault FAULT_ENV asks for, if any, after ``epoch`` was reported (or, with
    ``epoch == resumed_from``, when a trial resumes)."""
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.isfile(path):
        return
    at, _, mode = Path(path).read_text().strip().partition(":")
    if epoch == resumed_from:
        if mode == "always" and 0 < int(at) <= resumed_from:
            raise RuntimeError(f"injected failure on resume at epoch {resumed_from}")
    elif epoch == int(at):
        if mode == TrialStatus.OOM:
            raise torch.cuda.OutOfMemoryError("injected: tried to allocate 80.00 GiB")
        if resumed_from == 0 or mode == "always":
            raise RuntimeError(f"injected failure after epoch {epoch}")


def _train_trial(trainer: Trainer, params: dict[str, Any], setup: TrialSetup,
                 started: float) -> None:
    """Resume if there is a checkpoint, then train until the plan (or the deadline, or a
    diverging loss) ends the trial, reporting every evaluated epoch with a checkpoint."""
    _resume(trainer)
    resumed_from = trainer.epoch
    _inject_fault(resumed_from, resumed_from)

    deadline = setup.stop_at
    if setup.trial_seconds is not None:
        deadline = min(deadline or math.inf, started + setup.trial_seconds)
    planner = DeadlinePlanner(trainer, deadline) if deadline is not None else None
    share = evaluate_from(trainer.config, deadline is not None,
                          setup.early_stopping or trainer.config.patience > 0)
    while not trainer.done:
        evaluated = trainer.evaluates_next_epoch(share)
        metrics: dict[str, Any] = dict(trainer.run_epoch(evaluate=evaluated))
        if not math.isfinite(metrics["train_loss"]):
            # A NaN/inf loss never recovers: stop now, without a checkpoint of broken weights.
            _report_terminal(TrialStatus.DIVERGED, trainer.epoch,
                             {"train_loss": metrics["train_loss"]})
            return
        if planner is not None:
            planner.after_epoch(metrics, evaluated)
        if not evaluated:
            continue  # nothing to report: Tune's metric is the validation accuracy
        metrics.update(node_id=_node_id(), resumed_from=resumed_from, status_flag=EPOCH_OK,
                       train_end=time.time() - metrics["eval_seconds"],
                       device=str(trainer.device.type),
                       cuda_initialized=torch.cuda.is_initialized(),
                       planned_epochs=trainer.config.epochs, seed=trainer.config.seed)
        _report_epoch(trainer, params, metrics)
        _inject_fault(trainer.epoch, resumed_from)
