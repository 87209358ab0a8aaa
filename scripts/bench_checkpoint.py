"""Bytes a trial writes per epoch: the checkpoint before and after "weights once".

    .venv/bin/python scripts/bench_checkpoint.py [--quick]

For the seed network (seed_hw3) and the widest net of the ``paper`` space that fits a 48x48
input (5 blocks of three 3x3 convs with 512 filters, a 256-filter stem, dense 1024; a sixth
block would see a 1x1 map and is refused as invalid), with Adam's moments in place, it
writes one epoch's checkpoint folder the way the trainable does (``_report_epoch``: weights
as safetensors, config.json, validation probabilities, trainer_state.pt without the weights)
and the way it did before (trainer_state.pt also holding the model's state dict), and prints
the bytes of each and their ratio. Bytes do not depend on the device, so this runs on a CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from fer_ray.config import ModelConfig, TrainConfig
from fer_ray.models import build_model
from fer_ray.models.io import save_model
from fer_ray.models.vgg_fer import MODEL_PRESETS
from fer_ray.train.optim import build_optimizer

WIDEST_PAPER = ModelConfig(filters=(512,) * 5, convs_per_block=(3,), dropout=(0.1,),
                           kernel_size=3, padding="same", stem_filters=256,
                           dense_units=(1024,), dense_dropout=0.5)
N_VAL = 2872  # FER2013 Training's 10 % validation split


def checkpoint_bytes(model_config: ModelConfig, folder: Path, weights_once: bool) -> int:
    """Bytes of one epoch's checkpoint folder for a model with Adam's state filled in."""
    config = TrainConfig(model=model_config)
    model = build_model(model_config)
    optimizer = build_optimizer(model.parameters(), config.optim)
    for p in model.parameters():  # one step with zero gradients creates Adam's moments
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "torch_rng": torch.get_rng_state(), "epoch": 1}
    if weights_once:
        state.pop("model")
    save_model(model, folder, config, extra={"epoch": 1})
    probs = np.full((N_VAL, 7), 1 / 7, np.float32)
    np.save(folder / "val_probs.npy", probs)
    np.save(folder / "val_labels.npy", np.zeros(N_VAL, np.int64))
    torch.save(state, folder / "trainer_state.pt")
    return sum(f.stat().st_size for f in folder.iterdir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the seed network only")
    args = p.parse_args()
    nets = {"seed_hw3": MODEL_PRESETS["seed_hw3"]}
    if not args.quick:
        nets["widest paper net"] = WIDEST_PAPER
    print(f"{'network':<18}{'params':>12}{'before MB':>12}{'after MB':>12}{'ratio':>8}")
    for name, config in nets.items():
        params = sum(p.numel() for p in build_model(config).parameters())
        with tempfile.TemporaryDirectory() as tmp:
            before = checkpoint_bytes(config, Path(tmp) / "before", weights_once=False)
            after = checkpoint_bytes(config, Path(tmp) / "after", weights_once=True)
        print(f"{name:<18}{params:>12,}{before / 1e6:>12.1f}{after / 1e6:>12.1f}"
              f"{after / before:>8.3f}")
        print(f"ratio after/before {name}: {after / before:.3f} "
              f"({after / (4 * params):.2f}x the fp32 parameter bytes, was "
              f"{before / (4 * params):.2f}x)")


if __name__ == "__main__":
    main()
