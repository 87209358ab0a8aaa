"""``python -m fer_ray.report`` on a real smoke experiment, and its helpers on known answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from PIL import Image

from fer_ray.experiment import USABLE
from fer_ray.report.analysis import (
    confusion_sentence,
    ensemble_size_curve,
    most_confused_pairs,
    param_importances,
    per_class_table,
    rebuild_study,
)
from fer_ray.report.cli import main
from fer_ray.report.document import Document, markdown_table
from fer_ray.report.inputs import launch_order

Experiment = tuple[Path, dict[str, Any]]

ALWAYS = ["class_distribution", "confusion_ensemble_validation", "confusion_single_validation",
          "learning_curves", "search_progress", "hyperparameters", "ensemble_size",
          "ensemble_weights", "calibration", "recall_rules", "coverage"]


@pytest.fixture(scope="module")
def report(smoke_experiment: Experiment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp, _ = smoke_experiment
    if not (exp / "ensemble" / "ensemble.json").is_file():
        from fer_ray.ensemble.cli import build_and_save

        build_and_save(exp, None, 3, "greedy", None)
    out = tmp_path_factory.mktemp("report")
    assert main(["--experiment", str(exp), "--out", str(out)]) == 0
    return out


def _check_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert width >= 400 and height >= 300, f"{path.name}: {width}x{height} px"
    assert pixels.std() > 10, f"{path.name} looks blank"


def test_every_figure_is_a_readable_png(report: Path, smoke_experiment: Experiment) -> None:
    results = pd.read_parquet(smoke_experiment[0] / "results.parquet")
    expected = list(ALWAYS)
    if results["status"].isin(USABLE).sum() >= 4:
        expected.append("importance")
    for name in expected:
        assert (report / f"{name}.png").is_file(), f"{name}.png missing"
    for path in report.glob("*.png"):
        _check_png(path)


def test_markdown_has_tables_and_sentences(report: Path) -> None:
    md = (report / "report.md").read_text()
    assert "| class | train n | train % | val n | val % |" in md
    assert "| class | support | ensemble P % | ensemble R % | ensemble F1 % | single P %" in md
    assert re.search(r"\w+ is predicted as \w+ for \d+ % of \w+ faces \(\d+ of \d+\)", md)
    for png in re.findall(r"\]\(([^)]+\.png)\)", md):  # every linked image exists
        assert (report / png).is_file()
    assert md.index("## 1. Class distribution") < md.index("## 2. Errors") \
        < md.index("## 3. Learning curves") < md.index("## 4. The search") \
        < md.index("## 5. The ensemble")


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    n_images = len(list(report.glob("*.png")))
    assert page.count("data:image/png;base64,") == n_images
    references = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert references and all(r.startswith("data:") for r in references)
    assert "<table>" in page and "<link" not in page and "<script" not in page


def test_ablation_is_included_when_present(smoke_experiment: Experiment, report: Path,
                                           tmp_path: Path) -> None:
    csv = tmp_path / "ablation.csv"
    pd.DataFrame({"variant": ["no augmentation, fixed epochs"] * 2 + ["flip only"] * 2,
                  "seed": [0, 1, 0, 1], "val_acc": [0.5, 0.6, 0.7, 0.7],
                  "test_acc.test": [0.4, 0.5, 0.6, 0.6], "epochs_run": [2, 2, 2, 2],
                  "seconds": [1.0, 1.0, 1.0, 1.0]}).to_csv(csv, index=False)
    out = tmp_path / "report"
    assert main(["--experiment", str(smoke_experiment[0]), "--out", str(out),
                 "--ablation", str(csv)]) == 0
    md = (out / "report.md").read_text()
    assert "## 6. Ablation" in md and "55.0 ± 7.1" in md and "70.0 ± 0.0" in md
    _check_png(out / "ablation.png")


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_not_an_experiment_is_one_line(make: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path) in err[0]


# --- pure helpers, known answers ------------------------------------------------------------

def test_most_confused_pairs_on_a_constructed_matrix() -> None:
    cm = np.diag([10, 10, 10, 10, 10, 10, 10])
    cm[2, 4] = 5  # fear -> sad: 5 of 15
    cm[0, 6] = 3  # angry -> neutral: 3 of 13
    cm[1, 0] = 1  # disgust -> angry: 1 of 11, below min_count
    pairs = most_confused_pairs(cm, top=3, min_count=2)
    assert [(i, j, c) for i, j, _, c in pairs] == [(2, 4, 5), (0, 6, 3)]
    assert pairs[0][2] == pytest.approx(5 / 15)
    assert confusion_sentence(pairs[0], 15) == \
        "fear is predicted as sad for 33 % of fear faces (5 of 15)"
    assert most_confused_pairs(np.diag(np.ones(7, dtype=int))) == []


def test_per_class_table_matches_hand_counts() -> None:
    cm = np.zeros((7, 7), dtype=int)
    cm[0, 0], cm[0, 1], cm[1, 1] = 3, 1, 4  # angry recall 3/4; disgust precision 4/5
    table = per_class_table({"m": cm})
    assert table.loc["angry", "m R %"] == 75.0 and table.loc["disgust", "m P %"] == 80.0
    assert table.loc["angry", "support"] == 4 and table.loc["macro", "support"] == 8
    assert "| angry | 4 | 100.0 | 75.0 | 85.7 |" in markdown_table(table)


def _results(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -2, n)
    return pd.DataFrame({
        "trial_id": [f"t{i}" for i in range(n)], "status": "completed",
        "param.optim.lr": lr,  # decides the accuracy
        "param.optim.optimizer": rng.choice(["adam", "sgd"], n),  # irrelevant
        "param.model.filters.0": rng.choice([8, 16, 32], n),
        # Conditional: only odd trials have a third block (NaN elsewhere, so floats).
        "param.model.filters.2": np.where(np.arange(n) % 2, rng.choice([16.0, 32.0], n), np.nan),
        "param.model.convs_per_block": [np.array([1])] * n,  # constant list
        "val_acc": 0.3 + 0.1 * np.log10(lr / 1e-4),
    })


def test_rebuilt_study_infers_distributions_and_skips_missing_params() -> None:
    study = rebuild_study(_results(10), log_columns={"param.optim.lr"})
    assert len(study.trials) == 10
    dists = study.trials[1].distributions
    assert isinstance(dists["param.optim.lr"], FloatDistribution) and \
        dists["param.optim.lr"].log
    assert isinstance(dists["param.optim.optimizer"], CategoricalDistribution)
    assert isinstance(dists["param.model.filters.0"], IntDistribution)
    assert isinstance(dists["param.model.filters.2"], IntDistribution)
    assert "param.model.filters.2" not in study.trials[0].params  # NaN there
    assert "param.model.convs_per_block" not in dists  # constant: nothing to learn


def test_importances_rank_the_param_that_decides() -> None:
    importances, note = param_importances(_results(20))
    assert note == ""
    assert set(importances) == {"param.optim.lr", "param.optim.optimizer",
                                "param.model.filters.0"}  # filters.2 is not in every trial
    assert max(importances, key=importances.__getitem__) == "param.optim.lr"
    assert sum(importances.values()) == pytest.approx(1.0)
    empty, why = param_importances(_results(3))
    assert empty == {} and "3 usable" in why


def test_ensemble_size_curve_known_answer() -> None:
    labels = np.array([0, 1, 2, 3])
    good = np.eye(7)[labels] * 0.9 + 0.1 / 7
    bad = np.eye(7)[[1, 2, 3, 0]] * 0.6 + 0.4 / 7
    curve = ensemble_size_curve(np.stack([good, bad, bad]), labels, 3)
    assert list(curve["k"]) == [1, 2, 3]
    assert list(curve["uniform"]) == [1.0, 1.0, 0.0]  # two bad models outvote the good one
    assert list(curve["greedy"]) == [1.0, 1.0, 1.0] and curve["greedy_members"].max() == 1


def test_launch_order_uses_start_times_else_row_order() -> None:
    results = pd.DataFrame({"trial_id": ["a", "b", "c"]})
    hist = {t: pd.DataFrame({"timestamp": [ts], "time_total_s": [10.0]})
            for t, ts in (("a", 130.0), ("b", 110.0), ("c", 120.0))}
    assert list(launch_order(results, hist)) == [3, 1, 2]
    hist["c"] = pd.DataFrame({"epoch": [1], "val_acc": [0.5]})
    assert list(launch_order(results, hist)) == [1, 2, 3]


def test_html_embeds_images(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    Image.new("RGB", (4, 4), "red").save(png)
    doc = Document("t")
    doc.text("a **bold** `code` <tag>")
    doc.image(png, "cap")
    md, page = doc.write(tmp_path)
    assert "![cap](x.png)" in md.read_text()
    text = page.read_text()
    assert "data:image/png;base64," in text and "x.png" not in text
    assert "<strong>bold</strong>" in text and "&lt;tag&gt;" in text
