"""GPU benchmarks (one GPU, <= 8 minutes): training throughput and MFU, trials per GPU, a search.

    .venv/bin/python scripts/bench_gpu.py [--data /work/shared/data/fer2013] [--out FILE]

(a) seed_hw3 training on 48x48 FER2013 (augmentation on; bf16 autocast, channels_last and
    cudnn.benchmark, as ``Trainer`` does on CUDA): images/s, seconds per epoch, and MFU =
    images/s x 3 x forward FLOPs / peak (forward FLOPs counted from the model's conv and linear
    layers; peak from --peak-tflops, 989 = H200 bf16 dense); eager vs ``torch.compile``.
(b) 1, 2, 4, 8 concurrent small-net trials sharing the GPU (gpus_per_trial 1 ... 0.125), real
    Ray Tune trials of the search's trainable: per-trial images/s, and the total images/s
    over the window in which all k trials were training at once (trials start and end at
    different times, so adding up per-trial averages would overstate it).
(c) a real search (``paper`` space, Optuna TPE + ASHA, --time-budget minutes) via
    ``run_experiment``, then the ensemble (``build_and_save``): best single model and ensemble
    accuracy on PublicTest.

Without CUDA it runs a tiny CPU version of all three (small models, subsampled data, the
``smoke`` space), so it can be tested anywhere. Prints a table; writes the figures to --out.
"""

from __future__ import annotations

import os

# Before anything imports Ray: a local cluster must agree on auth; no usage reporting.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import fixed_space  # a space with nothing to sample

from fer_ray.config import DataConfig, TrainConfig, merge
from fer_ray.data import FerData, load_data
from fer_ray.experiment import SearchSettings
from fer_ray.search.tuner import build_trainable, init_ray, run_config
from fer_ray.train import Trainer, get_preset

# FER2013_DIR if set, else the shared folder beside the repository (as CI lays it out).
DEFAULT_DATA = Path(os.environ.get(
    "FER2013_DIR", Path(__file__).resolve().parent.parent.parent / "shared/data/fer2013"))


def forward_flops(model: torch.nn.Module, size: int = 48) -> int:
    """FLOPs (2 x multiply-adds) of one image's forward pass through the conv and linear layers."""
    total = 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
              output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, torch.nn.Linear):
            total += 2 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total


def throughput(config: TrainConfig, data: FerData, device: str, epochs: int,
               compile_model: bool) -> dict[str, Any]:
    """Training images/s over ``epochs`` whole epochs after a short warm-up (and compilation)."""
    trainer = Trainer(config, data.train, data.val, device)
    out: dict[str, Any] = {"fwd_flops": forward_flops(trainer.model)}
    start = time.perf_counter()
    if compile_model:
        trainer.model = torch.compile(trainer.model, dynamic=False)  # type: ignore[assignment]
    steps = trainer.steps_per_epoch
    trainer.steps_per_epoch = min(steps, 20)  # warm-up: compilation, cudnn autotuning
    trainer.train_epoch()
    trainer.steps_per_epoch = steps
    out["warmup_s"] = time.perf_counter() - start
    timed = [trainer.train_epoch() for _ in range(epochs)]
    out["images_per_s"] = statistics.fmean(m["images_per_s"] for m in timed)
    out["epoch_s"] = statistics.fmean(m["epoch_seconds"] for m in timed)
    return out


