"""Inference with the networks: fp32 evaluation, batched, channels_last, on any device.

Used by training (validation each epoch), the ensemble build, predict and the report alike,
so the probabilities a checkpoint stores are what prediction computes for the same images.
Images are (N, 48, 48) uint8 throughout; models take (N, 1, 48, 48) float in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from fer_ray.data import NUM_CLASSES, Split
from fer_ray.errors import ConfigError
from fer_ray.metrics import accuracy, macro_f1
from fer_ray.tta import SHIFT_PX, SHIFTS, TTA_VIEWS, TtaMode

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


def tta_views(x: torch.Tensor, mode: TtaMode) -> list[torch.Tensor]:
    """The views (each (N, 1, H, W)) of float images x (N, 1, H, W) for a TTA mode, in the
    order ``fer_ray.tta`` documents (each mode's views begin with the cheaper mode's).

    Shifts pad by repeating the edge pixels and slice with constant bounds, so the ONNX
    export traces them to Pad(edge) + Slice, independent of the batch size.
    """
    views = [x]
    if TTA_VIEWS[mode] >= 2:
        views.append(torch.flip(x, dims=[3]))
    if mode == "flip_shift":
        s = SHIFT_PX
        for base in list(views):
            padded = F.pad(base, (s, s, s, s), mode="replicate")
            for dx, dy in SHIFTS:
                # view[i, j] = base[i - dy, j - dx] (edges repeated); padded is 2s larger.
                rows = slice(s - dy, (s - dy - 2 * s) or None)
                cols = slice(s - dx, (s - dx - 2 * s) or None)
                views.append(padded[:, :, rows, cols])
    return views


def tta_view_logits(model: torch.nn.Module, x: torch.Tensor, mode: TtaMode) -> torch.Tensor:
    """Logits (n_views, N, C) float32 of each TTA view of float images x (N, 1, H, W)."""
    # One forward pass per view, each of the caller's batch size: on the CPU batches of
    # EVAL_BATCH run faster per image than one of n_views times that (see EVAL_BATCH).
    return torch.stack([model(view).float() for view in tta_views(x, mode)])


def tta_logits(model: torch.nn.Module, x: torch.Tensor, mode: TtaMode) -> torch.Tensor:
    """Logits (N, C) float32 of float images x (N, 1, H, W): the mean of the logits of the
    mode's views (``fer_ray.tta``). Also traced into the ONNX export, so both agree."""
    return tta_view_logits(model, x, mode).mean(0)


@torch.no_grad()
def predict_view_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor,
                        device: torch.device | None = None, batch_size: int = EVAL_BATCH,
                        tta: TtaMode = "none") -> torch.Tensor:
    """Logits (n_views, N, C) float32 on the model's device of each TTA view of (N, 48, 48)
    uint8 images, in fp32. The model is moved to channels_last (same weights, faster
    convolutions)."""
    device = device or next(model.parameters()).device
    data = images if isinstance(images, torch.Tensor) else to_device_images(images, device)
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, data.shape[0], batch_size):
        x = as_float_images(data[start:start + batch_size].to(device))
        out.append(tta_view_logits(model, x, tta))
    model.train(was_training)
    if not out:
        return torch.zeros(TTA_VIEWS[tta], 0, num_classes(model), device=device)
    return torch.cat(out, dim=1)


def predict_logits(model: torch.nn.Module, images: np.ndarray | torch.Tensor,
                   device: torch.device | None = None, batch_size: int = EVAL_BATCH,
                   tta: TtaMode = "none") -> torch.Tensor:
    """Logits (N, C) float32 on the model's device for (N, 48, 48) uint8 images, in fp32:
    with TTA the mean of the views' logits (``tta_logits``)."""
    return predict_view_logits(model, images, device, batch_size, tta).mean(0)


def predict_probas(models: Sequence[torch.nn.Module], images: np.ndarray,
                   tta: TtaMode = "none", batch_size: int = EVAL_BATCH,
                   workers: int | None = None) -> np.ndarray:
    """(n_models, N, C) float32 softmax of each model for (N, 48, 48) uint8 images, fp32,
    with the TTA mode ``tta``."""
    return predict_probas_by_mode(models, images, (tta,), batch_size, workers)[tta]


def predict_probas_by_mode(models: Sequence[torch.nn.Module], images: np.ndarray,
                           modes: Sequence[TtaMode], batch_size: int = EVAL_BATCH,
                           workers: int | None = None) -> dict[str, np.ndarray]:
    """mode -> (n_models, N, C) float32 softmax of each model with that TTA mode, for
    (N, 48, 48) uint8 images, in fp32. One pass over the views of the most expensive mode
    gives them all (a cheaper mode's views are its first ones).

    On the CPU the work is cut into (model, chunk of whole batches) pieces run by ``workers``
    single-threaded streams (default: one per core): fp32 inference of these small nets
    scales much better over independent streams than over intra-op threads (batches of 64,
    2 cores: ~1,100 vs ~600 images/s). Each image sees the same batches and one thread
    either way. Models on a GPU run one after the other.
    """
    for model in models:  # before the threads: predict_view_logits would convert it in each one
        model.eval().to(memory_format=torch.channels_last)
    classes = num_classes(models[0]) if models else 0
    out: dict[str, np.ndarray] = {
        mode: np.zeros((len(models), len(images), classes), np.float32) for mode in modes}
    widest = max(modes, key=TTA_VIEWS.__getitem__)
    on_cpu = all(next(m.parameters()).device.type == "cpu" for m in models)
    workers = workers or (torch.get_num_threads() if on_cpu else 1)
    step = batch_size * max(1, -(-len(images) // (batch_size * workers)))
    pieces = [(i, start) for i in range(len(models)) for start in range(0, len(images), step)]

    def run(piece: tuple[int, int]) -> None:
        i, start = piece
        views = predict_view_logits(models[i], images[start:start + step],
                                    batch_size=batch_size, tta=widest)
        for mode, probas in out.items():
            logits = views[:TTA_VIEWS[mode]].mean(0)
            probas[i, start:start + step] = torch.softmax(logits, dim=1).cpu().numpy()

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
                 device: torch.device | None = None, tta: TtaMode = "none"
                 ) -> dict[str, dict[str, float]]:
    """Accuracy, macro-F1 and size of ``model`` on every labelled, non-empty split."""
    scores: dict[str, dict[str, float]] = {}
    for name, split in splits.items():
        if split.labels is None or len(split) == 0:
            continue
        preds = predict_logits(model, split.images, device, tta=tta).argmax(1).cpu().numpy()
        scores[name] = {"acc": accuracy(split.labels, preds),
                        "macro_f1": macro_f1(split.labels, preds), "n": len(split)}
    return scores
