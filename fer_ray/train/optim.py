"""Optimizers and learning-rate schedules by name, from an OptimConfig."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau

from fer_ray.config import OptimConfig
from fer_ray.errors import ConfigError


def build_optimizer(params: Iterable[torch.nn.Parameter], config: OptimConfig
                    ) -> torch.optim.Optimizer:
    name, lr, wd = config.optimizer, config.lr, config.weight_decay
    if lr <= 0:
        raise ConfigError(f"optim.lr: {lr} must be positive")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=wd)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"optim.optimizer: unknown optimizer {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
                    ) -> LRScheduler | ReduceLROnPlateau | None:
    """cosine: stepped every batch over ``total_steps``; plateau: stepped on val accuracy."""
    if config.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if config.schedule == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return None