def concurrent_trials(k: int, config: TrainConfig, data: FerData, epochs: int, gpu: bool,
                      storage: str) -> dict[str, Any]:
    """k identical small-net trials at once (gpus_per_trial 1/k): per-trial and total images/s."""
    from ray import tune

    cpus = os.cpu_count() or 1
    settings = SearchSettings(num_samples=k, max_epochs=epochs, storage=storage,
                              name=f"concurrency-{k}", gpus_per_trial=1 / k if gpu else 0.0,
                              cpus_per_trial=max(1, cpus // k) if gpu else cpus / k)
    rc = run_config(settings)
    rc.callbacks = []
    tuner = tune.Tuner(build_trainable(settings, fixed_space(), config, data), param_space={},
                       tune_config=tune.TuneConfig(num_samples=k, max_concurrent_trials=k),
                       run_config=rc)
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    skip = 1 if epochs > 1 else 0  # first epoch: worker start-up and autotuning
    frames = [grid[i].metrics_dataframe for i in range(len(grid))
              if grid[i].error is None and grid[i].metrics_dataframe is not None]
    per_trial = [statistics.fmean(df["images_per_s"].iloc[skip:]) for df in frames]
    return {"trials": k, "gpus_per_trial": settings.gpus_per_trial, "ok": len(per_trial),
            "per_trial_images_per_s": statistics.fmean(per_trial) if per_trial else 0.0,
            "total_images_per_s": concurrent_rate(frames, len(data.train)),
            "end_to_end_images_per_s": len(per_trial) * epochs * len(data.train) / wall,
            "wall_s": wall}


def concurrent_rate(frames: list[Any], images_per_epoch: int) -> float:
    """Total training images/s of trials while all of them train at once.

    Each frame holds one trial's epochs (``train_end``, ``epoch_seconds``: when and how long
    it trained). The window runs from the last trial's first epoch start to the first trial's
    last epoch end; each epoch contributes its images pro rata to its overlap with it.
    """
    if not frames:
        return 0.0
    spans = [[(end - secs, end) for end, secs in zip(df["train_end"], df["epoch_seconds"],
                                                      strict=True)] for df in frames]
    start = max(s[0][0] for s in spans)
    stop = min(s[-1][1] for s in spans)
    if stop <= start:
        return 0.0
    images = sum(images_per_epoch * max(0.0, min(b, stop) - max(a, start)) / (b - a)
                 for s in spans for a, b in s if b > a)
    return images / (stop - start)


def search(args: argparse.Namespace, gpu: bool) -> dict[str, Any]:
    """A time-budgeted search, then its ensemble; PublicTest accuracy of both."""
    from fer_ray.ensemble.cli import build_and_save
    from fer_ray.search.run import run_experiment

    cpus = os.cpu_count() or 1
    gpt = args.search_gpus_per_trial
    settings = SearchSettings(
        data=args.data, space=args.space, num_samples=args.search_samples,
        max_epochs=args.search_max_epochs, reduction_factor=3, storage=args.storage,
        name=f"bench-gpu-{time.strftime('%Y%m%d-%H%M%S')}", time_budget=args.time_budget,
        gpus_per_trial=gpt if gpu else 0.0,
        cpus_per_trial=max(1, int(cpus * gpt)) if gpu else 1.0, subsample=args.subsample)
    start = time.perf_counter()
    record = run_experiment(settings)
    location = Path(settings.storage).expanduser().resolve() / settings.name  # local storage
    ensemble = build_and_save(location, None, settings.top_k, "greedy", None,
                              deadline=record["timing"]["deadline"])
    test = next(iter(ensemble.test), None)  # public_test when --data has it
    single = record.get("best_single_test", {}).get(test or "", {})
    return {"experiment": str(location), "trials": record.get("trials"),
            "best_val_acc": record.get("best", {}).get("val_acc"), "test_split": test,
            "best_single_test_acc": single.get("acc"),
            "ensemble_test_acc": ensemble.test[test]["final"]["acc"] if test else None,
            "ensemble_val_acc": ensemble.final["validation"]["acc"],
            "wall_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None,
                   help="FER2013 folder (train.npz + public_test.npz), or 'synthetic' for the "
                        "built-in faces; default the shared copy if present, else synthetic")
    p.add_argument("--peak-tflops", type=float,
                   help="peak of the device for MFU (default 989 on CUDA: H200 bf16 dense)")
    p.add_argument("--epochs", type=int, default=2, help="(a) timed epochs per variant")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="(a) also time torch.compile (auto: on CUDA only)")
    p.add_argument("--concurrency", default="1,2,4,8", help="(b) trials sharing the GPU")
    p.add_argument("--sweep-epochs", type=int, default=3, help="(b) epochs per trial")
    p.add_argument("--space", default="paper", help="(c) search space")
    p.add_argument("--time-budget", type=float, default=3.5,
                   help="(c) minutes for the whole search, ensemble included")
    p.add_argument("--search-max-epochs", type=int, default=6)
    p.add_argument("--search-samples", type=int, default=200, help="(c) the budget ends it")
    p.add_argument("--search-gpus-per-trial", type=float, default=0.25)
    p.add_argument("--subsample", type=int, help="(c) training images (default all)")
    p.add_argument("--skip", default="", help="parts to skip, e.g. 'b,c'")
    p.add_argument("--storage", default="runs", help="(c) experiments folder")
    p.add_argument("--out", type=Path, default=Path("runs/bench_gpu.json"))
    p.add_argument("--quick", action="store_true", help="(CPU) the smallest run of each part")
    args = p.parse_args()
    if args.data in ("", "synthetic"):
        args.data = None
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    model, images, sweep_images = "seed_hw3", None, None
    if not gpu:  # a tiny version of everything, so the script is testable without a GPU
        model = "tiny" if args.quick else "small"
        images, sweep_images = (256, 300) if args.quick else (512, 600)
        args.concurrency, args.space = "1,2", "smoke"
        args.search_samples = 3 if args.quick else 4
        args.search_max_epochs, args.time_budget = (1 if args.quick else 2), 0.5
        args.subsample = args.subsample or (300 if args.quick else 600)
        args.epochs, args.sweep_epochs = (1, 1) if args.quick else (2, 2)
    peak = args.peak_tflops or (989.0 if gpu else None)
    name = torch.cuda.get_device_name() if gpu else "CPU (no CUDA: fallback mode)"
    print(f"device {name}, torch {torch.__version__}, data {args.data or 'synthetic'}",
          flush=True)
    figures: dict[str, Any] = {"device": name, "torch": torch.__version__,
                               "data": args.data or "synthetic", "cuda": gpu}
    data = load_data(DataConfig(path=args.data, subsample=images), seed=0)
    skip = set(args.skip.split(","))

    if "a" not in skip:
        # seed_hw3's recipe (augmentation, Adam, batch 64) with the chosen network.
        config = dataclasses.replace(get_preset("seed_hw3"), model=get_preset(model).model)
        variants = {"eager": False}
        if args.compile == "on" or (args.compile == "auto" and gpu):
            variants["compiled"] = True
        for label, compiled in variants.items():
            try:
                r = throughput(config, data, device, args.epochs, compiled)
            except Exception as exc:  # e.g. no triton / no C++ compiler for torch.compile
                figures[f"a_{label}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            r["mfu"] = r["images_per_s"] * 3 * r["fwd_flops"] / (peak * 1e12) if peak else None
            r["fer2013_epoch_s"] = 28709 / r["images_per_s"]
            figures[f"a_{label}"] = {"model": model, **r}
            print(f"(a) {model} {label}: {r['images_per_s']:.0f} images/s", flush=True)
        a, c = figures.get("a_eager", {}), figures.get("a_compiled", {})
        if "images_per_s" in a and "images_per_s" in c:
            figures["a_compile_speedup"] = c["images_per_s"] / a["images_per_s"]

    init_ray(SearchSettings())
    if "b" not in skip:
        sweep = data if sweep_images == images else load_data(
            DataConfig(path=args.data, subsample=sweep_images), seed=0)
        small = merge(get_preset("small"), {"epochs": args.sweep_epochs})
        figures["b"] = []
        scratch = tempfile.mkdtemp(prefix="bench_gpu_")  # sweep checkpoints are not kept
        for k in (int(v) for v in args.concurrency.split(",")):
            figures["b"].append(concurrent_trials(k, small, sweep, args.sweep_epochs, gpu,
                                                  scratch))
            print(f"(b) {k} trials: {figures['b'][-1]['total_images_per_s']:.0f} images/s "
                  "in total", flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if "c" not in skip:
        figures["c"] = search(args, gpu)

    print_table(figures, peak)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str))
    print(f"\nfigures written to {args.out}")


def print_table(f: dict[str, Any], peak: float | None) -> None:
    """Everything measured, one line per figure."""
    rows: list[tuple[str, str]] = []
    for label in ("eager", "compiled"):
        r = f.get(f"a_{label}")
        if r is None:
            continue
        if "error" in r:
            rows.append((f"(a) {label}", f"failed: {r['error'][:80]}"))
            continue
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%} of {peak:g} TFLOP/s"
        rows += [(f"(a) {r['model']} {label} train images/s", f"{r['images_per_s']:.0f}"),
                 (f"(a) {label} s per epoch (measured; FER2013 28,709)",
                  f"{r['epoch_s']:.2f}; {r['fer2013_epoch_s']:.1f}"),
                 (f"(a) {label} forward GFLOP/image; MFU (3x forward)",
                  f"{r['fwd_flops'] / 1e9:.3f}; {mfu}"),
                 (f"(a) {label} warm-up (+ compile) s", f"{r['warmup_s']:.1f}")]
    if "a_compile_speedup" in f:
        rows.append(("ratio compiled/eager images/s", f"{f['a_compile_speedup']:.2f}"))
    b = f.get("b", [])
    for row in b:
        rows.append((f"(b) {row['trials']} trials (gpus/trial {row['gpus_per_trial']:g}) "
                     "total images/s",
                     f"{row['total_images_per_s']:.0f} ({row['per_trial_images_per_s']:.0f} "
                     f"per trial, {row['end_to_end_images_per_s']:.0f} end to end)"))
    if len(b) > 1:
        gain = b[-1]["total_images_per_s"] / max(b[0]["total_images_per_s"], 1e-9)
        rows.append((f"ratio total images/s {b[-1]['trials']} trials / 1 trial", f"{gain:.2f}"))
    c = f.get("c")
    if c:
        split = c["test_split"] or "no test split"
        rows += [("(c) search + ensemble wall s", f"{c['wall_s']:.0f}"),
                 ("(c) trials", str(c["trials"]))]
        rows += [(f"(c) {key} ({split})", "n/a" if c[key] is None else f"{c[key]:.4f}")
                 for key in ("best_val_acc", "best_single_test_acc", "ensemble_test_acc")]
    print(f"\n{'figure':58}value")
    for label, value in rows:
        print(f"{label:58}{value}")


if __name__ == "__main__":
    main()
