"""FER+ votes: soft targets on the FER2013 task, the 8-class FER+ task end to end, bad votes
files, and old 7-class checkpoints and ensembles that must still load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from support.cli import assert_refused, run

import fer_ray.space
from fer_ray.config import DataConfig, TrainConfig, merge
from fer_ray.data import CLASS_NAMES, FERPLUS_CLASS_NAMES, format_class_table, load_data
from fer_ray.data.synthetic import make_synthetic
from fer_ray.data.votes import fer2013_vote_probs, ferplus_labels, soft_targets
from fer_ray.ensemble.model import Ensemble, Member
from fer_ray.errors import ConfigError, DataError
from fer_ray.models import create_model
from fer_ray.models.io import load_model, save_model
from fer_ray.models.vgg_fer import MODEL_PRESETS
from fer_ray.train.loop import Trainer, mixed_cross_entropy

HAPPY, NEUTRAL = CLASS_NAMES.index("happy"), CLASS_NAMES.index("neutral")
# FER+ vote column of each FER2013 class id (contempt, unknown and NF have none).
COLUMN_OF = [4, 5, 6, 1, 3, 2, 0]
UNKNOWN, NF, CONTEMPT = 8, 9, 7


def votes_row(**counts: int) -> np.ndarray:
    names = [*FERPLUS_CLASS_NAMES, "unknown", "NF"]
    row = np.zeros(10, np.uint8)
    for name, n in counts.items():
        row[names.index(name)] = n
    return row


# ------------------------------------------------------------------ known answers ----


def test_fer2013_targets_mix_the_label_with_the_votes() -> None:
    votes = np.stack([votes_row(neutral=6, happiness=4),  # label happy
                      votes_row(),  # no votes (csv_row -1)
                      votes_row(contempt=3, unknown=5, NF=2),  # no FER2013 emotion voted
                      votes_row(anger=5, disgust=5)])  # label fear: the votes disagree
    labels = np.array([HAPPY, 0, 5, 2])
    targets = soft_targets(labels, fer2013_vote_probs(votes, labels), alpha=0.5)
    expected = np.zeros((4, 7))
    expected[0, [HAPPY, NEUTRAL]] = [0.7, 0.3]
    expected[1, 0] = expected[2, 5] = 1.0  # one-hot kept where there are no votes
    expected[3, [0, 1, 2]] = [0.25, 0.25, 0.5]
    np.testing.assert_allclose(targets, expected, atol=1e-6)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(soft_targets(labels, fer2013_vote_probs(votes, labels), 1.0),
                                  np.eye(7)[labels])


def test_ferplus_labels_are_the_majority_over_eight_emotions() -> None:
    votes = np.stack([votes_row(neutral=6, happiness=4),
                      votes_row(contempt=5, neutral=3, unknown=2),
                      votes_row(unknown=6, neutral=4),  # unknown majority: left out
                      votes_row(NF=7, fear=3),  # not a face: left out
                      votes_row(),  # no votes: left out
                      votes_row(sadness=5, unknown=5)])  # a tie: the emotion (first column)
    keep, labels, probs = ferplus_labels(votes)
    assert keep.tolist() == [True, True, False, False, False, True]
    assert labels.tolist() == [0, 7, 3]  # neutral, contempt, sadness in FER+ order
    assert probs.shape == (3, 8) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], [0.6, 0.4, 0, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(probs[1], [3 / 8, 0, 0, 0, 0, 0, 0, 5 / 8], atol=1e-6)
    np.testing.assert_allclose(probs[2], np.eye(8)[3], atol=1e-6)


def test_soft_target_loss_is_the_cross_entropy_of_the_target_rows() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    target = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]])
    log_p = torch.log_softmax(logits, dim=1)
    by_hand = -(0.7 * log_p[0, 0] + 0.3 * log_p[0, 1]
                + 0.25 * log_p[1, 1] + 0.75 * log_p[1, 2]) / 2
    loss = mixed_cross_entropy(logits, target, target, 1.0)
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-6)
    # One-hot rows (alpha = 1) give exactly the class-id loss, with smoothing too.
    labels = torch.tensor([0, 2])
    one_hot = F.one_hot(labels, 3).float()
    partner = torch.tensor([1, 0])
    for smoothing in (0.0, 0.1):
        hard = mixed_cross_entropy(logits, labels, partner, 0.6, smoothing)
        soft = mixed_cross_entropy(logits, one_hot, F.one_hot(partner, 3).float(), 0.6,
                                   smoothing)
        assert float(soft) == pytest.approx(float(hard), rel=1e-6)
    # Mixing two target rows is the loss of the mixed rows (mixup's partner).
    mixed = mixed_cross_entropy(logits, target, one_hot, 0.3)
    assert float(mixed) == pytest.approx(
        float(mixed_cross_entropy(logits, 0.3 * target + 0.7 * one_hot, one_hot, 1.0)), rel=1e-6)


# ---------------------------------------------------------------- fixture files ----


def _votes_for(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Votes agreeing with the FER2013 labels (7 of 10), with some unknown / not-a-face
    majorities, a few contempt faces and one face without votes."""
    votes = np.zeros((len(labels), 10), np.uint8)
    for i, label in enumerate(labels):
        votes[i, COLUMN_OF[label]] = 7
        votes[i, rng.choice(10, 3)] += 1
    votes[::15] = 0
    votes[::15, UNKNOWN] = 6
    votes[::15, COLUMN_OF[0]] = 4
    votes[7::15] = 0
    votes[7::15, NF] = 10
    votes[3::20] = 0
    votes[3::20, CONTEMPT] = 8
    votes[3::20, 0] = 2
    votes[1] = 0
    return votes


