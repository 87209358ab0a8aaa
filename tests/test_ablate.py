"""``python -m fer_ray.ablate``: a tiny real ablation, the summary table, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_ray.ablate import main, variants
from fer_ray.data.synthetic import make_synthetic
from fer_ray.report.analysis import summarize
from fer_ray.train.presets import get_preset


def test_tiny_ablation_writes_csv_md_png(tmp_path: Path) -> None:
    test = make_synthetic(70, seed=9)
    assert test.labels is not None
    np.savez(tmp_path / "extra.npz", images=test.images, labels=test.labels)
    out = tmp_path / "abl"
    assert main(["--preset", "tiny", "--epochs", "2", "--seeds", "2", "--synthetic-size", "600",
                 "--subsample", "300", "--test", str(tmp_path / "extra.npz"),
                 "--out", str(out)]) == 0
    runs = pd.read_csv(out / "ablation.csv")
    assert len(runs) == 8 and sorted(runs["seed"].unique()) == [0, 1]
    assert list(dict.fromkeys(runs["variant"])) == [
        "no augmentation, fixed epochs", "flip only, fixed epochs",
        "full augmentation, fixed epochs", "full augmentation, early stopping (patience 2)"]
    assert runs["val_acc"].between(0, 1).all() and runs["test_acc.test"].between(0, 1).all()
    assert (runs["epochs_run"] <= 2).all() and (runs["seconds"] > 0).all()
    fixed = runs[runs["early_stopping"] == 0]
    assert (fixed["epochs_run"] == 2).all()
    md = (out / "ablation.md").read_text()
    assert md.count(" ± ") >= 4 * 3 and "| test acc % |" in md
    with Image.open(out / "ablation.png") as image:
        assert image.size[0] >= 400 and image.size[1] >= 300
        assert np.asarray(image.convert("L"), dtype=float).std() > 10


def test_variants_switch_only_what_they_name() -> None:
    config = get_preset("seed_hw3")  # its own patience 10 and rotation 15
    v = list(variants(config, patience=3).values())
    assert [c.patience for c in v] == [0, 0, 0, 3]
    none, flip, full, early = (c.augment for c in v)
    assert (none.hflip, none.rotation, none.scale, none.translate) == (0, 0, 0, 0)
    assert (flip.hflip, flip.rotation, flip.scale) == (0.5, 0, 0)
    assert full == early == config.augment
    assert all(c.model == config.model for c in v)


def test_summary_mean_and_std_known_answer() -> None:
    runs = pd.DataFrame({"variant": ["b", "b", "a", "a"], "seed": [0, 1, 0, 1],
                         "val_acc": [0.5, 0.7, 0.4, 0.4], "epochs_run": [3, 5, 4, 4],
                         "seconds": [1.0, 3.0, 2.0, 2.0]})
    text = summarize(runs)
    assert list(text.index) == ["b", "a"]  # run order, not alphabetical
    assert text.loc["b", "val acc %"] == "60.0 ± 14.1"
    assert text.loc["a", "epochs run"] == "4.0 ± 0.0" and text.loc["b", "seeds"] == 2
    numbers = summarize(runs, text=False)
    assert numbers.loc["b", "val_acc mean"] == pytest.approx(0.6)
    assert numbers.loc["b", "seconds std"] == pytest.approx(np.sqrt(2))


def test_config_file_is_used(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"config": {"model": {"filters": [4, 4], "convs_per_block": [1],
                                                    "dropout": [0.0], "dense_units": [8]},
                                          "epochs": 1}}))
    out = tmp_path / "abl"
    assert main(["--config", str(cfg), "--seeds", "1", "--synthetic-size", "300",
                 "--out", str(out)]) == 0
    md = (out / "ablation.md").read_text()
    assert "filters [4, 4]; 1 epochs" in md and len(pd.read_csv(out / "ablation.csv")) == 4


@pytest.mark.parametrize(("args", "expected"), [
    (["--seeds", "0"], "--seeds"),
    (["--config", "nope.json"], "nope.json"),
    (["--data", "/nonexistent/fer"], "/nonexistent/fer"),
])
def test_bad_input_is_one_line(args: list[str], expected: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
