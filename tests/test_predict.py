"""``python -m fer_ray.predict``: every input kind, bad files flagged, accuracy reproduced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_ray.data import CLASS_NAMES
from fer_ray.ensemble.build import build_ensemble
from fer_ray.metrics import accuracy
from fer_ray.predict import main


@pytest.fixture(scope="module")
def ensemble_and_test(smoke_experiment: tuple[Path, dict[str, Any]],
                      tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """An ensemble built with an extra labelled test npz, and the test accuracy it reported."""
    folder = tmp_path_factory.mktemp("predict")
    test = make_synthetic_npz(folder / "test.npz")
    result = build_ensemble(smoke_experiment[0], top_k=3, extra_test=str(test))
    result.ensemble.save(folder / "ensemble")
    return folder / "ensemble", test, result.test["test"]["final"]["acc"]


def make_synthetic_npz(path: Path) -> Path:
    from fer_ray.data.synthetic import make_synthetic

    split = make_synthetic(300, seed=123)
    np.savez(path, images=split.images, labels=split.labels)
    return path


def test_predict_reproduces_the_reported_test_accuracy(
        ensemble_and_test: tuple[Path, Path, float], tmp_path: Path) -> None:
    ensemble, test, reported = ensemble_and_test
    out = tmp_path / "pred.csv"
    assert main(["--ensemble", str(ensemble), "--out", str(out), str(test)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns[:9]) == ["source", "face", "x", "y", "w", "h", "detector_score",
                                    "label", "label_name"]
    assert (df["face"] == 0).all() and (df[["w", "h"]] == 48).all().all()  # rows are faces
    assert list(df["source"][:2]) == [f"{test}:0", f"{test}:1"]  # input order kept
    labels = np.load(test)["labels"]
    assert accuracy(labels, df["label"].to_numpy()) == pytest.approx(reported)
    probs = df[[c for c in df.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)


def test_folder_with_corrupt_and_colour_images(ensemble_and_test: tuple[Path, Path, float],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ensemble, test, _ = ensemble_and_test
    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    Image.fromarray(np.load(test)["images"][0]).save(folder / "face.png")
    # 60x40: no larger than a FER crop, so taken as a face (not searched for faces)
    colour = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(colour).save(folder / "colour.jpg")
    (folder / "broken.png").write_bytes((folder / "face.png").read_bytes()[:50])
    out = tmp_path / "p.csv"
    assert main(["--ensemble", str(ensemble), "--out", str(out), "--defer",
                 str(tmp_path / "imgs")]) == 0
    df = pd.read_csv(out, keep_default_na=False).set_index("source")
    assert len(df) == 3 and "deferred" in df.columns
    assert "cannot decode image" in df.loc[str(folder / "broken.png"), "error"]
    for name in ("face.png", "colour.jpg"):
        assert df.loc[str(folder / name), "error"] == ""
        assert df.loc[str(folder / name), "label_name"] in {"angry", "disgust", "fear", "happy",
                                                           "sad", "surprise", "neutral"}
    assert "broken.png: cannot decode image" in capsys.readouterr().err


def test_csv_rows_and_kaggle_output(ensemble_and_test: tuple[Path, Path, float],
                                    tmp_path: Path) -> None:
    ensemble, test, _ = ensemble_and_test
    images = np.load(test)["images"][:3]
    rows = [" ".join(map(str, img.ravel())) for img in images]
    rows[1] = rows[1] + " 7"  # 2305 values: this row alone is unreadable
    csv = tmp_path / "test.csv"
    csv.write_text("pixels\n" + "\n".join(rows) + "\n")
    out = tmp_path / "p.csv"
    assert main(["--ensemble", str(ensemble), "--out", str(out), str(csv)]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df["source"]) == [f"{csv}:2", f"{csv}:3", f"{csv}:4"]
    assert df["error"][1].startswith("expected 2304 pixel values") and df["error"][0] == ""
    assert main(["--ensemble", str(ensemble), "--out", str(out), "--kaggle", str(csv)]) == 0
    assert pd.read_csv(out).columns.tolist() == ["id", "label"]


def test_nothing_readable_exits_non_zero(ensemble_and_test: tuple[Path, Path, float],
                                         tmp_path: Path) -> None:
    ensemble, _, _ = ensemble_and_test
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert main(["--ensemble", str(ensemble), "--out", str(tmp_path / "o.csv"),
                 str(tmp_path / "junk.png")]) == 1


def test_missing_member_file_is_one_line(ensemble_and_test: tuple[Path, Path, float],
                                         tmp_path: Path) -> None:
    import shutil

    ensemble, test, _ = ensemble_and_test
    broken = tmp_path / "ens"
    shutil.copytree(ensemble, broken)
    next((broken / "members").glob("*.safetensors")).unlink()
    proc = subprocess.run([sys.executable, "-m", "fer_ray.predict", "--ensemble", str(broken),
                           str(test)], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "missing weights file" in lines[0]


def test_kaggle_rows_keep_their_ids_and_an_unreadable_row_gets_no_label(
        ensemble_and_test: tuple[Path, Path, float], tmp_path: Path) -> None:
    ensemble, test, _ = ensemble_and_test
    images = np.load(test)["images"][:3]
    rows = [" ".join(map(str, img.ravel())) for img in images]
    rows[1] = "1 2 3"  # unreadable: too few pixel values
    csv = tmp_path / "test.csv"
    csv.write_text("pixels\n" + "\n".join(rows) + "\n")
    out = tmp_path / "kaggle.csv"
    assert main(["--ensemble", str(ensemble), "--out", str(out), "--kaggle", str(csv)]) == 0
    df = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert df["id"].tolist() == ["0", "1", "2"]
    assert df["label"][1] == ""
    assert {df["label"][0], df["label"][2]} <= {str(k) for k in range(7)}


def test_deferred_is_exactly_the_rows_whose_confidence_is_below_the_threshold(
        ensemble_and_test: tuple[Path, Path, float], tmp_path: Path) -> None:
    ensemble, test, _ = ensemble_and_test
    mine = tmp_path / "ensemble"
    shutil.copytree(ensemble, mine)
    first = tmp_path / "plain.csv"
    assert main(["--ensemble", str(mine), "--out", str(first), str(test)]) == 0
    probs = pd.read_csv(first)[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    top = np.sort(probs.max(axis=1))
    gaps = np.diff(top)
    k = int(np.argmax(gaps[len(gaps) // 4: 3 * len(gaps) // 4])) + len(gaps) // 4
    threshold = float((top[k] + top[k + 1]) / 2)  # between two rows, far from both
    record = json.loads((mine / "ensemble.json").read_text())
    record["defer"] = {"kind": "max_prob", "threshold": threshold}
    (mine / "ensemble.json").write_text(json.dumps(record))
    out = tmp_path / "deferred.csv"
    assert main(["--ensemble", str(mine), "--out", str(out), "--defer", str(test)]) == 0
    df = pd.read_csv(out)
    assert set(df["deferred"]) == {0, 1}
    expected = (df[[f"p_{c}" for c in CLASS_NAMES]].to_numpy().max(axis=1) < threshold)
    assert (df["deferred"].to_numpy() == expected.astype(int)).all()
