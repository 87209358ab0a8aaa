"""Inference with the networks: fp32 evaluation, batched, channels_last, on any device.

Used by training (validation each epoch), the ensemble build, predict and the report alike,
so the probabilities a checkpoint stores are what prediction computes for the same images.
Images are (N, 48, 48) uint8 throughout; models take (N, 1, 48, 48) float in [0, 1].
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fer_ray.data import NUM_CLASSES, Split
from fer_ray.errors import ConfigError
from fer_ray.metrics import accuracy, macro_f1

# fp32 inference batch: on one CPU core, batches of 64 run ~1.8x faster per image than
# 512 (activations stay in cache); on GPUs larger batches are no faster for these nets.
EVAL_BATCH = 64


def resolve_device(name: str | None = None) -> torch.device:
    """'auto'/None: CUDA when available, else CPU; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = torch.device("meta")  # refused just below, with the name given
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {name!r} is not auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: CUDA was requested but no GPU is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device: {name!r}, but there are {torch.cuda.device_count()} GPUs")
    return device


def local_resources() -> tuple[int, int]:
    """(CPUs this process may use, CUDA GPUs) on this machine, without starting Ray."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return cpus, torch.cuda.device_count() if torch.cuda.is_available() else 0


def num_classes(model: torch.nn.Module) -> int:
    """A network's outputs per image (a VGGFer records them; FER2013's 7 otherwise)."""
    return int(getattr(model, "num_classes", NUM_CLASSES))


def to_device_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 48, 48) uint8 array -> (N, 1, 48, 48) uint8 tensor on the device (4x smaller)."""
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # e.g. a zero-copy view from Ray's object store
        array = array.copy()
    return torch.from_numpy(array).unsqueeze(1).to(device)


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) uint8 -> float in [0, 1], channels_last (oneDNN's and cuDNN's fast path)."""
    return x.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def tta_logits(model: torch.nn.Module, x: torch.Tensor, hflip_tta: bool) -> torch.Tensor:
    """Logits (N, C) float32 of float images x (N, 1, H, W); hflip_tta: the mean of the logits
    of each image and its mirror image. Also traced into the ONNX export, so both agree."""
    logits = model(x).float()
    if hflip_tta:
        logits = 0.5 * (logits + model(torch.flip(x, dims=[3])).float())
    return logits


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor,
                   device: torch.device | None = None, batch_size: int = EVAL_BATCH,
                   hflip_tta: bool = False) -> torch.Tensor:
    """Logits (N, C) float32 on the model's device for (N, 48, 48) uint8 images, in fp32.

    hflip_tta: average the logits of each image and its mirror image. The model is moved to
    channels_last (same weights, faster convolutions).
    """
    device = device or next(model.parameters()).device
    data = images if isinstance(images, torch.Tensor) else to_device_images(images, device)
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, data.shape[0], batch_size):
        x = as_float_images(data[start:start + batch_size].to(device))
        out.append(tta_logits(model, x, hflip_tta))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, num_classes(model), device=device)


def predict_probas(models: list[torch.nn.Module], images: np.ndarray, hflip_tta: bool = False,
                   batch_size: int = EVAL_BATCH, workers: int | None = None) -> np.ndarray:
    """(n_models, N, C) float32 softmax of each model for (N, 48, 48) uint8 images, fp32
    (all models predict the same C classes).

    On the CPU the work is cut into (model, chunk of whole batches) pieces run by ``workers``
    single-threaded streams (default: one per core): fp32 inference of these small nets
    scales much better over independent streams than over intra-op threads (batches of 64,
    2 cores: ~1,100 vs ~600 images/s). Each image sees the same batches and one thread
    either way. Models on a GPU run one after the other.
    """
    for model in models:  # before the threads: predict_logits would convert it in each one
        model.eval().to(memory_format=torch.channels_last)
    out = np.zeros((len(models), len(images), num_classes(models[0]) if models else 0),
                   np.float32)
    on_cpu = all(next(m.parameters()).device.type == "cpu" for m in models)
    workers = workers or (torch.get_num_threads() if on_cpu else 1)
    step = batch_size * max(1, -(-len(images) // (batch_size * workers)))
    pieces = [(i, start) for i in range(len(models)) for start in range(0, len(images), step)]

    def run(piece: tuple[int, int]) -> None:
        i, start = piece
        logits = predict_logits(models[i], images[start:start + step], batch_size=batch_size,
                                hflip_tta=hflip_tta)
        out[i, start:start + step] = torch.softmax(logits, dim=1).cpu().numpy()

    if workers <= 1 or len(pieces) <= 1:
        for piece in pieces:
            run(piece)
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, pieces))
    finally:
        torch.set_num_threads(threads)
    return out


def score_splits(model: torch.nn.Module, splits: dict[str, Split],
                 device: torch.device | None = None, hflip_tta: bool = False
                 ) -> dict[str, dict[str, float]]:
    """Accuracy, macro-F1 and size of ``model`` on every labelled, non-empty split."""
    scores: dict[str, dict[str, float]] = {}
    for name, split in splits.items():
        if split.labels is None or len(split) == 0:
            continue
        preds = predict_logits(model, split.images, device, hflip_tta=hflip_tta
                               ).argmax(1).cpu().numpy()
        scores[name] = {"acc": accuracy(split.labels, preds),
                        "macro_f1": macro_f1(split.labels, preds), "n": len(split)}
    return scores
