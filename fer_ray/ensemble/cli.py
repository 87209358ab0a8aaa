"""``python -m fer_ray.ensemble``: (re)build an ensemble from a finished experiment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main
from fer_ray.ensemble.build import VARIANTS, BuildResult, build_ensemble, variant_name
from fer_ray.ensemble.model import ENSEMBLE_FILES
from fer_ray.ensemble.record import MAX_MEMBERS
from fer_ray.errors import ConfigError
from fer_ray.experiment import read_search_json
from fer_ray.paths import check_output_dir, require_file_or_folder
from fer_ray.tta import TTA_MODES, tta_mode


def format_result(result: BuildResult, top_k: int) -> str:
    """Validation and test tables for every variant, then the final ensemble's figures."""
    splits = ["validation", *result.test]
    lines = [f"\n{'ensemble (top-k ' + str(top_k) + ')':<28}" + "".join(
        f"{s[:16]:>18}" for s in splits), f"{'':<28}" + "".join(
        f"{'acc   macro_f1':>18}" for _ in splits)]
    for variant in VARIANTS:
        for name in (variant_name(variant, mode) for mode in TTA_MODES):
            if name not in result.validation:  # not run: another --tta, or the deadline
                continue
            # A test split without this variant: the deadline left time for the final only.
            cells = [result.validation[name]] + [result.test[s].get(name) for s in result.test]
            lines.append(f"{name:<28}" + "".join(
                f"{c['acc']:>10.4f}{c['macro_f1']:>8.4f}" if c else f"{'-':>10}{'-':>8}"
                for c in cells))
    e = result.ensemble
    trials = len({m.info.get("trial_id", m.name) for m in e.members})
    lines.append(f"\nchosen on validation: {result.final['variant']} with {len(e.members)} "
                 f"member(s) from {trials} trial(s), "
                 f"weights {', '.join(f'{w:.2f}' for w in e.weights)}; "
                 f"temperature {e.temperature:.2f}")
    for split, figures in [("validation", result.final["validation"]),
                           *[(s, t["final"]) for s, t in result.test.items()]]:
        lines.append(
            f"  {split}: acc {figures['acc']:.4f} (adjusted rule {figures['adjusted_acc']:.4f}),"
            f" macro_f1 {figures['macro_f1']:.4f} -> {figures['adjusted_macro_f1']:.4f}; "
            f"NLL {figures['nll_before']:.3f} -> {figures['nll_after']:.3f}, "
            f"ECE {figures['ece_before']:.3f} -> {figures['ece_after']:.3f}; "
            f"deferring {1 - figures['coverage']:.0%} gives acc {figures['acc_on_kept']:.4f}")
        recalls = ", ".join(f"{c} {a:.2f}/{b:.2f}" for c, a, b in zip(
            e.classes, figures["recall_argmax"], figures["recall_adjusted"], strict=True))
        lines.append(f"    recall argmax/adjusted: {recalls}")
    return "\n".join(lines)


def format_tta(tta: dict[str, Any]) -> str:
    """The TTA mode, how it was chosen, its validation accuracy against the other modes' and
    its measured cost per image against no TTA (``build.tta_cost``)."""
    mode, acc, ms = tta["mode"], tta["val_acc"], tta["ms_per_image"]
    others = [f"{m} {acc[m]:.4f}" for m in reversed(TTA_MODES) if m in acc and m != mode]
    how = "chosen on validation" if tta["chosen_on"] == "validation" else "given by --tta"
    costs = ", ".join(f"{m} {ms[m]:.2f}" for m in TTA_MODES if m in ms)
    left_out = "".join(f"; {m} not compared (no time left before the deadline)"
                       for m in tta.get("left_out", []))
    return (f"TTA: {mode} {how} (val acc {acc[mode]:.4f}"
            f"{' vs ' + ', '.join(others) if others else ''}){left_out}; "
            f"{tta['views'][mode]} view(s), {ms[mode]:.2f} ms/image vs {ms['none']:.2f} "
            f"without\n  ensemble ms/image by mode: {costs} (on {tta['timed']['device']}, "
            f"{tta['timed']['images']} validation faces)")


def build_and_save(experiment: str | Path, out: str | Path | None, top_k: int, method: str,
                   tta: str | None, test: str | None = None, deadline: float | None = None,
                   device: str = "auto") -> BuildResult:
    """Build, save (next to the experiment by default, uploading to a URI) and print.

    tta: a TTA mode, or None / "auto" to choose it on validation; deadline: epoch seconds
    by which to be done; device: where the candidates run (see ``build_ensemble``). Every
    argument is checked before the (slow) build: ``tta`` a mode, ``top_k`` in
    1..MAX_MEMBERS, ``test`` a file or folder, ``out`` a folder the ensemble may replace
    (never the experiment).
    """
    if not 1 <= top_k <= MAX_MEMBERS:
        raise ConfigError(f"--top-k: {top_k} must be between 1 and {MAX_MEMBERS}")
    if tta not in (None, "auto"):
        tta_mode(tta, "--tta")
    read_search_json(experiment)  # an experiment at all, before its output folder is judged
    if test is not None:
        require_file_or_folder(test)
    target = str(out or storage.join(experiment, "ensemble"))
    if not storage.is_uri(target):
        sources = [] if storage.is_uri(experiment) else [experiment]
        check_output_dir(target, "--out", ENSEMBLE_FILES,
                         [*sources, *([test] if test else [])], may_hold=sources)
    started = time.time()
    result = build_ensemble(experiment, top_k=top_k, method=method,  # type: ignore[arg-type]
                            tta=tta, extra_test=test, deadline=deadline, device=device)
    if storage.is_uri(target):
        local = result.ensemble.save(storage.CACHE / "ensembles" / Path(target).name)
        storage.upload_dir(local, target)
    else:
        result.ensemble.save(target)
    print(format_result(result, top_k))
    print(format_tta(result.ensemble.info["tta"]))
    print(f"built from {result.ensemble.info.get('candidates', '?')} candidate checkpoints in "
          f"{time.time() - started:.0f} s")
    print(f"ensemble saved to {target}/ (ensemble.json + members/*.safetensors); use it with "
          f"python -m fer_ray.predict --ensemble {target} IMAGES...")
    return result


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m fer_ray.ensemble",
                                description="Build a soft-voting ensemble from an experiment.")
    p.add_argument("--experiment", required=True,
                   help="<storage>/<name> of a search (a folder or a URI)")
    p.add_argument("--out", help="output folder or URI (default <experiment>/ensemble)")
    p.add_argument("--top-k", type=int, default=5, help="1 = the best single model")
    p.add_argument("--method", choices=["uniform", "greedy"], default="greedy")
    p.add_argument("--tta", nargs="?", choices=["auto", *TTA_MODES], default="auto",
                   const="flip", help="test-time augmentation: auto (default: the mode most "
                   "accurate on validation), none, flip (the mirror image too; also --tta "
                   "alone), flip_shift (flip x {centre, 2 px shifts}: 10 views)")
    p.add_argument("--no-tta", dest="tta", action="store_const", const="none",
                   help="the same as --tta none")
    p.add_argument("--test", help="an extra labelled test set, scored after all choices")
    p.add_argument("--device", default="auto",
                   help="where the candidates run: auto (a GPU if there is one), cpu, cuda:1")
    args = p.parse_args(argv)

    def body() -> int:
        build_and_save(args.experiment, args.out, args.top_k, args.method, args.tta, args.test,
                       device=args.device)
        return 0

    return run_main(body)
