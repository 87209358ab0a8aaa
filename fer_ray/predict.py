"""``python -m fer_ray.predict --ensemble DIR [--out FILE] [--kaggle] INPUT...``

Inputs: image files, folders (searched recursively), FER2013-style CSVs (a ``pixels``
column) and ``.npz`` files with ``images``. Any size or colour is converted to 48x48
grayscale; faces are assumed to be cropped already (no face detection). Inputs that cannot be
read (any file type, damaged, not a regular file, over a size limit) are reported on stderr
and in the ``error`` column; everything else is still predicted (``fer_ray.data.inputs``).
Exit status is non-zero only when nothing could be read. ``--out`` is checked before the
ensemble loads (not a folder, not an input, in a folder that can be created) and written to a
temporary file that replaces it only when predictions were made. No Ray import: starts fast.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main
from fer_ray.data import CLASS_NAMES
from fer_ray.data.inputs import Item, iter_inputs
from fer_ray.errors import ConfigError, DataError
from fer_ray.paths import check_output_file

if TYPE_CHECKING:  # imported when predicting: flags and paths are checked without torch
    from fer_ray.ensemble.model import Ensemble

BATCH = 1024


class _NothingRead(Exception):
    """No input could be read: the output file is left as it was."""


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_predictions(ensemble: Ensemble, inputs: list[str], handle: TextIO, kaggle: bool,
                      defer: bool, rule: str, progress: bool) -> tuple[int, int]:
    """Predict every input and write CSV rows to ``handle``: (rows predicted, rows in all)."""
    import torch

    writer = csv.writer(handle)
    if kaggle:
        writer.writerow(["id", "label"])
    else:
        writer.writerow(["source", "label", "label_name", *[f"p_{c}" for c in CLASS_NAMES],
                         *(["deferred"] if defer else []), "error"])
    ok = done = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in _batches(iter_inputs(inputs), BATCH):
            good = [i for i in batch if i.image is not None]
            probs = np.zeros((0, len(CLASS_NAMES)))
            labels = deferred = np.zeros(0, dtype=np.int64)
            if good:
                probs = ensemble.predict_proba(np.stack([i.image for i in good]))  # type: ignore[misc]
                labels, deferred = ensemble.decide(probs, rule)
            k = 0
            for item in batch:
                done += 1
                if item.image is None:
                    print(f"error: {item.source}: {item.error}", file=sys.stderr)
                    writer.writerow([done - 1, ""] if kaggle else [
                        item.source, "", "", *[""] * len(CLASS_NAMES),
                        *([""] if defer else []), item.error])
                    continue
                label = int(labels[k])
                if kaggle:
                    writer.writerow([done - 1, label])
                else:
                    writer.writerow([item.source, label, CLASS_NAMES[label],
                                     *[f"{p:.5f}" for p in probs[k]],
                                     *([int(deferred[k])] if defer else []), ""])
                k += 1
                ok += 1
            if done >= 10 * BATCH or (progress and done > BATCH):
                rate = done / max(time.perf_counter() - start, 1e-9)
                print(f"\r{done} rows, {rate:.0f}/s", end="", file=sys.stderr, flush=True)
    return ok, done


def predict_files(ensemble_dir: str, inputs: list[str], out: Path | None, kaggle: bool,
                  defer: bool, rule: str, device: str) -> int:
    """Write predictions as CSV (to ``out``, else stdout); returns the rows that were read.

    ``out`` is replaced only when at least one row was predicted.
    """
    from fer_ray.ensemble.model import Ensemble
    from fer_ray.models.inference import resolve_device

    target = resolve_device(device)
    ensemble = Ensemble.load(storage.fetch_dir(ensemble_dir)).to(target)
    if out is None:
        return write_predictions(ensemble, inputs, sys.stdout, kaggle, defer, rule, False)[0]
    try:
        created = storage.make_dirs(out.parent)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create its folder ({exc.strerror})") from None
    try:
        with storage.atomic_path(out) as tmp:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                ok, done = write_predictions(ensemble, inputs, handle, kaggle, defer, rule, True)
            if ok == 0:
                raise _NothingRead
    except _NothingRead:
        storage.remove_created(created)
        return 0
    except OSError as exc:  # a full disk, a vanished folder: the old output stays
        storage.remove_created(created)
        raise DataError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        storage.remove_created(created)
        raise
    print(f"\n{ok} of {done} rows predicted -> {out}", file=sys.stderr)
    return ok


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fer_ray.predict",
                       description="Predict emotions with a saved ensemble.")
    p.add_argument("--ensemble", required=True, help="an ensemble folder (or its URI)")
    p.add_argument("--out", type=Path, help="output CSV (default: standard output)")
    p.add_argument("--kaggle", action="store_true", help="write id,label only")
    p.add_argument("--defer", action="store_true",
                   help="add a 'deferred' column: 1 where confidence is below the ensemble's "
                        "validation-chosen threshold")
    p.add_argument("--rule", choices=["argmax", "adjusted"], default="argmax",
                   help="adjusted: per-class biases fitted on validation for macro-F1")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("inputs", nargs="+", help="images, folders, CSV or npz files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.out is not None:
            local = [] if storage.is_uri(args.ensemble) else [args.ensemble]
            check_output_file(args.out, "--out", [*args.inputs, *local])
        ok = predict_files(args.ensemble, args.inputs, args.out, args.kaggle, args.defer,
                           args.rule, args.device)
        if ok == 0:
            print("error: no input could be read"
                  + (f" ({args.out} was not written)" if args.out else ""), file=sys.stderr)
            return 1
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
