"""Faults with real processes: a second node, a lost node, diverging and crashing trials,
interrupted writes, and bad input at the command line (one clear line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fer_ray.ensemble.build import build_ensemble
from fer_ray.ensemble.model import Ensemble, Member
from fer_ray.errors import DataError
from fer_ray.experiment import SearchSettings
from fer_ray.models import create_model
from fer_ray.search.cli import main as search_main
from fer_ray.search.results import write_parquet

SUPPORT = Path(__file__).parent / "support"


def _smoke(tmp_path: Path, **kw: Any) -> SearchSettings:
    base = {"space": "smoke", "synthetic_size": 600, "max_epochs": 2, "grace_period": 2,
            "num_samples": 2, "storage": str(tmp_path), "name": "exp"}
    return SearchSettings(**{**base, **kw})


def test_diverging_trials_stop_at_once_and_never_enter_an_ensemble(ray_local: Any,
                                                                    tmp_path: Path) -> None:
    from fer_ray.search.run import run_experiment

    space = tmp_path / "diverge.yaml"
    space.write_text(
        "base:\n  model: {dropout: [0.0], dense_units: [16]}\n"
        "  optim: {optimizer: sgd, momentum: 0.9, schedule: none}\n"
        "  augment: {hflip: 0.0, rotation: 0.0, scale: 0.0, translate: 0.0}\n"
        "params:\n  model.num_blocks: 2\n  model.filters: 4\n"
        "  optim.lr: {type: choice, values: [0.01, 1.0e+12]}\n")
    run_experiment(_smoke(tmp_path, space=str(space), num_samples=6, max_epochs=3,
                          grace_period=3))
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    diverged = df[df["status"] == "diverged"]
    assert len(diverged) >= 1 and (df["status"] == "completed").any()
    assert (diverged["param.optim.lr"] > 1).all() and (diverged["best_checkpoint"] == "").all()
    for trial in diverged["trial_id"]:  # stopped at the first non-finite epoch
        lines = (tmp_path / "exp" / f"trial_{trial}" / "result.json").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["status_flag"] == "diverged"
    members = {m.name for m in build_ensemble(tmp_path / "exp", top_k=6).ensemble.members}
    assert members and not members & set(diverged["trial_id"])


def test_a_trial_that_keeps_crashing_is_recorded_as_errored(inject_fault: Any,
                                                            tmp_path: Path) -> None:
    from fer_ray.search.run import run_experiment

    inject_fault("1:always")
    record = run_experiment(_smoke(tmp_path, max_failures=1))
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    assert record["trials"] == {"error": 2} and len(df) == 2
    assert df["error"].str.contains("injected failure").all()
    with pytest.raises(DataError, match="nothing to ensemble"):
        build_ensemble(tmp_path / "exp")


WRITER = """
import sys
import time
from fer_ray import storage
payload = bytes(range(256)) * (int(sys.argv[2]) // 256)
print("writing", flush=True)
storage.write_bytes(sys.argv[1], payload)
print("written", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path: Path) -> None:
    """A real writer process killed (SIGKILL) while it writes 256 MB over results.parquet: the
    previous file is still there, whole (a direct, non-atomic write leaves it truncated)."""
    path = tmp_path / "results.parquet"
    good = pd.DataFrame({"trial_id": ["a", "b"], "val_acc": [0.5, 0.4]})
    write_parquet(good, path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(256 << 20)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    time.sleep(0.05)  # into the write: 256 MB take a good part of a second
    proc.kill()
    finished = proc.wait(timeout=30) == 0
    assert not finished, "the write ended before the kill; the test proves nothing"
    assert path.read_bytes() == before
    pd.testing.assert_frame_equal(pd.read_parquet(path), good)


def test_interrupted_ensemble_save_keeps_the_previous_ensemble(tmp_path: Path) -> None:
    from fer_ray.config import TrainConfig
    from fer_ray.models.vgg_fer import MODEL_PRESETS

    config = TrainConfig(model=MODEL_PRESETS["vgg_fer_tiny"])
    model = create_model("vgg_fer_tiny").eval()
    Ensemble([Member("a", config, model)], np.ones(1)).save(tmp_path / "ens")
    before = (tmp_path / "ens" / "ensemble.json").read_text()
    tied = create_model("vgg_fer_tiny").eval()
    tied.register_buffer("alias", tied.mean)  # shared storage: safetensors refuses to save it
    with pytest.raises(RuntimeError):
        Ensemble([Member("a", config, model), Member("b", config, tied)],  # type: ignore[arg-type]
                 np.ones(2) / 2).save(tmp_path / "ens")
    assert (tmp_path / "ens" / "ensemble.json").read_text() == before
    assert len(Ensemble.load(tmp_path / "ens").members) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens"]


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


PIX = " ".join(["7"] * 2304)
BAD_INPUT = [
    ("malformed CSV row", lambda t: ["--data", _write(
        t / "a" / "fer2013.csv", f"emotion,pixels,Usage\n3,{PIX},Training\n3,{PIX},Training,x\n")],
     "fer2013.csv line 3: expected 3 comma-separated fields, got 4"),
    ("wrong pixel count", lambda t: ["--data", _write(
        t / "b" / "fer2013.csv", f"emotion,pixels,Usage\n3,{PIX} 1,Training\n")],
     "fer2013.csv line 2: expected 2304 pixel values, got 2305"),
    ("non-numeric pixel", lambda t: ["--data", _write(
        t / "c" / "fer2013.csv", f"emotion,pixels,Usage\n3,x{PIX[1:]},Training\n")],
     "fer2013.csv line 2: pixel value"),
    ("label 9", lambda t: ["--data", _write(
        t / "d" / "fer2013.csv", f"emotion,pixels,Usage\n9,{PIX},Training\n")],
     "fer2013.csv line 2: emotion label 9 outside 0..6"),
    ("missing column", lambda t: ["--data", _write(
        t / "e" / "fer2013.csv", f"emotion,pix,Usage\n3,{PIX},Training\n")],
     "missing column(s) pixels"),
    ("empty file", lambda t: ["--data", _write(t / "f" / "train.csv", "")], "empty file"),
    ("folder with no images", lambda t: ["--data", str((t / "g" / "train" / "happy").mkdir(
        parents=True) or t / "g")], "no images"),
    ("truncated PNG", lambda t: ["--data", _truncated_png(t / "h")], "cannot decode image"),
    ("unknown YAML key", lambda t: ["--space", _write(
        t / "s1.yaml", "params:\n  optim.lrr: 0.1\n")], "params.optim.lrr: unknown key"),
    ("wrong YAML type", lambda t: ["--space", _write(
        t / "s2.yaml", "params:\n  optim.lr: {type: choice, values: [fast]}\n")],
     "params.optim.lr.values[0]: expected a number"),
    ("empty range", lambda t: ["--space", _write(
        t / "s3.yaml", "params:\n  optim.lr: {type: uniform, low: 0.1, high: 0.1}\n")],
     "params.optim.lr: empty range"),
    ("non-existent --data", lambda t: ["--data", str(t / "nowhere")],
     "nowhere: no such file or directory"),
    ("unwritable --storage", lambda t: ["--storage", _write(t / "a-file", "") + "/sub"],
     "--storage: cannot write to"),
    ("--resume of a non-experiment", lambda t: ["--resume", "--name", "x", "--storage", str(t)],
     "not a fer-ray experiment"),
]


def _truncated_png(root: Path) -> str:
    from PIL import Image

    folder = root / "train" / "happy"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "ok.png")
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:40])
    return str(root)