def write_fixture(root: Path, n_train: int = 400, n_test: int = 100) -> Path:
    """root/fer2013/{train,public_test}.npz (synthetic faces) and root/ferplus/*_votes.npz,
    aligned row for row as in the shared data. Returns root/fer2013."""
    rng = np.random.default_rng(0)
    (root / "fer2013").mkdir(parents=True)
    (root / "ferplus").mkdir()
    for name, n, seed in (("train", n_train, 0), ("public_test", n_test, 1)):
        split = make_synthetic(n, seed=seed)
        assert split.labels is not None
        rows = np.arange(n) + 1000 * seed
        votes = _votes_for(split.labels, rng)
        rows_votes = np.where(votes.sum(1) > 0, rows, -1)
        np.savez(root / "fer2013" / f"{name}.npz", images=split.images, labels=split.labels,
                 csv_row=rows)
        np.savez(root / "ferplus" / f"{name}_votes.npz", votes=votes, csv_row=rows_votes,
                 columns=np.array([*FERPLUS_CLASS_NAMES, "unknown", "NF"]))
    return root / "fer2013"


@pytest.fixture()
def fixture_data(tmp_path: Path) -> Path:
    return write_fixture(tmp_path / "data")


def test_loading_fer2013_with_votes_keeps_its_labels(fixture_data: Path) -> None:
    plain = load_data(DataConfig(path=str(fixture_data)), seed=0)
    soft = load_data(DataConfig(path=str(fixture_data), vote_alpha=0.5), seed=0)
    assert plain.train.vote_probs is None and soft.classes == CLASS_NAMES
    np.testing.assert_array_equal(plain.train.labels, soft.train.labels)  # type: ignore[arg-type]
    assert soft.train.vote_probs is not None and soft.train.vote_probs.shape == (
        len(soft.train), 7)
    np.testing.assert_allclose(soft.train.vote_probs.sum(1), 1.0, atol=1e-6)
    assert not soft.left_out and soft.tests["public_test"].vote_probs is None


def test_loading_ferplus_relabels_and_leaves_out_unknown_faces(fixture_data: Path) -> None:
    raw = np.load(fixture_data.parent / "ferplus" / "public_test_votes.npz")["votes"]
    keep, labels, _ = ferplus_labels(raw)
    data = load_data(DataConfig(path=str(fixture_data), labels="ferplus"), seed=0)
    assert data.classes == FERPLUS_CLASS_NAMES
    test = data.tests["public_test"]
    np.testing.assert_array_equal(test.labels, labels)  # type: ignore[arg-type]
    assert data.left_out["public_test"] == int((~keep).sum()) > 0
    assert len(data.train) + len(data.val) + data.left_out["train"] == 400
    assert set(np.unique(np.concatenate([data.train.labels, data.val.labels]))) == set(range(8))
    table = format_class_table(data)
    assert "contempt" in table and f"{data.left_out['train']} of train" in table


# ------------------------------------------------------------------- bad input ----


