"""Batched on-device augmentation vs per-sample torchvision/PIL DataLoader pipelines, side by side.

    .venv/bin/python scripts/bench_augment.py [--images 4096] [--batch 256] [--rounds 3]

The same images and the same transforms (flip, rotation, scale, translation: the
``AugmentConfig`` of ``scripts/bench_train.py``) go through

* ``augment_batch`` on the CPU with 1 thread and with all cores' threads, and on CUDA when
  available (plus a split of its CPU time into matrices / sampling grid / grid_sample,
  and torch's affine_grid for reference);
* a per-sample PIL DataLoader with ``num_workers=0`` (one core, the main process);
* the same DataLoader with ``--workers`` worker processes (default 2 = this machine's cores),
  persistent, so worker start-up is not counted, only steady state.

Each pipeline produces float batches (N, 1, 48, 48) in [0, 1] on its device. Rounds run every
pipeline in turn, so load on a shared machine hits all of them alike; the median round counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

# scripts/ is on sys.path when this file runs as a script; added for imports from elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import AUG, PilDataset  # the pipeline bench_train measures

from fer_ray.data.synthetic import make_synthetic
from fer_ray.train import augment_batch
from fer_ray.train.augment import random_affine_matrices, sampling_grid


def batched_pass(images: np.ndarray, batch: int, device: str,
                 threads: int = 0) -> Callable[[], int]:
    """One pass of augment_batch over uint8 images already resident on ``device``.

    threads: torch intra-op threads for this pass (0: leave as is), restored afterwards.
    """
    data = torch.from_numpy(images).unsqueeze(1).to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def run() -> int:
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        for i in range(0, len(data), batch):
            out = augment_batch(data[i:i + batch].float().div_(255), AUG, gen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # kernels are asynchronous: count them all
        torch.set_num_threads(before)
        del out
        return len(data)

    return run


def loader_pass(images: np.ndarray, batch: int, workers: int) -> Callable[[], int]:
    """One pass of a per-sample PIL DataLoader (persistent workers: steady state only)."""
    loader = DataLoader(PilDataset(images), batch_size=batch, num_workers=workers,
                        persistent_workers=workers > 0, shuffle=True)

    def run() -> int:
        seen = 0
        for x in loader:
            seen += x.shape[0]
        return seen

    return run


def breakdown(batch: int, threads: int, repeats: int = 10) -> dict[str, float]:
    """Milliseconds per CPU batch of augment_batch's three steps (where the time goes)."""
    x = torch.rand(batch, 1, 48, 48)
    gen = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    theta = random_affine_matrices(batch, AUG, gen, x.device)
    grid = sampling_grid(theta, x.shape[2], x.shape[3])
    steps: dict[str, Callable[[], object]] = {
        "matrices": lambda: random_affine_matrices(batch, AUG, gen, x.device),
        "sampling_grid": lambda: sampling_grid(theta, x.shape[2], x.shape[3]),
        "(F.affine_grid)": lambda: F.affine_grid(theta, list(x.shape), align_corners=False),
        "grid_sample": lambda: F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                             align_corners=False),
    }
    out = {}
    for name, step in steps.items():
        step()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        out[name] = (time.perf_counter() - start) / repeats * 1e3
    torch.set_num_threads(before)
    return out


def measure(run: Callable[[], int]) -> float:
    start = time.perf_counter()
    n = run()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="passes per pipeline, interleaved")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="DataLoader worker processes for the multi-process variant")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA variant")
    p.add_argument("--quick", action="store_true", help="1024 images, 2 rounds")
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds = 1024, 2
    images = make_synthetic(args.images, seed=0).images
    print(f"{args.images} images 48x48, batch {args.batch}, {args.rounds} rounds, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs",
          flush=True)

    cpus = os.cpu_count() or 1
    # One thread too: on a busy machine a multi-threaded op waits for its slowest thread.
    pipelines: dict[str, Callable[[], int]] = {
        f"batched, CPU {t} thread{'s' * (t > 1)}": batched_pass(images, args.batch, "cpu", t)
        for t in sorted({1, cpus})}
    pipelines |= {
        "PIL DataLoader, 0 workers": loader_pass(images, args.batch, 0),
        f"PIL DataLoader, {args.workers} workers": loader_pass(images, args.batch, args.workers),
    }
    if torch.cuda.is_available() and not args.no_cuda:
        pipelines["batched, CUDA"] = batched_pass(images, args.batch, "cuda")
    for run in pipelines.values():
        run()  # warm-up: worker start, allocator, CUDA context and kernels
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, run in pipelines.items():
            rates[name].append(measure(run))
    median = {name: statistics.median(r) for name, r in rates.items()}

    print(f"\n{'pipeline':36}{'images/s':>12}   rounds")
    for name, value in median.items():
        print(f"{name:36}{value:12.0f}   " + " ".join(f"{r:.0f}" for r in rates[name]))
    for t in sorted({1, cpus}):
        parts = breakdown(args.batch, t)
        print(f"CPU ms per batch of {args.batch}, {t} thread(s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    names = list(median)
    print()
    for fast in [n for n in names if n.startswith("batched")]:
        for slow in [n for n in names if n.startswith("PIL")]:
            ratio = median[fast] / median[slow]
            verdict = "met" if ratio >= 10 else "not met"
            print(f"ratio {fast} / {slow}: {ratio:.1f}x (goal >= 10x: {verdict})")


if __name__ == "__main__":
    main()
