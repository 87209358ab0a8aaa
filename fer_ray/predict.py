"""``python -m fer_ray.predict --ensemble DIR [--out FILE] [--kaggle] INPUT...``

Inputs: image files, folders (searched recursively), FER2013-style CSVs (a ``pixels``
column) and ``.npz`` files with ``images``. Any size or colour is converted to 48x48
grayscale; faces are assumed to be cropped already (no face detection). Rows that cannot be
read are reported on stderr and in the ``error`` column; everything else is still predicted.
Exit status is non-zero only when nothing could be read. No Ray import: starts fast.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_ray._cli import run_main
from fer_ray.data import CLASS_NAMES
from fer_ray.data.images import convert_stack, read_image
from fer_ray.data.loaders import IMAGE_SUFFIXES
from fer_ray.errors import DataError

BATCH = 1024


@dataclass
class Item:
    """One input row: an image (48, 48) uint8, or the reason it could not be read."""

    source: str
    image: np.ndarray | None
    error: str = ""


def _csv_items(path: Path) -> Iterator[Item]:
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        yield Item(str(path), None, f"cannot read CSV ({str(exc).splitlines()[0]})")
        return
    if "pixels" not in table.columns:
        yield Item(str(path), None, f"no 'pixels' column (found: {', '.join(table.columns)})")
        return
    for row, text in enumerate(table["pixels"], start=2):  # line 1 is the header
        source = f"{path}:{row}"
        try:
            values = np.array(text.split(), dtype=np.int64)
        except ValueError:
            yield Item(source, None, "non-numeric pixel value")
            continue
        if values.size != 48 * 48 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
            yield Item(source, None, f"expected 2304 pixel values 0..255, got {values.size}")
            continue
        yield Item(source, values.astype(np.uint8).reshape(48, 48))


def _npz_items(path: Path) -> Iterator[Item]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive.files:
                yield Item(str(path), None, f"no 'images' array (found: {archive.files})")
                return
            images, _ = convert_stack(archive["images"], str(path))
    except (OSError, ValueError, DataError) as exc:
        yield Item(str(path), None, str(exc).removeprefix(f"{path}: "))
        return
    for index, image in enumerate(images):
        yield Item(f"{path}:{index}", image)


def _image_item(path: Path) -> Item:
    try:
        return Item(str(path), read_image(path)[0])
    except DataError as exc:
        return Item(str(path), None, str(exc).removeprefix(f"{path}: "))


def iter_inputs(inputs: list[str]) -> Iterator[Item]:
    """Every input as Items, in the order given (folders: sorted, recursive)."""
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    yield _image_item(file)
                elif file.suffix.lower() in (".csv", ".npz"):
                    yield from iter_inputs([str(file)])
        elif not path.exists():
            yield Item(str(path), None, "no such file or directory")
        elif path.suffix.lower() == ".csv":
            yield from _csv_items(path)
        elif path.suffix.lower() == ".npz":
            yield from _npz_items(path)
        else:
            yield _image_item(path)


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(ensemble_dir: str, inputs: list[str], out: Path | None, kaggle: bool,
                  defer: bool, rule: str, device: str) -> int:
    """Write predictions as CSV; returns the number of rows that could be read."""
    import torch

    from fer_ray.ensemble.model import Ensemble
    from fer_ray.storage import fetch_dir
    from fer_ray.train.loop import resolve_device

    ensemble = Ensemble.load(fetch_dir(ensemble_dir)).to(resolve_device(device))
    handle = out.open("w", newline="") if out else sys.stdout
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
            if done >= 10 * BATCH or (out is not None and done > BATCH):
                rate = done / max(time.perf_counter() - start, 1e-9)
                print(f"\r{done} rows, {rate:.0f}/s", end="", file=sys.stderr, flush=True)
    if out:
        handle.close()
        print(f"\n{ok} of {done} rows predicted -> {out}", file=sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_ray.predict", description=__doc__.split(
        "\n")[0].strip("`"))
    p.add_argument("--ensemble", required=True, help="an ensemble folder (or its URI)")
    p.add_argument("--out", type=Path, help="output CSV (default: standard output)")
    p.add_argument("--kaggle", action="store_true", help="write id,label only")
    p.add_argument("--defer", action="store_true",
                   help="add a 'deferred' column: 1 where confidence is below the ensemble's "
                        "validation-chosen threshold")
    p.add_argument("--rule", choices=["argmax", "adjusted"], default="argmax",
                   help="adjusted: per-class biases fitted on validation for macro-F1")
    p.add_argument("--device", default="auto")
    p.add_argument("inputs", nargs="+", help="images, folders, CSV or npz files")
    args = p.parse_args(argv)

    def body() -> int:
        ok = predict_files(args.ensemble, args.inputs, args.out, args.kaggle, args.defer,
                           args.rule, args.device)
        if ok == 0:
            print("error: no input could be read", file=sys.stderr)
            return 1
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
