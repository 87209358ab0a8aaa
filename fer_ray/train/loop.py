"""The training loop: whole dataset on the device, batches sliced from it, no DataLoader.

``Trainer`` runs one epoch at a time (the Ray trainable drives it epoch by epoch and
checkpoints between epochs); ``fit`` is the single-run loop with early stopping.

Hot-path rules: no host synchronisation per step (losses and correct counts accumulate on
the device and are read once per epoch), augmentation is batched on the device, bf16
autocast and channels_last on CUDA. The same code runs on the CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fer_ray.config import TrainConfig
from fer_ray.data import FerData, Split
from fer_ray.errors import ConfigError
from fer_ray.metrics import accuracy, macro_f1
from fer_ray.models import VGGFer, build_model
from fer_ray.train.augment import augment_batch
from fer_ray.train.optim import build_optimizer, build_scheduler

EVAL_BATCH = 512


def resolve_device(name: str | None = None) -> torch.device:
    """'auto'/None: CUDA when available, else CPU; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: CUDA was requested but no GPU is available")
    return device


def to_device_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 48, 48) uint8 array -> (N, 1, 48, 48) uint8 tensor on the device (4x smaller)."""
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # e.g. a zero-copy view from Ray's object store
        array = array.copy()
    return torch.from_numpy(array).unsqueeze(1).to(device)


def _as_float(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = x.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor,
                   device: torch.device | None = None, batch_size: int = EVAL_BATCH,
                   hflip_tta: bool = False) -> torch.Tensor:
    """Logits (N, 7) float32 on the model's device for (N, 48, 48) uint8 images.

    hflip_tta: average the logits of each image and its mirror image.
    """
    device = device or next(model.parameters()).device
    data = images if isinstance(images, torch.Tensor) else to_device_images(images, device)
    cuda = device.type == "cuda"
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, data.shape[0], batch_size):
        x = _as_float(data[start:start + batch_size].to(device), cuda)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x).float()
            if hflip_tta:
                logits = 0.5 * (logits + model(torch.flip(x, dims=[3])).float())
        out.append(logits)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 7, device=device)


def score_splits(model: torch.nn.Module, splits: dict[str, Split],
                 device: torch.device | None = None) -> dict[str, dict[str, float]]:
    """Accuracy, macro-F1 and size of ``model`` on every labelled, non-empty split."""
    scores: dict[str, dict[str, float]] = {}
    for name, split in splits.items():
        if split.labels is None or len(split) == 0:
            continue
        preds = predict_logits(model, split.images, device).argmax(1).cpu().numpy()
        scores[name] = {"acc": accuracy(split.labels, preds),
                        "macro_f1": macro_f1(split.labels, preds), "n": len(split)}
    return scores


@dataclass
class FitResult:
    """model: best weights, eval mode. val_probs: (N_val, 7) float32 softmax at the best epoch."""

    model: VGGFer
    history: list[dict[str, float]]
    best: dict[str, float]
    val_probs: np.ndarray
    val_labels: np.ndarray
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Owns model, optimizer, schedule, RNG and device-resident data for one training run."""

    def __init__(self, config: TrainConfig, train: Split, val: Split,
                 device: torch.device | str | None = None) -> None:
        if train.labels is None or val.labels is None:
            raise ConfigError("training needs labelled train and validation splits")
        self.config = config
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(config.seed)
        self.model = build_model(config.model)
        pixels = train.images.astype(np.float32) / 255.0
        self.model.set_normalization(float(pixels.mean()), float(pixels.std()))
        self.model.to(self.device)
        if self.cuda:
            self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.x_train = to_device_images(train.images, self.device)
        self.y_train = torch.from_numpy(train.labels.astype(np.int64)).to(self.device)
        self.x_val = to_device_images(val.images, self.device)
        self.val_labels = val.labels.astype(np.int64)
        self.y_val = torch.from_numpy(self.val_labels).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.batch_size = min(config.optim.batch_size, len(train))
        self.steps_per_epoch = max(len(train) // self.batch_size, 1)
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim,
                                         self.steps_per_epoch * config.epochs)
        self.epoch = 0
        self.val_probs: np.ndarray = np.zeros((len(val), 7), np.float32)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the shuffled training set; returns train_loss, train_acc, images_per_s."""
        self.model.train()
        cfg = self.config
        n = self.x_train.shape[0]
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        for step in range(self.steps_per_epoch):
            # Full batches only: a trailing batch of 1 would break batch norm.
            idx = perm[step * self.batch_size:(step + 1) * self.batch_size]
            x = _as_float(self.x_train[idx], self.cuda)
            x = augment_batch(x, cfg.augment, self.generator)
            y = self.y_train[idx]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                logits = self.model(x)
                loss = F.cross_entropy(logits.float(), y,
                                       label_smoothing=cfg.optim.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if cfg.optim.schedule == "cosine" and self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
        loss_value = float(loss_sum) / max(seen, 1)  # the one sync of the epoch
        seconds = time.perf_counter() - start
        self.epoch += 1
        return {
            "train_loss": loss_value,
            "train_acc": float(correct) / max(seen, 1),
            "images_per_s": seen / max(seconds, 1e-9),
            "epoch_seconds": seconds,
        }

    def evaluate(self) -> dict[str, float]:
        """Validation loss/accuracy/macro-F1; keeps the softmax in ``self.val_probs``."""
        logits = predict_logits(self.model, self.x_val, self.device)
        loss = float(F.cross_entropy(logits, self.y_val))
        probs = torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
        self.val_probs = probs
        preds = probs.argmax(1)
        return {
            "val_loss": loss,
            "val_acc": accuracy(self.val_labels, preds),
            "val_macro_f1": macro_f1(self.val_labels, preds),
        }

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate, step the plateau schedule; the epoch's metrics."""
        metrics = self.train_epoch()
        metrics.update(self.evaluate())
        if self.config.optim.schedule == "plateau" and self.scheduler is not None:
            self.scheduler.step(metrics["val_acc"])  # type: ignore[arg-type]
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["epoch"] = float(self.epoch)
        return metrics

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.epoch = int(state["epoch"])


EpochCallback = Callable[[dict[str, float]], None]


def fit(config: TrainConfig, data: FerData, device: torch.device | str | None = None,
        on_epoch: EpochCallback | None = None) -> FitResult:
    """Train ``config.epochs`` epochs (early stopping if ``config.patience``), keep the best.

    The best epoch is the one with the highest validation accuracy; its weights and
    validation probabilities are returned.
    """
    trainer = Trainer(config, data.train, data.val, device)
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] = {}
    best_probs = trainer.val_probs
    stale = 0
    for _ in range(config.epochs):
        metrics = trainer.run_epoch()
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if not np.isfinite(metrics["train_loss"]):
            break  # diverged: more epochs cannot help
        if not best or metrics["val_acc"] > best["val_acc"]:
            best, stale = dict(metrics), 0
            best_state = copy.deepcopy(trainer.model.state_dict())
            best_probs = trainer.val_probs
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                break
    if best_state:
        trainer.model.load_state_dict(best_state)
    trainer.model.eval()
    return FitResult(
        model=trainer.model, history=history, best=best, val_probs=best_probs,
        val_labels=trainer.val_labels, stopped_early=len(history) < config.epochs,
    )
