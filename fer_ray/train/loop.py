"""The training loop: whole dataset on the device, batches sliced from it, no DataLoader.

``Trainer`` runs one epoch at a time (the Ray trainable drives it epoch by epoch and
checkpoints between epochs); ``fit`` is the single-run loop with early stopping.

Hot-path rules: no host synchronisation per step (losses and correct counts accumulate on
the device and are read once per epoch), augmentation is batched on the device, channels_last
everywhere, bf16 autocast for training where the hardware has native bf16 (CUDA; CPUs with
AMX or AVX512-BF16, where it is 2-3x faster than fp32). Evaluation is always fp32, so the
validation probabilities a checkpoint stores are what prediction computes for the same images.
The same code runs on the CPU and on CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fer_ray.config import TrainConfig
from fer_ray.data import FerData, Split, class_names
from fer_ray.data.votes import soft_targets, vote_alpha
from fer_ray.errors import ConfigError
from fer_ray.metrics import accuracy, macro_f1
from fer_ray.models import VGGFer, build_model
from fer_ray.models.inference import (
    as_float_images,
    predict_logits,
    resolve_device,
    to_device_images,
)
from fer_ray.train.augment import augment_batch, mix_batch
from fer_ray.train.budget import (
    DeadlinePlanner,
    evaluate_from,
    planned_epochs,
    should_evaluate,
)
from fer_ray.train.optim import (
    build_optimizer,
    build_scheduler,
    shorten_schedule,
    steps_per_batch,
)

# Training steps timed (after WARMUP_STEPS untimed ones: oneDNN picks its kernels on the
# first calls) before a deadline-bound run plans its epochs.
WARMUP_STEPS, PROBE_STEPS = 2, 8


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16 in /proc/cpuinfo (torch's own check also accepts slow emulation)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(name: str, device: torch.device) -> str:
    """The training arithmetic for a config's ``precision`` on ``device``: "bf16" or "fp32"."""
    if name == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" \
            else device.type == "cpu" and _cpu_has_native_bf16()
        return "bf16" if native else "fp32"
    if name not in ("bf16", "fp32"):
        raise ConfigError(f"precision: {name!r} is not auto, bf16 or fp32")
    return name


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of (N, 48, 48) uint8 pixels scaled to [0, 1], in float64 chunks (no
    float copy of the whole set)."""
    flat = np.ascontiguousarray(images).reshape(-1)
    total = squares = 0.0
    for start in range(0, flat.size, 1 << 22):
        chunk = flat[start:start + (1 << 22)].astype(np.float64)
        total += float(chunk.sum())
        squares += float(chunk @ chunk)
    n = max(flat.size, 1)
    mean = total / n
    return mean / 255.0, float(np.sqrt(max(squares / n - mean * mean, 0.0))) / 255.0


@dataclass
class FitResult:
    """model: best weights, eval mode. val_probs: (N_val, C) float32 softmax at the best
    epoch, C the classes of ``config.data.labels``."""

    model: VGGFer
    history: list[dict[str, float]]
    best: dict[str, float]
    val_probs: np.ndarray
    val_labels: np.ndarray
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _train_targets(config: TrainConfig, train: Split, device: torch.device
                   ) -> torch.Tensor | None:
    """(N, C) float32 targets on ``device`` mixing labels and votes (``data.vote_alpha``),
    or None when the labels alone are the targets (alpha 1)."""
    alpha = vote_alpha(config.data)
    if alpha >= 1.0:
        return None
    if train.vote_probs is None or train.labels is None:
        raise ConfigError(f"data.vote_alpha {alpha:g} needs FER+ votes for the training "
                          "data (data.votes / --votes)")
    return torch.from_numpy(soft_targets(train.labels, train.vote_probs, alpha)).to(device)


def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor,
                        lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits (N, C) against ``target``, class ids (N,) int64 or
    probability rows (N, C) float32, mixed with ``partner`` (the same kind) at weight
    ``1 - lam`` (mixup / CutMix): the loss of the mixed target rows, as CE is linear in them."""
    loss = F.cross_entropy(logits, target, label_smoothing=smoothing)
    if lam < 1.0:
        loss = lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner,
                                                          label_smoothing=smoothing)
    return loss


