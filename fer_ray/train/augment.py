"""Per-sample random augmentation of whole batches on the device.

Flip, rotation, scale and translation are folded into one random affine matrix per image
and applied with a single ``grid_sample`` call, so a batch of any size costs one kernel
launch instead of a Python loop over images.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from fer_ray.config import AugmentConfig


def is_identity(config: AugmentConfig) -> bool:
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


def augment_batch(x: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Randomly flip/rotate/scale/shift each image. x: (N, C, H, W) float -> same shape."""
    if is_identity(config):
        return x
    theta = random_affine_matrices(x.shape[0], config, generator, x.device).to(x.dtype)
    grid = sampling_grid(theta, x.shape[2], x.shape[3])
    # "border" repeats edge pixels: black corners would be a cue no real face has.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
