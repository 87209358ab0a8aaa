"""Training throughput on this machine, and batched vs per-sample augmentation, side by side.

    .venv/bin/python scripts/bench_train.py [--device cpu] [--images 2048]

Prints images/s of training steps (forward + backward + optimizer, augmentation on) for the
small preset and for seed_hw3, and images/s of the batched on-device augmentation vs a
per-sample torchvision/PIL DataLoader pipeline doing the same transforms, with the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from fer_ray.config import AugmentConfig, merge
from fer_ray.data.synthetic import make_synthetic
from fer_ray.train import Trainer, augment_batch, get_preset

AUG = AugmentConfig(hflip=0.5, rotation=10.0, scale=0.1, translate=0.1)


def train_throughput(preset: str, images: np.ndarray, labels: np.ndarray, batch: int,
                     device: str, min_seconds: float) -> float:
    """Training images/s over whole epochs of ``images`` (after one warm-up epoch)."""
    from fer_ray.data import Split

    cfg = merge(get_preset(preset), {"optim": {"batch_size": batch}, "epochs": 100})
    split = Split(images, labels, "bench")
    trainer = Trainer(cfg, split, split, device)
    trainer.train_epoch()  # warm-up (allocations, cudnn autotune)
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        trainer.train_epoch()
        seen += len(images) // batch * batch
    return seen / (time.perf_counter() - start)


class PilDataset(Dataset[torch.Tensor]):
    """The usual per-sample pipeline: PIL image -> torchvision transforms -> tensor."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.transform = transforms.Compose([
            transforms.RandomHorizontalFlip(AUG.hflip),
            transforms.RandomAffine(degrees=AUG.rotation, translate=(AUG.translate,) * 2,
                                    scale=(1 - AUG.scale, 1 + AUG.scale)),
            transforms.ToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.fromarray(self.images[i]))


def augment_throughput(images: np.ndarray, batch: int, device: str) -> tuple[float, float]:
    """(batched on-device images/s, per-sample DataLoader images/s) over the same images."""
    data = torch.from_numpy(images).unsqueeze(1).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    augment_batch(data[:batch].float() / 255, AUG, gen)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(data), batch):
        out = augment_batch(data[i:i + batch].float().div_(255), AUG, gen)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    batched = len(data) / (time.perf_counter() - start)
    del out

    loader = DataLoader(PilDataset(images), batch_size=batch, num_workers=0)
    start = time.perf_counter()
    for x in loader:
        x.to(device)
    per_sample = len(images) / (time.perf_counter() - start)
    return batched, per_sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=10.0, help="minimum timing per model")
    args = p.parse_args()
    split = make_synthetic(args.images, seed=0)
    assert split.labels is not None
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    small = train_throughput("small", split.images, split.labels, 64, args.device, args.seconds)
    print(f"train small (16/32/64, batch 64):   {small:8.0f} images/s"
          f"  -> {28709 / small:6.0f} s per FER2013 epoch")
    n_seed = 64 if args.device == "cpu" else args.images
    seed = train_throughput("seed_hw3", split.images[:n_seed], split.labels[:n_seed], 16,
                            args.device, args.seconds)
    print(f"train seed_hw3 (batch 16):          {seed:8.1f} images/s"
          f"  -> {28709 / seed / 60:6.0f} min per FER2013 epoch")

    batched, per_sample = augment_throughput(split.images, 256, args.device)
    print(f"augment batched on-device:          {batched:8.0f} images/s")
    print(f"augment per-sample PIL DataLoader:  {per_sample:8.0f} images/s")
    print(f"ratio batched / per-sample:         {batched / per_sample:8.1f}x")


if __name__ == "__main__":
    main()
