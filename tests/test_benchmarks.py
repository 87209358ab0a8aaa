"""The benchmark scripts run end to end (``--quick``) and print their figures and ratio lines.

Each script runs in a subprocess, as a user would run it. The Ray-using ones are slow (a local
Ray cluster starts each time); bench_gpu runs in its CPU fallback (CUDA hidden).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BENCHES = ["bench_overhead.py", "bench_augment.py", "bench_asha.py", "bench_gpu.py",
           "bench_quality.py", "bench_checkpoint.py", "bench_faces.py", "bench_onnx.py",
           "bench_serve.py"]


def run_script(name: str, *args: str, timeout: float = 150) -> str:
    """stdout of ``scripts/<name> args``; fails the test (with the output) on a non-zero exit."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "CUDA_VISIBLE_DEVICES": ""}  # bench_gpu must take its CPU path here
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n" \
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_benchmark_runs_quick_here() -> None:
    """Each script is run once with --quick below (what ``--help`` alone never showed: that it
    measures and prints its figures); a new script needs such a test too."""
    source = Path(__file__).read_text()
    assert sorted(p.name for p in SCRIPTS.glob("bench_*.py")
                  if "--quick" in p.read_text()) == sorted(BENCHES)
    assert [n for n in BENCHES if f'run_script("{n}", "--quick"' not in source] == []


def test_bench_augment_quick() -> None:
    out = run_script("bench_augment.py", "--quick")
    assert "batched, CPU 1 thread" in out and "PIL DataLoader, 0 workers" in out
    assert "ratio batched, CPU 1 thread / PIL DataLoader, 0 workers:" in out
    assert "ratio batched, CPU 1 thread / PIL DataLoader, 2 workers:" in out or \
        (os.cpu_count() or 1) != 2


@pytest.mark.slow
@pytest.mark.ray
def test_bench_overhead_quick(tmp_path: Path) -> None:
    out = run_script("bench_overhead.py", "--quick", "--storage", str(tmp_path))
    assert "ratio trial/bare train epoch_seconds:" in out
    assert "ratio trial/bare wall per epoch:" in out
    assert "ray.init:" in out and "time to first result" in out


@pytest.mark.slow
@pytest.mark.ray
def test_bench_asha_quick(tmp_path: Path) -> None:
    out = run_script("bench_asha.py", "--quick", "--storage", str(tmp_path))
    assert "ratio ASHA/FIFO epochs:" in out
    assert "ratio ASHA/FIFO best val_acc:" in out
    # FIFO trains every config for every epoch: 4 configs x 3 epochs in quick mode.
    fifo = next(line for line in out.splitlines() if line.startswith("fifo"))
    assert fifo.split()[1] == "12"


@pytest.mark.slow
@pytest.mark.ray
def test_bench_gpu_cpu_fallback(tmp_path: Path) -> None:
    out_json = tmp_path / "bench_gpu.json"
    out = run_script("bench_gpu.py", "--quick", "--data", "synthetic", "--storage",
                     str(tmp_path / "runs"), "--out", str(out_json))
    assert "ratio total images/s 2 trials / 1 trial" in out
    assert "(a) tiny eager train images/s" in out
    figures = json.loads(out_json.read_text())
    assert figures["cuda"] is False
    assert figures["a_eager"]["images_per_s"] > 0 and figures["a_eager"]["fwd_flops"] > 0
    assert [row["trials"] for row in figures["b"]] == [1, 2]
    assert all(row["ok"] == row["trials"] for row in figures["b"])
    assert figures["c"]["best_val_acc"] is not None