def _bad_votes(fixture_data: Path, **arrays: np.ndarray) -> Path:
    path = fixture_data.parent / "ferplus" / "train_votes.npz"
    path.unlink()
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "expected"), [
    ({"votes": np.zeros((399, 10), np.uint8)},
     "'votes' has 399 rows for the 400 images of"),
    ({"votes": np.zeros((400, 8), np.uint8)}, "'votes' has shape (400, 8), expected (N, 10)"),
    ({"counts": np.zeros((400, 10), np.uint8)}, "no 'votes' array (found: counts)"),
    ({"votes": np.zeros((400, 10), np.uint8), "csv_row": np.arange(400)[::-1]},
     "(not aligned)"),
])
def test_a_bad_votes_file_is_one_error_line(fixture_data: Path, tmp_path: Path,
                                            arrays: dict[str, np.ndarray], expected: str
                                            ) -> None:
    path = _bad_votes(fixture_data, **arrays)
    proc = run("train", "--data", str(fixture_data), "--labels", "ferplus", "--epochs", "1",
               "--out", str(tmp_path / "out"))
    assert_refused(proc, expected)
    assert f"error: {path}: " in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_votes_are_one_error_line(fixture_data: Path, tmp_path: Path) -> None:
    proc = run("train", "--data", str(fixture_data), "--vote-alpha", "0.5", "--votes",
               str(tmp_path / "nowhere"), "--epochs", "1", "--out", str(tmp_path / "out"))
    assert_refused(proc, f"{tmp_path / 'nowhere' / 'train_votes.npz'}: no such votes file")
    proc = run("train", "--vote-alpha", "0.5", "--epochs", "1", "--out", str(tmp_path / "o"))
    assert_refused(proc, "the built-in synthetic faces have no votes")
    proc = run("train", "--vote-alpha", "1.5", "--epochs", "1", "--out", str(tmp_path / "o"))
    assert_refused(proc, "data.vote_alpha (--vote-alpha): 1.5 is outside [0, 1]")


# ------------------------------------------------------------------- training ----


def _trainer(data_dir: Path, **data: object) -> Trainer:
    config = merge(TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"], epochs=1),
                   {"data": {"path": str(data_dir), **data}, "optim": {"batch_size": 64}})
    loaded = load_data(config.data, seed=0)
    return Trainer(config, loaded.train, loaded.val, "cpu")


def test_trainer_targets_follow_vote_alpha(fixture_data: Path) -> None:
    plain = _trainer(fixture_data)
    plain_loss = plain.train_epoch()["train_loss"]  # dropout draws from torch's global RNG
    alpha_one = _trainer(fixture_data, vote_alpha=1.0, votes=str(fixture_data.parent / "ferplus"))
    assert plain.t_train is None and alpha_one.t_train is None  # the class-id loss, as today
    assert alpha_one.train_epoch()["train_loss"] == plain_loss
    soft = _trainer(fixture_data, vote_alpha=0.5)
    assert soft.t_train is not None
    probs = load_data(DataConfig(path=str(fixture_data), vote_alpha=0.5), 0).train.vote_probs
    assert probs is not None
    expected = 0.5 * np.eye(7)[soft.y_train.numpy()] + 0.5 * probs
    np.testing.assert_allclose(soft.t_train.numpy(), expected, atol=1e-6)
    assert np.isfinite(soft.train_epoch()["train_loss"])
    ferplus = _trainer(fixture_data, labels="ferplus")
    assert ferplus.model.num_classes == 8 and ferplus.t_train is not None


def test_vote_alpha_below_one_needs_votes(small_data: object) -> None:
    from fer_ray.data import FerData

    assert isinstance(small_data, FerData)
    config = TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"], data=DataConfig(vote_alpha=0.3))
    with pytest.raises(ConfigError, match="data.vote_alpha 0.3 needs FER"):
        Trainer(config, small_data.train, small_data.val, "cpu")