class Trainer:
    """Owns model, optimizer, schedule, RNG and device-resident data for one training run."""

    def __init__(self, config: TrainConfig, train: Split, val: Split,
                 device: torch.device | str | None = None,
                 normalization: tuple[float, float] | None = None) -> None:
        """normalization: the training pixels' (mean, std) in [0, 1] units, when the caller
        already has them (a search computes them once for all trials)."""
        if train.labels is None or val.labels is None:
            raise ConfigError("training needs labelled train and validation splits")
        self.config = config
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, len(class_names(config.data.labels)))
        self.model.set_normalization(*(normalization or pixel_stats(train.images)))
        self.model.to(self.device).to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.x_train = to_device_images(train.images, self.device)
        self.y_train = torch.from_numpy(train.labels.astype(np.int64)).to(self.device)
        # (N, C) float32 probability targets when the votes take part, else None (class ids).
        self.t_train = _train_targets(config, train, self.device)
        self.x_val = to_device_images(val.images, self.device)
        self.val_labels = val.labels.astype(np.int64)
        self.y_val = torch.from_numpy(self.val_labels).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.batch_size = min(config.optim.batch_size, len(train))
        self.steps_per_epoch = max(len(train) // self.batch_size, 1)
        # The plan is in optimizer steps: a run fitted into a deadline ends with a partial
        # epoch, and its schedule anneals by then (``plan_steps``).
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = build_optimizer(self.model.parameters(), config.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, config.optim, self.total_steps,
                                         self.steps_per_epoch)
        self.epoch = 0
        self.step = 0  # optimizer steps done
        self.val_probs: np.ndarray = np.zeros((len(val), self.model.num_classes), np.float32)
        # Called once, with the seconds per step, after the first PROBE_STEPS steps of the
        # next epoch (a DeadlinePlanner sizes the schedule with it).
        self.step_probe: Callable[[float], None] | None = None

    def train_epoch(self) -> dict[str, float]:
        """One pass over the shuffled training set (or what is left of the planned steps);
        returns train_loss, train_acc, images_per_s, epoch_seconds (training only), steps."""
        self.model.train()
        cfg = self.config
        n = self.x_train.shape[0]
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        per_batch_schedule = self.scheduler is not None and steps_per_batch(cfg.optim)
        start = time.perf_counter()
        probe_start = start
        steps = 0
        for step in range(self.steps_per_epoch):
            if self.step >= self.total_steps:
                break  # the plan ends inside this epoch (or was shortened during it)
            if self.step_probe is not None and step in (WARMUP_STEPS,
                                                        WARMUP_STEPS + PROBE_STEPS):
                # A host sync, twice per run: the steps so far must have finished to be timed.
                float(loss_sum)
                if step == WARMUP_STEPS:
                    probe_start = time.perf_counter()
                else:
                    probe, self.step_probe = self.step_probe, None
                    probe((time.perf_counter() - probe_start) / PROBE_STEPS)
            # Full batches only: a trailing batch of 1 would break batch norm.
            idx = perm[step * self.batch_size:(step + 1) * self.batch_size]
            x = augment_batch(as_float_images(self.x_train[idx]), cfg.augment, self.generator)
            y = self.y_train[idx]
            target = y if self.t_train is None else self.t_train[idx]
            x, partner, lam = mix_batch(x, target, cfg.augment, self.generator)
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                logits = self.model(x).float()
            loss = mixed_cross_entropy(logits, target, partner, lam,
                                       cfg.optim.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if per_batch_schedule:
                self.scheduler.step()  # type: ignore[union-attr]
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            steps += 1
            self.step += 1
        loss_value = float(loss_sum) / max(seen, 1)  # the one sync of the epoch
        seconds = time.perf_counter() - start
        self.epoch += 1
        return {
            "train_loss": loss_value,
            "train_acc": float(correct) / max(seen, 1),
            "images_per_s": seen / max(seconds, 1e-9),
            "epoch_seconds": seconds,
            "steps": float(steps),
        }

    def evaluate(self) -> dict[str, float]:
        """Validation loss/accuracy/macro-F1 (fp32); keeps the softmax in ``self.val_probs``."""
        start = time.perf_counter()
        logits = predict_logits(self.model, self.x_val, self.device)
        loss = float(F.cross_entropy(logits, self.y_val))
        probs = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        self.val_probs = probs
        preds = probs.argmax(1)
        return {
            "val_loss": loss,
            "val_acc": accuracy(self.val_labels, preds),
            "val_macro_f1": macro_f1(self.val_labels, preds),
            "eval_seconds": time.perf_counter() - start,
        }

    def run_epoch(self, evaluate: bool = True) -> dict[str, float]:
        """Train one epoch, evaluate (unless ``evaluate`` is False: a budgeted run skips the
        epochs that cannot be its best), step the plateau schedule; the epoch's metrics."""
        metrics = self.train_epoch()
        if evaluate:
            metrics.update(self.evaluate())
        if self.config.optim.schedule == "plateau" and self.scheduler is not None:
            self.scheduler.step(metrics["val_acc"])  # type: ignore[arg-type]
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["epoch"] = float(self.epoch)
        return metrics

    def evaluates_next_epoch(self, share: float) -> bool:
        """Whether the next epoch is evaluated, with every epoch evaluated from ``share`` of
        the planned steps on (``fer_ray.train.budget.should_evaluate``)."""
        end = min(self.step + self.steps_per_epoch, self.total_steps)
        return should_evaluate(self.epoch + 1, end, self.total_steps, share)

    @property
    def done(self) -> bool:
        """Whether the planned steps are all trained."""
        return self.step >= self.total_steps

    def plan_steps(self, total: int) -> None:
        """Train ``total`` optimizer steps in all instead (at least those done: ``total`` equal
        to them stops the run); a per-step schedule then ends there, and
        ``config.epochs`` is the epochs that takes (the last one partial)."""
        total = max(total, self.step, 1)
        if total != self.total_steps:
            self.total_steps = total
            shorten_schedule(self.scheduler, total)
        epochs = planned_epochs(total, self.steps_per_epoch)
        if epochs != self.config.epochs:
            self.config = dataclasses.replace(self.config, epochs=epochs)

    def plan_epochs(self, epochs: int) -> None:
        """Train ``epochs`` whole epochs in all instead."""
        self.plan_steps(self.steps_per_epoch * epochs)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (for checkpoints)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            # Dropout draws from torch's global RNG, so an exact resume needs it too.
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None,
            "epoch": self.epoch,
            "step": self.step,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; without "model" the weights are left as they are (a
        checkpoint stores them once, in safetensors)."""
        if "model" in state:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.epoch = int(state["epoch"])
        # States saved before plans were in steps: whole epochs.
        self.step = int(state.get("step", self.epoch * self.steps_per_epoch))
        self.plan_steps(int(state.get("total_steps", self.total_steps)))


EpochCallback = Callable[[dict[str, float]], None]


def fit(config: TrainConfig, data: FerData, device: torch.device | str | None = None,
        on_epoch: EpochCallback | None = None, deadline: float | None = None,
        keep_best: bool = True) -> FitResult:
    """Train ``config.epochs`` epochs (early stopping if ``config.patience``).

    keep_best: return the weights and validation probabilities of the best epoch (highest
    validation accuracy); False keeps the last epoch's (``FitResult.best`` is still the best
    epoch's metrics). deadline: epoch seconds by which training must end; the run then plans
    its optimizer steps to end there (``FitResult.history[-1]["planned_epochs"]``, the last
    epoch partial), and with an annealing schedule evaluates only from half-way on (the
    other epochs' history rows have no validation figures).
    """
    trainer = Trainer(config, data.train, data.val, device)
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] = {}
    best_probs = trainer.val_probs
    stale = 0
    planner = DeadlinePlanner(trainer, deadline) if deadline is not None else None
    share = evaluate_from(config, deadline is not None, config.patience > 0)
    while not trainer.done:
        evaluated = trainer.evaluates_next_epoch(share)
        metrics = trainer.run_epoch(evaluate=evaluated)
        if planner is not None:
            planner.after_epoch(metrics, evaluated)
            metrics["planned_epochs"] = float(trainer.config.epochs)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if not np.isfinite(metrics["train_loss"]):
            break  # diverged: more epochs cannot help
        if not evaluated:
            continue
        if not best or metrics["val_acc"] > best["val_acc"]:
            best, stale = dict(metrics), 0
            if keep_best:
                best_state = copy.deepcopy(trainer.model.state_dict())
                best_probs = trainer.val_probs
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                break
    if best_state:
        trainer.model.load_state_dict(best_state)
    if not keep_best:
        best_probs = trainer.val_probs  # the last epoch's, as its weights
    trainer.model.eval()
    return FitResult(
        model=trainer.model, history=history, best=best, val_probs=best_probs,
        val_labels=trainer.val_labels, stopped_early=not trainer.done,
        extra={"config": trainer.config},
    )
