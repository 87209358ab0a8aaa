"""Training: batched augmentation, a real (tiny) training run, early stopping, exact resume."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_ray.config import AugmentConfig, TrainConfig, merge
from fer_ray.data import FerData
from fer_ray.errors import ConfigError, DataError
from fer_ray.metrics import accuracy
from fer_ray.models.io import load_model, save_model
from fer_ray.train import Trainer, augment_batch, fit, get_preset, predict_logits
from fer_ray.train.augment import random_affine_matrices, sampling_grid

TINY = merge(get_preset("tiny"), {"optim": {"batch_size": 32, "lr": 3e-3}})
NO_AUG = AugmentConfig(hflip=0.0, rotation=0.0, scale=0.0, translate=0.0)


def test_augment_off_is_identity_and_flip_is_exact() -> None:
    x = torch.rand(4, 1, 48, 48)
    gen = torch.Generator().manual_seed(0)
    assert augment_batch(x, NO_AUG, gen) is x
    flipped = augment_batch(x, AugmentConfig(hflip=1.0, rotation=0, scale=0, translate=0), gen)
    torch.testing.assert_close(flipped, torch.flip(x, dims=[3]), atol=1e-5, rtol=0)


def test_cached_sampling_grid_equals_affine_grid() -> None:
    theta = random_affine_matrices(16, AugmentConfig(hflip=0.5, rotation=30, scale=0.2,
                                                     translate=0.1),
                                   torch.Generator().manual_seed(0), torch.device("cpu"))
    expected = torch.nn.functional.affine_grid(theta, [16, 1, 48, 40], align_corners=False)
    torch.testing.assert_close(sampling_grid(theta, 48, 40), expected, atol=1e-6, rtol=0)


def test_augment_is_per_sample_and_seeded() -> None:
    x = torch.rand(1, 1, 48, 48).repeat(8, 1, 1, 1)  # eight copies of one image
    cfg = AugmentConfig(hflip=0.5, rotation=20, scale=0.2, translate=0.1)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    flat = a.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0.1  # every copy moved differently
    theta = random_affine_matrices(10_000, cfg, torch.Generator().manual_seed(2),
                                   torch.device("cpu"))
    det = torch.linalg.det(theta[:, :, :2])
    # |det| = 1/zoom^2 with zoom in [0.8, 1.2]; negative determinant = flipped, about half.
    assert det.abs().min() >= 1 / 1.2**2 - 1e-4 and det.abs().max() <= 1 / 0.8**2 + 1e-4
    assert 0.45 < (det < 0).float().mean() < 0.55


def test_fit_learns_and_returns_best_epoch_probabilities(small_data: FerData) -> None:
    result = fit(merge(TINY, {"epochs": 3}), small_data, "cpu")
    assert len(result.history) == 3
    majority = np.bincount(small_data.val.labels).max() / len(small_data.val)  # type: ignore[arg-type]
    assert result.best["val_acc"] > majority + 0.05  # learned something beyond "always happy"
    assert result.val_probs.shape == (len(small_data.val), 7)
    np.testing.assert_allclose(result.val_probs.sum(1), 1.0, atol=1e-5)
    assert accuracy(result.val_labels, result.val_probs.argmax(1)) == result.best["val_acc"]
    # The returned model is the best epoch's: it reproduces the stored probabilities.
    logits = predict_logits(result.model, small_data.val.images)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), result.val_probs, atol=1e-5)


def test_early_stopping_stops_on_plateau(small_data: FerData) -> None:
    # No batch norm and a vanishing lr: validation accuracy cannot move, so patience 2 stops
    # training after 1 + 2 epochs.
    frozen = merge(TINY, {"epochs": 10, "patience": 2, "model": {"batch_norm": False},
                          "optim": {"optimizer": "sgd", "lr": 1e-12, "momentum": 0.0}})
    result = fit(frozen, small_data, "cpu")
    assert len(result.history) == 3 and result.stopped_early


def test_resume_from_state_is_exact(small_data: FerData) -> None:
    cfg = merge(TINY, {"epochs": 2, "optim": {"schedule": "cosine"}})
    straight = Trainer(cfg, small_data.train, small_data.val, "cpu")
    straight.run_epoch()
    straight.run_epoch()

    first = Trainer(cfg, small_data.train, small_data.val, "cpu")
    first.run_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Trainer(cfg, small_data.train, small_data.val, "cpu")
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.run_epoch()
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


# Every optimizer a config can name: tests/test_math.py, section 4 (known steps by hand).


def test_save_and_load_reproduce_predictions(tmp_path: Path, small_data: FerData) -> None:
    result = fit(merge(TINY, {"epochs": 1}), small_data, "cpu")
    save_model(result.model, tmp_path / "run", TINY)
    model, config = load_model(tmp_path / "run")
    assert config == TINY
    torch.testing.assert_close(predict_logits(model, small_data.val.images),
                               predict_logits(result.model, small_data.val.images))
    (tmp_path / "run" / "model.safetensors").write_bytes(b"\x80\x04corrupt")
    with pytest.raises(DataError, match="model.safetensors: cannot load weights"):
        load_model(tmp_path / "run")


def test_planted_pickle_is_never_executed(tmp_path: Path, small_data: FerData) -> None:
    """A weights file that is really a pickle with a payload is refused, and runs nothing."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    save_model(fit(merge(TINY, {"epochs": 1}), small_data, "cpu").model, tmp_path / "run", TINY)
    torch.save({"x": Payload()}, tmp_path / "run" / "model.safetensors")
    with pytest.raises(DataError):
        load_model(tmp_path / "run")
    assert not marker.exists()


def test_cuda_request_without_gpu_is_a_clear_error(small_data: FerData) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no GPU"):
        Trainer(TrainConfig(), small_data.train, small_data.val, "cuda")
