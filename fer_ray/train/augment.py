"""Per-sample random augmentation of whole batches on the device.

Flip, rotation, scale and translation are folded into one random affine matrix per image
and applied with a single ``grid_sample`` call, so a batch of any size costs one kernel
launch instead of a Python loop over images. Random crops (whole-pixel shifts) and random
erasing are one gather / one masked select per batch. Mixup and CutMix mix a batch with a
shuffled copy of itself and return both label sets with their weight (``mix_batch``).

Every random draw comes from the trainer's ``generator``, so a run (and a resumed run) is
reproducible from its seed.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from fer_ray.config import AugmentConfig


def is_identity(config: AugmentConfig) -> bool:
    """Whether the per-image transforms leave images unchanged (mixing is separate)."""
    return _affine_off(config) and config.crop == 0 and config.erasing == 0


def _affine_off(config: AugmentConfig) -> bool:
    return config.hflip == 0 and config.rotation == 0 and config.scale == 0 and (
        config.translate == 0
    )


def random_affine_matrices(n: int, config: AugmentConfig, generator: torch.Generator,
                           device: torch.device) -> torch.Tensor:
    """(n, 2, 3) float32 matrices mapping output to input coordinates (affine_grid's theta)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) * (high - low) + low

    angle = uniform(-config.rotation, config.rotation) * (math.pi / 180.0)
    zoom = uniform(1.0 - config.scale, 1.0 + config.scale)
    # affine_grid works in [-1, 1] coordinates, so a shift of a fraction f of the side is 2f.
    tx = uniform(-config.translate, config.translate) * 2.0
    ty = uniform(-config.translate, config.translate) * 2.0
    flip = torch.where(torch.rand(n, generator=generator, device=device) < config.hflip,
                       -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], dim=1), torch.stack([sin * flip, cos, ty], dim=1)],
        dim=1,
    )
    return theta


@functools.lru_cache(maxsize=8)
def _base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype
               ) -> torch.Tensor:
    """(H*W, 3) pixel-centre coordinates (x, y, 1) in [-1, 1], as affine_grid uses them."""
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(-1, 3)


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W, 2) sampling grid: ``F.affine_grid(theta, ..., align_corners=False)``, with
    the base grid cached; affine_grid rebuilds it per call, most of the augmentation's cost."""
    base = _base_grid(height, width, theta.device, theta.dtype)
    # One (H*W, 3) x (3, N*2) GEMM; a batched matmul with an inner size of 3 is ~5x slower.
    return torch.einsum("pk,nck->npc", base, theta).reshape(-1, height, width, 2)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` zero pixels and take a random crop of the original size, per image.

    x: (N, C, H, W) -> same shape; each image shifted by whole pixels in [-pad, pad].
    """
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: (N, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def random_erasing(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """With probability ``prob`` per image, fill one random rectangle with uniform noise.

    Zhong et al. (2017): area 2-25 % of the image, aspect ratio 0.3-3.3 (log-uniform).
    x: (N, C, H, W) float in [0, 1] -> same shape.
    """
    n, _, h, w = x.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=x.device) * (high - low) + low

    area, log_ratio = uniform(0.02, 0.25), uniform(math.log(0.3), math.log(3.3))
    eh = (torch.sqrt(area * torch.exp(log_ratio)) * h).clamp(1, h)
    ew = (torch.sqrt(area / torch.exp(log_ratio)) * w).clamp(1, w)
    top, left = uniform(0, 1) * (h - eh), uniform(0, 1) * (w - ew)
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :]
    inside = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
              & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]))
    chosen = torch.rand(n, generator=generator, device=x.device) < prob
    mask = (inside & chosen[:, None, None])[:, None]  # (N, 1, H, W)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(mask, noise, x)


def augment_batch(x: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Randomly flip/rotate/scale/shift, crop and erase each image.

    x: (N, C, H, W) float in [0, 1] -> same shape.
    """
    if not _affine_off(config):
        theta = random_affine_matrices(x.shape[0], config, generator, x.device).to(x.dtype)
        grid = sampling_grid(theta, x.shape[2], x.shape[3])
        # "border" repeats edge pixels: black corners would be a cue no real face has.
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    if config.crop > 0:
        x = random_crop(x, config.crop, generator)
    if config.erasing > 0:
        x = random_erasing(x, config.erasing, generator)
    return x


def mix_batch(x: torch.Tensor, y: torch.Tensor, config: AugmentConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a shuffled copy.

    x: (N, C, H, W), y: (N,) labels or (N, K) target rows -> (mixed x, partner targets
    y[perm], lam). The loss is ``lam * CE(y) + (1 - lam) * CE(partner)``. With both
    alphas > 0, each batch uses one of the two at random; with both 0, x is returned as is
    with lam = 1.
    """
    kinds = [k for k, alpha in (("mixup", config.mixup), ("cutmix", config.cutmix))
             if alpha > 0]
    if not kinds:
        return x, y, 1.0
    # torch has no seeded Beta sampler: one seed from the generator drives numpy's.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device).item())
    rng = np.random.default_rng(seed)
    kind = kinds[int(rng.integers(len(kinds)))]
    alpha = config.mixup if kind == "mixup" else config.cutmix
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    if kind == "mixup":
        return x * lam + x[perm] * (1.0 - lam), y[perm], lam
    h, w = x.shape[2], x.shape[3]
    cut_h, cut_w = int(h * math.sqrt(1.0 - lam)), int(w * math.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    # The weight is the share of the image each label actually covers after clipping.
    return mixed, y[perm], 1.0 - (bottom - top) * (right - left) / (h * w)