@pytest.mark.parametrize(("case", "make_args", "expected"), BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_clear_line(case: str, make_args: Any, expected: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = make_args(tmp_path)
    if "--storage" not in args:
        args += ["--storage", str(tmp_path / "runs")]
    assert search_main(args) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_gpus_per_trial_without_gpu_is_one_line(ray_local: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert search_main(["--space", "smoke", "--synthetic-size", "300", "--gpus-per-trial", "1",
                        "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --gpus-per-trial 1.0: the Ray cluster has no GPU (use "
                   "--gpus-per-trial 0 to train on CPUs)"]


def _cluster_search(storage: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SUPPORT / "cluster_search.py"), str(storage),
                           *flags], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.ray
def test_trials_land_on_both_nodes_of_a_real_cluster(tmp_path: Path) -> None:
    proc = _cluster_search(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    nodes = {n for ids in df["node_ids"] for n in ids.split(",") if n}
    assert len(df) == 4 and len(nodes) == 2, df[["trial_id", "node_ids"]]


@pytest.mark.slow
@pytest.mark.ray
def test_a_lost_worker_nodes_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    proc = _cluster_search(tmp_path, "--kill-worker")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "KILLED worker node" in proc.stdout
    df = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    assert len(df) == 2 and (df["status"] == "completed").all()
    resumed = df[df["resumed_from_epoch"] > 0]
    assert len(resumed) >= 1, df[["trial_id", "resumed_from_epoch", "node_ids"]]
    assert (resumed["node_ids"].str.count(",") >= 1).all()  # it finished on another node
