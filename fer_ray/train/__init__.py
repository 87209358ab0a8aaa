"""Training: the device-resident loop, batched augmentation, optimizers, presets (no Ray)."""

from fer_ray.train.augment import augment_batch
from fer_ray.train.loop import FitResult, Trainer, fit, predict_logits, resolve_device
from fer_ray.train.presets import PRESETS, get_preset

__all__ = [
    "PRESETS",
    "FitResult",
    "Trainer",
    "augment_batch",
    "fit",
    "get_preset",
    "predict_logits",
    "resolve_device",
]
