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


@pytest.mark.parametrize("name", BENCHES)
def test_help(name: str) -> None:
    out = run_script(name, "--help", timeout=60)
    assert "--quick" in out


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
    """Baseline and search, one minute each on synthetic faces: the side-by-side table."""
    out = run_script("bench_quality.py", "--quick", "--storage", str(tmp_path), timeout=400)
    for row in ("baseline (hand-written recipe, flip TTA)", "search: best single model",
                "search: ensemble", "baseline wall / budget:", "search wall / budget:"):
        assert row in out, out[-2000:]
    walls = [float(line.split()[-1]) for line in out.splitlines() if "wall / budget" in line]
    assert all(w <= 1.1 for w in walls), walls


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
    import numpy as np
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