def test_train_cli_ferplus_saves_an_eight_class_model(fixture_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from fer_ray.train.cli import main

    out = tmp_path / "run"
    assert main(["--data", str(fixture_data), "--labels", "ferplus", "--preset", "tiny",
                 "--epochs", "1", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "left out (no FER+ emotion majority" in printed
    assert "classes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt" \
        in printed
    saved = json.loads((out / "config.json").read_text())
    assert saved["classes"] == list(FERPLUS_CLASS_NAMES)
    assert saved["config"]["data"]["labels"] == "ferplus"
    model, config = load_model(out)
    assert model.num_classes == 8 and config.data.labels == "ferplus"
    assert np.load(out / "val_probs.npy").shape[1] == 8
    assert "public_test" in saved["tests"]


# ------------------------------------------------- old files still load as FER2013 ----


def test_old_checkpoints_and_ensembles_load_as_fer2013(tmp_path: Path) -> None:
    config = TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"])
    model = create_model("vgg_fer_tiny").eval()
    save_model(model, tmp_path / "ckpt", config)
    path = tmp_path / "ckpt" / "config.json"
    payload = json.loads(path.read_text())
    del payload["classes"], payload["config"]["data"]["labels"]
    del payload["config"]["data"]["votes"], payload["config"]["data"]["vote_alpha"]
    path.write_text(json.dumps(payload))
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.num_classes == 7

    Ensemble([Member("m", config, model)], np.ones(1)).save(tmp_path / "ens")
    record_path = tmp_path / "ens" / "ensemble.json"
    record = json.loads(record_path.read_text())
    assert record["classes"] == list(CLASS_NAMES)
    for key in ("labels", "votes", "vote_alpha"):
        del record["members"][0]["config"]["data"][key]
    record_path.write_text(json.dumps(record))
    assert Ensemble.load(tmp_path / "ens").classes == CLASS_NAMES

    record["classes"] = list(FERPLUS_CLASS_NAMES)
    record["class_biases"] = [0.0] * 8
    record_path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"members\[0\].config.data.labels: 'fer2013' predicts"):
        Ensemble.load(tmp_path / "ens")


def test_an_eight_class_ensemble_names_its_classes(tmp_path: Path) -> None:
    config = merge(TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"]), {"data": {
        "labels": "ferplus"}})
    nets = [Member(f"m{i}", config, create_model("vgg_fer_tiny", num_classes=8).eval())
            for i in range(2)]
    Ensemble(nets, np.ones(2) / 2).save(tmp_path / "ens")
    loaded = Ensemble.load(tmp_path / "ens")
    assert loaded.classes == FERPLUS_CLASS_NAMES and loaded.class_biases.shape == (8,)
    probs = loaded.predict_proba(np.zeros((3, 48, 48), np.uint8))
    assert probs.shape == (3, 8)
    mixed = Member("seven", TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"]),
                   create_model("vgg_fer_tiny").eval())
    with pytest.raises(ConfigError, match="members predict different classes"):
        Ensemble([*nets, mixed], np.ones(3) / 3)

    from fer_ray.ensemble.onnx_export import export_onnx
    from fer_ray.recognize import Recognizer

    export_onnx(loaded, tmp_path / "ens.onnx")
    for location in (tmp_path / "ens", tmp_path / "ens.onnx"):
        recognizer = Recognizer.load(location)
        assert recognizer.classes == FERPLUS_CLASS_NAMES
        face = recognizer.recognize(np.full((48, 48), 128, np.uint8), faces="none").faces[0]
        assert list(face.to_dict()["probs"]) == list(FERPLUS_CLASS_NAMES)
        assert face.label_name == FERPLUS_CLASS_NAMES[face.label]


def test_report_tables_name_the_classes_they_are_given() -> None:
    from fer_ray.metrics import confusion_matrix
    from fer_ray.report.analysis import confusion_sentence, most_confused_pairs, per_class_table

    labels, preds = np.array([7, 7, 7, 0, 1]), np.array([0, 0, 7, 0, 1])
    cm = confusion_matrix(labels, preds, 8)
    table = per_class_table({"m": cm}, FERPLUS_CLASS_NAMES)
    assert list(table.index) == [*FERPLUS_CLASS_NAMES, "macro"]
    assert table.loc["contempt", "support"] == 3
    pair = most_confused_pairs(cm, top=1, min_count=1)[0]
    assert confusion_sentence(pair, 3, FERPLUS_CLASS_NAMES) == \
        "contempt is predicted as neutral for 67 % of contempt faces (2 of 3)"


# ------------------------------------------------------------ search end to end ----

SMOKE_SPACE = fer_ray.space.SPACES_DIR / "smoke.yaml"
VOTE_ALPHA_PARAM = "  data.vote_alpha: {type: uniform, low: 0.0, high: 1.0}\n"