def test_forward_flops_matches_seed_hw3() -> None:
    """The MFU's FLOP count, from conv/linear layers: seed_hw3 is ~6.6 GFLOP per image."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from bench_gpu import forward_flops
    finally:
        sys.path.remove(str(SCRIPTS))
    from fer_ray.models import build_model
    from fer_ray.models.vgg_fer import MODEL_PRESETS

    flops = forward_flops(build_model(MODEL_PRESETS["seed_hw3"]))
    assert 6.5e9 < flops < 6.7e9


@pytest.mark.slow
@pytest.mark.ray
def test_bench_quality_quick(tmp_path: Path) -> None:
    """Baseline and search, half a minute each on synthetic faces, one seed: the per-face
    predictions saved (and the same accuracies as the runs recorded), then combined again."""
    out_dir = tmp_path / "bench"
    out = run_script("bench_quality.py", "--quick", "--out", str(out_dir), "--storage",
                     str(tmp_path / "runs"), timeout=400)
    for row in ("baseline (hand-written recipe, flip TTA)", "baseline, the ensemble's TTA",
                "search: best single model", "search: ensemble",
                "ensemble - baseline with the same TTA", "baseline wall / budget:",
                "search wall / budget:", "24 faces (24 different images) are exact copies"):
        assert row in out, out[-3000:]
    walls = [float(line.split()[-1]) for line in out.splitlines() if "wall / budget" in line]
    assert all(w <= 1.1 for w in walls), walls
    summary = json.loads((out_dir / "seed-0" / "summary.json").read_text())
    with np.load(out_dir / "seed-0" / "predictions.npz") as saved:
        labels = saved["labels"]
        assert saved["train_copy"].sum() == 24 and len(labels) == 424
        acc = {row: float((saved[f"probs_{row}"].argmax(1) == labels).mean())
               for row in ("baseline", "ensemble")}
    # Reloaded and rescored, the saved models give the figures their own runs recorded.
    recorded = summary["recorded_test_acc"]
    assert acc["baseline"] == pytest.approx(recorded["baseline"]["test"], abs=1 / 424)
    assert acc["ensemble"] == pytest.approx(recorded["ensemble"]["test"], abs=1 / 424)
    again = run_script("bench_quality.py", "--combine", str(out_dir), timeout=120)
    assert again.strip() == out[out.index("1 seed run(s)"):].strip()


def write_seed_run(folder: Path, seed: int, correct: dict[str, list[int]], val: float,
                   wall: float, fingerprint: str = "f00d") -> None:
    """A saved seed run written by hand: 8 faces, the last two copies of training faces;
    each row predicts the label where ``correct`` says 1, the next class elsewhere."""
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    arrays = {"labels": labels, "train_copy": np.array([0, 0, 0, 0, 0, 0, 1, 1], bool),
              "test_fingerprint": np.array(fingerprint)}
    for row, right in correct.items():
        preds = np.where(np.array(right, bool), labels, (labels + 1) % 7)
        arrays[f"probs_{row}"] = np.eye(7, dtype=np.float32)[preds]
    folder.mkdir(parents=True)
    np.savez(folder / "predictions.npz", **arrays)
    summary = {"kind": "bench_quality seed run", "seed": seed, "budget_min": 2.0,
               "precision": "auto", "test": {"path": "t.npz", "fingerprint": fingerprint,
                                             "distinct_copies": 2},
               "tta": {"baseline": True, "ensemble": "flip"},
               "val_acc": {row: val for row in correct}, "wall_s": {row: wall for row in correct},
               "notes": {"baseline": "3 epochs", "search": "2 completed"}}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_bench_quality_combine_known_means(tmp_path: Path) -> None:
    write_seed_run(tmp_path / "seed-0", 0, {
        "baseline": [1, 1, 1, 1, 0, 0, 0, 0], "baseline_same_tta": [1, 1, 1, 1, 1, 0, 0, 0],
        "best_single": [1, 1, 1, 1, 1, 0, 1, 0], "ensemble": [1, 1, 1, 1, 1, 1, 0, 0]},
        val=0.6, wall=60)
    write_seed_run(tmp_path / "seed-1", 1, {
        "baseline": [1, 1, 1, 1, 1, 0, 1, 0], "baseline_same_tta": [1, 1, 1, 1, 1, 1, 0, 0],
        "best_single": [1, 1, 1, 1, 1, 1, 1, 0], "ensemble": [1, 1, 1, 1, 1, 1, 1, 1]},
        val=0.7, wall=120)
    out = run_script("bench_quality.py", "--combine", str(tmp_path), "--n-boot", "2000",
                     timeout=120)
    rows = {line[:46].strip(): line[46:] for line in out.splitlines()}
    # test_acc, macro_f1, val_acc, acc_no_copies, wall_min: mean ± sd over the 2 seeds.
    base = rows["baseline (hand-written recipe, flip TTA)"]
    assert base.split("±")[0].strip() == "0.6250" and "0.6250 ± 0.1768" in base
    assert "0.6500 ± 0.0707" in base and "0.7500 ± 0.1179" in base and "1.5 ± 0.7" in base
    ens = rows["search: ensemble (flip TTA)"]
    assert "0.8750 ± 0.1768" in ens and "1.0000 ± 0.0000" in ens
    assert "0.8125 ± 0.0884" in rows["search: best single model, flip TTA"]
    assert "0.6875 ± 0.0884" in rows["baseline, the ensemble's TTA (flip)"]
    # Paired differences in points: +25 for ensemble - baseline in both seeds.
    assert rows["ensemble - baseline"].split()[0] == "+25.00"
    assert rows["ensemble - best single model"].split()[0] == "+6.25"
    assert "2 faces (2 different images) are exact copies" in out
    assert "search wall / budget: mean 0.750, max 1.000" in out


def test_bench_quality_combine_refuses_other_test_sets(tmp_path: Path) -> None:
    right = {row: [1] * 8 for row in ("baseline", "baseline_same_tta", "best_single",
                                      "ensemble")}
    write_seed_run(tmp_path / "a", 0, right, val=0.5, wall=60)
    write_seed_run(tmp_path / "b", 1, right, val=0.5, wall=60, fingerprint="beef")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_quality.py"), "--combine",
                           str(tmp_path / "a"), str(tmp_path / "b")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "different test sets (fingerprints f00d and beef)" in proc.stderr


def test_bench_checkpoint_quick() -> None:
    out = run_script("bench_checkpoint.py", "--quick")
    ratio = next(line for line in out.splitlines() if line.startswith("ratio after/before"))
    assert float(ratio.split(":")[1].split()[0]) < 0.8  # the weights are no longer written twice


def test_bench_faces_quick() -> None:
    out = run_script("bench_faces.py", "--quick")
    assert "4 faces found (4 pasted)" in out
    assert "detection only" in out and "detect + crop + torch" in out


@pytest.mark.slow
def test_bench_onnx_quick(tmp_path: Path) -> None:
    """A tiny random-weight ensemble: the throughput row, the parity verdicts, cold starts."""
    from support.cli import faces, save_tiny_ensemble

    ensemble = save_tiny_ensemble(tmp_path / "ens", members=2)
    np.savez(tmp_path / "test.npz", images=faces(600), labels=np.zeros(600, np.int64))
    out = run_script("bench_onnx.py", "--quick", "--ensemble", str(ensemble), "--test",
                     str(tmp_path / "test.npz"))
    assert "(goal <= 1e-4: met)" in out, out
    row = next(line.split() for line in out.splitlines() if line.startswith("      1     64"))
    assert float(row[2]) > 0 and float(row[3]) > 0
    assert "python -c pass" in out and "predict (torch engine), one png" in out


def test_bench_serve_measures_loopback_only() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_serve.py"), "--url",
                           "http://192.0.2.1:8000/"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0 and "only http://127.0.0.1" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_serve.py"), "--url",
                           "http://127.0.0.1:1/", "--clients", "65"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "at most 64" in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_bench_serve_quick(tmp_path: Path) -> None:
    """The service deployed in-process at two batch sizes, 1 and 4 clients, plus the predict
    CLI's cost: every row answered without errors."""
    from support.cli import save_tiny_ensemble

    ensemble = save_tiny_ensemble(tmp_path / "ensemble", members=2)
    out = run_script("bench_serve.py", "--quick", "--ensemble", str(ensemble), timeout=400)
    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("1", "1"), ("1", "4"), ("8", "1"), ("8", "4")], out
    assert all(float(r[2]) > 0 and r[6].strip() == "0" for r in rows), out
    assert "predict, same photo: warm" in out and "cold" in out, out
