"""Training recipes: crop, erasing, mixup/cutmix, schedules, precision, deadline planning."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_ray.config import AugmentConfig, OptimConfig, TrainConfig, merge
from fer_ray.data import FerData
from fer_ray.errors import ConfigError
from fer_ray.train import Trainer, fit, get_preset
from fer_ray.train.augment import mix_batch, random_crop, random_erasing
from fer_ray.train.loop import pixel_stats, resolve_precision
from fer_ray.train.optim import StepSchedule, build_scheduler, shorten_schedule

TINY = merge(get_preset("tiny"), {"optim": {"batch_size": 32, "lr": 3e-3}})


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_shifts_by_whole_pixels_with_zero_fill() -> None:
    x = torch.rand(64, 1, 48, 48) + 1.0  # no zeros in the images themselves
    out = random_crop(x, 4, _gen())
    assert out.shape == x.shape
    for i in range(64):  # every output is the input shifted by (dy, dx) in [-4, 4]
        zero_rows = int((out[i, 0] == 0).all(dim=1).sum())
        zero_cols = int((out[i, 0] == 0).all(dim=0).sum())
        assert zero_rows <= 4 and zero_cols <= 4
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if torch.equal(
            out[i, 0, max(-dy, 0):48 - max(dy, 0), max(-dx, 0):48 - max(dx, 0)],
            x[i, 0, max(dy, 0):48 - max(-dy, 0), max(dx, 0):48 - max(-dx, 0)])]
        assert found, f"image {i} is not a whole-pixel shift"
    assert torch.equal(random_crop(x, 4, _gen()), out)  # seeded


def test_random_erasing_erases_one_rectangle_in_about_p_of_the_images() -> None:
    x = torch.full((2000, 1, 48, 48), 0.5)
    out = random_erasing(x, 0.25, _gen())
    changed = (out != x).flatten(1)
    erased = changed.any(dim=1)
    assert 0.21 < erased.float().mean() < 0.29
    area = changed[erased].float().mean(dim=1)
    assert area.min() > 0.005 and area.max() < 0.3  # 2-25 % of the image (noise may hit 0.5)
    box = changed[erased.nonzero()[0, 0]].reshape(48, 48)
    rows, cols = box.any(dim=1).nonzero(), box.any(dim=0).nonzero()
    inside = box[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert inside.float().mean() > 0.95  # one filled rectangle, not scattered pixels


def test_mixup_and_cutmix_weights_match_what_they_mix() -> None:
    x = torch.zeros(8, 1, 48, 48)
    x[:4] = 1.0  # images 0-3 white, 4-7 black
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    mixed, partner, lam = mix_batch(x, y, AugmentConfig(mixup=0.4), _gen(3))
    assert 0.0 < lam < 1.0
    white_partner = (partner == 1).float()[:, None, None, None]
    expected = lam * x + (1 - lam) * white_partner.expand_as(x)
    torch.testing.assert_close(mixed, expected)
    mixed, partner, lam = mix_batch(x, y, AugmentConfig(cutmix=1.0), _gen(4))
    pasted = (mixed != x).flatten(1).float().mean(dim=1)
    differs = partner != y  # only a partner of the other colour changes pixels
    assert torch.allclose(pasted[differs], torch.full_like(pasted[differs], 1 - lam))
    assert mix_batch(x, y, AugmentConfig(), _gen())[2] == 1.0


def test_onecycle_and_cosine_schedules_have_their_shape() -> None:
    one = StepSchedule("onecycle", 0, 100)
    assert one(0) == pytest.approx(1 / 25) and one(25) == pytest.approx(1.0)
    assert one(100) == pytest.approx(1 / 25e4) and max(one(s) for s in range(101)) <= 1.0
    cos = StepSchedule("cosine", 10, 110)
    assert [cos(s) for s in (0, 9)] == pytest.approx([0.1, 1.0])
    assert cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)


def test_shortened_schedule_anneals_by_the_new_end() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = build_scheduler(opt, OptimConfig(schedule="cosine"), 100, 10)
    for _ in range(20):
        opt.step()
        sched.step()  # type: ignore[union-attr]
    shorten_schedule(sched, 40)
    for _ in range(20):
        opt.step()
        sched.step()  # type: ignore[union-attr]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    restored = build_scheduler(torch.optim.SGD([param], lr=0.1), OptimConfig(), 100, 10)
    restored.load_state_dict(sched.state_dict())  # type: ignore[union-attr]
    assert restored.lr_lambdas[0].total_steps == 40  # type: ignore[union-attr]


@pytest.mark.parametrize(("flags", "expected"), [
    ("flags : fpu sse avx2 amx_bf16 amx_tile", "bf16"),
    ("flags : fpu sse avx2 avx512f avx512_bf16", "bf16"),
    ("flags : fpu sse avx2 avx512f avx512bw", "fp32"),  # bf16 only emulated: slower than fp32
    (None, "fp32"),  # no /proc/cpuinfo
])
def test_precision_rule(flags: str | None, expected: str, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """auto is bf16 exactly where the CPU has native bf16 (AMX or AVX512-BF16); bf16 and
    fp32 are taken as given, anything else is refused."""
    from fer_ray.train import loop

    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor : 0\n{flags}\n")
    real_path = loop.Path
    monkeypatch.setattr(loop, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    loop._cpu_has_native_bf16.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert resolve_precision("auto", cpu) == expected
        assert resolve_precision("fp32", cpu) == "fp32"
        assert resolve_precision("bf16", cpu) == "bf16"
        with pytest.raises(ConfigError, match="precision: 'fp16' is not auto, bf16 or fp32"):
            resolve_precision("fp16", cpu)
    finally:
        loop._cpu_has_native_bf16.cache_clear()


def test_pixel_stats_match_numpy() -> None:
    images = np.random.default_rng(0).integers(0, 256, (300, 48, 48), dtype=np.uint8)
    mean, std = pixel_stats(images)
    pixels = images.astype(np.float64) / 255.0
    assert mean == pytest.approx(pixels.mean(), rel=1e-12)
    assert std == pytest.approx(pixels.std(), rel=1e-9)


def test_fit_with_a_deadline_plans_fewer_epochs_and_ends_in_time(small_data: FerData) -> None:
    config = merge(TINY, {"epochs": 500})
    started = time.time()
    result = fit(config, small_data, "cpu", deadline=started + 8.0)
    wall = time.time() - started
    planned = result.history[-1]["planned_epochs"]
    assert 1 <= len(result.history) == planned < 500
    assert result.extra["config"].epochs == planned
    assert wall < 8.0 * 1.25, wall
    # planned from the first steps' speed already, not after a whole epoch at 500's schedule
    assert result.history[0]["planned_epochs"] == pytest.approx(planned, abs=max(2, planned / 3))


def test_spatial_dropout_drops_whole_feature_maps(small_data: FerData) -> None:
    config = merge(TINY, {"model": {"spatial_dropout": True, "dropout": [0.5]}})
    trainer = Trainer(config, small_data.train, small_data.val, "cpu")
    drops = [m for m in trainer.model.features if isinstance(m, torch.nn.Dropout2d)]
    assert len(drops) == len(config.model.filters)
    drops[0].train()
    out = drops[0](torch.ones(4, 8, 6, 6))
    per_map = out.flatten(2)
    assert torch.all((per_map == 0).all(dim=2) | (per_map != 0).all(dim=2))


def _conv_output_dtypes(config: TrainConfig, data: FerData) -> dict[str, set[torch.dtype]]:
    """The dtypes the first conv layer's output had in training and in evaluation, for one
    epoch of ``config``."""
    trainer = Trainer(config, data.train, data.val, "cpu")
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen: dict[str, set[torch.dtype]] = {"train": set(), "eval": set()}
    conv.register_forward_hook(lambda m, i, out: seen[
        "train" if m.training else "eval"].add(out.dtype))
    metrics = trainer.run_epoch()
    assert math.isfinite(metrics["train_loss"]) and trainer.precision == config.precision
    assert trainer.val_probs.dtype == np.float32
    np.testing.assert_allclose(trainer.val_probs.sum(1), 1.0, atol=1e-5)
    return seen


def test_bf16_training_runs_under_bf16_autocast_and_evaluates_in_fp32(
        small_data: FerData) -> None:
    """precision bf16: the convolutions compute in bf16 while training; evaluation (what a
    checkpoint's validation probabilities come from) stays fp32. fp32 is fp32 throughout."""
    bf16 = _conv_output_dtypes(merge(TINY, {"epochs": 1, "precision": "bf16"}), small_data)
    assert bf16 == {"train": {torch.bfloat16}, "eval": {torch.float32}}
    fp32 = _conv_output_dtypes(merge(TINY, {"epochs": 1, "precision": "fp32"}), small_data)
    assert fp32 == {"train": {torch.float32}, "eval": {torch.float32}}
    assert TrainConfig().precision == "auto"
