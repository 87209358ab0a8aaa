"""A saved ensemble in torch vs its ONNX export in onnxruntime, side by side, on the CPU.

    .venv/bin/python scripts/bench_onnx.py --ensemble DIR --test public_test.npz
        [--threads 1,2] [--batch 64,256] [--images 1024] [--rounds 3] [--cold-runs 5]

The ensemble is exported to a temporary file (``fer_ray.ensemble.onnx_export``), then:

* throughput: images/s of ``Ensemble.predict_proba`` (torch, fp32, its CPU path: one
  single-threaded stream per thread) and ``OnnxEnsemble.predict_proba`` (onnxruntime with that
  many intra-op threads), same images, same batch size, same thread count; rounds alternate
  the two, the median round counts;
* parity on the whole test file: max |p_onnx - p_torch| and the share of identical labels
  (argmax, adjusted, deferred); goals <= 1e-4 and >= 99.9 %;
* cold start: wall time of a whole ``python -m fer_ray.predict --engine onnx`` subprocess on
  one image (median of ``--cold-runs``; goal <= 1 s), next to ``python -c pass`` and the torch
  engine. Without the ``--engine`` flag (not merged yet), a ``python -c`` that imports
  ``fer_ray.ensemble.onnx_model``, loads the file and predicts one image stands in for it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fer_ray.ensemble.model import Ensemble
from fer_ray.ensemble.onnx_export import export_onnx, parity
from fer_ray.ensemble.onnx_model import OnnxEnsemble
from fer_ray.metrics import accuracy


def rate(run: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def throughput(ensemble: Ensemble, path: Path, images: np.ndarray, threads: int, batch: int,
               rounds: int) -> tuple[float, float]:
    """Median images/s over ``rounds`` alternating rounds: (torch, onnxruntime)."""
    model = OnnxEnsemble.load(path, threads=threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def run_torch() -> object:
            with torch.inference_mode():
                return ensemble.predict_proba(images, batch_size=batch)

        def run_onnx() -> object:
            return model.predict_proba(images, batch_size=batch)

        run_torch()  # warm-up: allocators, oneDNN primitives, ORT arenas
        run_onnx()
        rates: dict[str, list[float]] = {"torch": [], "onnx": []}
        for _ in range(rounds):
            rates["torch"].append(rate(run_torch, len(images)))
            rates["onnx"].append(rate(run_onnx, len(images)))
    finally:
        torch.set_num_threads(before)
    return statistics.median(rates["torch"]), statistics.median(rates["onnx"])


def wall(command: list[str], runs: int) -> float:
    """Median wall seconds of a subprocess (it must succeed)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold_starts(ensemble_dir: str, path: Path, image: np.ndarray, folder: Path,
                runs: int) -> list[tuple[str, float]]:
    png = folder / "one.png"
    Image.fromarray(image).save(png)
    py = sys.executable
    help_text = subprocess.run([py, "-m", "fer_ray.predict", "--help"], capture_output=True,
                               text=True, check=True).stdout
    rows = [("python -c pass", wall([py, "-c", "pass"], runs))]
    if "--engine" in help_text:
        rows.append(("predict --engine onnx, one png", wall(
            [py, "-m", "fer_ray.predict", "--engine", "onnx", "--ensemble", str(path),
             str(png)], runs)))
    else:
        np.save(folder / "one.npy", image[None])
        code = ("import numpy as np; from fer_ray.ensemble.onnx_model import OnnxEnsemble; "
                f"e = OnnxEnsemble.load({str(path)!r}); "
                f"print(e.decide(e.predict_proba(np.load({str(folder / 'one.npy')!r})))[0])")
        rows.append(("python -c: import onnx_model, load, predict 1 (no --engine flag yet)",
                     wall([py, "-c", code], runs)))
    rows.append(("predict (torch engine), one png", wall(
        [py, "-m", "fer_ray.predict", "--ensemble", ensemble_dir, str(png)], runs)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ensemble", required=True, help="a saved ensemble folder")
    p.add_argument("--test", required=True, help="npz with images (N, 48, 48) uint8, labels")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--batch", default="64,256", help="comma-separated batch sizes")
    p.add_argument("--images", type=int, default=1024, help="images per throughput pass")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--quick", action="store_true",
                   help="1 thread, batch 64, 256 images, 1 round, 2 cold runs, 512 test images")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    with np.load(args.test) as data:
        images, labels = data["images"], data["labels"]
    if args.quick:
        threads, batches, args.images, args.rounds, args.cold_runs = [1], [64], 256, 1, 2
        images, labels = images[:512], labels[:512]
    ensemble = Ensemble.load(args.ensemble)
    print(f"{len(ensemble.members)} members, tta {ensemble.tta}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(ensemble, path)
        print(f"export: {time.perf_counter() - start:.1f} s, "
              f"{path.stat().st_size / 2**20:.1f} MiB", flush=True)

        print(f"\n{'threads':>7} {'batch':>6} {'torch img/s':>12} {'onnx img/s':>11} "
              f"{'onnx/torch':>10}")
        sample = images[:args.images]
        for t in threads:
            for b in batches:
                fast_torch, fast_onnx = throughput(ensemble, path, sample, t, b, args.rounds)
                print(f"{t:>7} {b:>6} {fast_torch:>12.0f} {fast_onnx:>11.0f} "
                      f"{fast_onnx / fast_torch:>9.2f}x", flush=True)

        check = parity(ensemble, OnnxEnsemble.load(path), images)
        acc = accuracy(labels, OnnxEnsemble.load(path).predict(images))
        print(f"\nparity on {check.images} test images: max |p_onnx - p_torch| "
              f"{check.max_abs_diff:.2e} (goal <= 1e-4: {'met' if check.ok else 'NOT met'})")
        for rule, same in (("argmax", check.same_argmax), ("adjusted", check.same_adjusted),
                           ("deferred", check.same_deferred)):
            verdict = "met" if same >= 0.999 else "NOT met"
            print(f"identical {rule:9} {same:.4%} (goal >= 99.9 %: {verdict})")
        print(f"onnx test accuracy (argmax) {acc:.4f}")

        print(f"\ncold start, median of {args.cold_runs} (goal <= 1 s for onnx):")
        for name, seconds in cold_starts(args.ensemble, path, images[0], Path(tmp),
                                         args.cold_runs):
            print(f"  {name:70} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
