"""Optimizers and learning-rate schedules by name, from an OptimConfig."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from fer_ray.config import OptimConfig
from fer_ray.errors import ConfigError


def build_optimizer(params: Iterable[torch.nn.Parameter], config: OptimConfig,
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer ``config`` names; on CUDA, SGD/Adam/AdamW use torch's fused kernels
    (one launch per step instead of several per parameter tensor)."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay
    if lr <= 0:
        raise ConfigError(f"optim.lr: {lr} must be positive")
    fused = True if device is not None and device.type == "cuda" else None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=wd,
                               fused=fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=wd)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"optim.optimizer: unknown optimizer {name!r}")


def _cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@dataclass
class StepSchedule:
    """The LR factor per optimizer step (for ``LambdaLR``); ``total_steps`` may be shortened
    mid-run (a budgeted trial that must finish earlier anneals by its new end).

    A callable object rather than a lambda so that LambdaLR's state_dict saves its fields.
    """

    kind: str  # "cosine", "onecycle" or "warmup" (linear warm-up to a constant)
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        total = max(self.total_steps, 1)
        if self.kind == "onecycle":  # Smith & Topin: lr/25 -> lr over 25 %, -> lr/25e4
            up = max(round(0.25 * total), 1)
            if step < up:
                return _cosine(1 / 25, 1.0, step / up)
            return _cosine(1.0, 1 / 25e4, (step - up) / max(total - up, 1))
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "warmup":
            return 1.0
        return _cosine(1.0, 0.0, (step - self.warmup_steps) / max(total - self.warmup_steps, 1))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int,
                    steps_per_epoch: int = 1) -> LRScheduler | ReduceLROnPlateau | None:
    """cosine/onecycle: stepped every batch over ``total_steps``; plateau: on val accuracy.

    ``none`` with ``warmup_epochs`` is a warm-up to a constant rate.
    """
    total = max(total_steps, 1)
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    if config.schedule in ("cosine", "onecycle"):
        return LambdaLR(optimizer, StepSchedule(config.schedule, warmup, total))
    if config.schedule == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    if warmup:
        return LambdaLR(optimizer, StepSchedule("warmup", warmup, total))
    return None


def shorten_schedule(scheduler: LRScheduler | ReduceLROnPlateau | None, total_steps: int
                     ) -> None:
    """Make a per-step schedule end after ``total_steps`` instead (others: nothing to do)."""
    if isinstance(scheduler, LambdaLR):
        for fn in scheduler.lr_lambdas:
            if isinstance(fn, StepSchedule):
                fn.total_steps = max(total_steps, 1)


def steps_per_batch(config: OptimConfig) -> bool:
    """Whether the schedule is stepped after every batch (else once per epoch, or never)."""
    return config.schedule in ("cosine", "onecycle") or (
        config.schedule == "none" and config.warmup_epochs > 0)