def test_a_space_searches_vote_alpha_but_no_other_data_field(tmp_path: Path) -> None:
    from fer_ray.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text(SMOKE_SPACE.read_text() + VOTE_ALPHA_PARAM)
    loaded = load_space(str(space))
    assert "data.vote_alpha" in [p.key for p in loaded.params]
    space.write_text(SMOKE_SPACE.read_text() + "  data.val_fraction: 0.2\n")
    with pytest.raises(ConfigError, match=r"params.data.val_fraction: unknown key \(known "
                                          r"data keys: vote_alpha\)"):
        load_space(str(space))


def test_a_space_drawing_vote_alpha_needs_votes(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SMOKE_SPACE.read_text() + VOTE_ALPHA_PARAM)
    proc = run("search", "--space", str(space), "--synthetic-size", "300", "--storage",
               str(tmp_path / "runs"), "--name", "exp")
    assert_refused(proc, f"space {space} draws data.vote_alpha: give --votes FOLDER")
    assert not (tmp_path / "runs" / "exp").exists()



@pytest.mark.ray
def test_ferplus_search_ensembles_and_predicts_eight_named_classes(fixture_data: Path,
                                                                   tmp_path: Path) -> None:
    """python -m fer_ray.search --labels ferplus (2 smoke trials), its ensemble, then
    python -m fer_ray.predict: every output names FER+'s 8 classes."""
    space = tmp_path / "space.yaml"  # the smoke space, drawing vote_alpha too
    space.write_text(SMOKE_SPACE.read_text() + VOTE_ALPHA_PARAM)
    search = subprocess.run(
        [sys.executable, "-m", "fer_ray.search", "--data", str(fixture_data), "--labels",
         "ferplus", "--space", str(space), "--num-samples", "2", "--max-epochs", "2",
         "--grace-period", "1", "--top-k", "2", "--storage", str(tmp_path), "--name", "exp",
         "--device", "cpu"], capture_output=True, text=True, timeout=400)
    assert search.returncode == 0, search.stderr[-3000:]
    assert "left out (no FER+ emotion majority" in search.stdout
    assert "recall argmax/adjusted: neutral " in search.stdout and "contempt" in search.stdout
    record = json.loads((tmp_path / "exp" / "search.json").read_text())
    assert record["data"]["classes"] == list(FERPLUS_CLASS_NAMES)
    results = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    configs = [json.loads(c)["data"] for c in results["config_json"]]
    assert all(c["labels"] == "ferplus" for c in configs)
    assert [c["vote_alpha"] for c in configs] == results["param.data.vote_alpha"].tolist()
    ensemble = json.loads((tmp_path / "exp" / "ensemble" / "ensemble.json").read_text())
    assert ensemble["classes"] == list(FERPLUS_CLASS_NAMES)
    assert len(ensemble["class_biases"]) == 8 and "public_test" in ensemble["info"]["test"]

    out = tmp_path / "predictions.csv"
    proc = run("predict", "--ensemble", str(tmp_path / "exp" / "ensemble"), "--faces", "none",
               "--out", str(out), str(fixture_data / "public_test.npz"))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    columns = [f"p_{c}" for c in FERPLUS_CLASS_NAMES]
    assert [c for c in df.columns if c.startswith("p_")] == columns
    assert len(df) == 100
    np.testing.assert_allclose(df[columns].sum(axis=1), 1.0, atol=1e-4)
    assert set(df["label_name"]) <= set(FERPLUS_CLASS_NAMES)
    assert (df["label_name"] == [FERPLUS_CLASS_NAMES[i] for i in df["label"]]).all()


def test_real_ferplus_votes_leave_out_the_known_faces(fer2013_dir: Path) -> None:
    """The shared data (FER2013_DIR, votes in ../ferplus): 323 training and 36 PublicTest
    faces have no emotion majority or no votes; all 8 emotions remain."""
    data = load_data(DataConfig(path=str(fer2013_dir), labels="ferplus"), seed=0)
    assert data.left_out == {"train": 323, "public_test": 36}
    assert len(data.train) + len(data.val) == 28_709 - 323
    assert len(data.tests["public_test"]) == 3_589 - 36
    assert set(np.unique(data.tests["public_test"].labels)) == set(range(8))  # type: ignore[arg-type]
