"""``python -m fer_ray.predict --ensemble DIR|model.onnx [--out FILE] [--faces auto] INPUT...``

Inputs: image files, folders (searched recursively), FER2013-style CSVs (a ``pixels``
column) and ``.npz`` files with ``images``. Faces (``--faces``, see ``fer_ray.recognize``):
``auto`` finds the faces in photos larger than a FER crop and takes small images, CSV/npz
rows and crop-shaped images without a found face as faces; ``detect`` finds faces in every
image file; ``none`` takes every input as one face. One CSV row per face: ``source, face, x,
y, w, h, detector_score, label, label_name, p_<class> for each of the ensemble's classes
(p_angry ... p_neutral for FER2013, p_neutral ... p_contempt for FER+), [deferred,]
whole_image, error`` (whole_image 1: no face was detected, the whole image was classified as
one face); a photo without a face is one row saying so.
``--annotate DIR`` writes each photo with its boxes and top emotions drawn on (PNG).

Inputs that cannot be read (any file type, damaged, not a regular file, over a size limit)
are reported on stderr and in the ``error`` column; everything else is still predicted
(``fer_ray.data.inputs``). Exit status is non-zero only when nothing could be read. ``--out``
is checked before the ensemble loads and written to a temporary file that replaces it only
when something was read. ``--engine onnx`` (or an ``.onnx`` ensemble) runs an exported
ensemble with onnxruntime and never imports torch. No Ray import: starts fast.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fer_ray import storage
from fer_ray._cli import ArgumentParser, run_main
from fer_ray.data.faces import MIN_FACE
from fer_ray.data.inputs import Item, iter_inputs
from fer_ray.errors import ConfigError, DataError
from fer_ray.paths import check_output_dir, check_output_file, shown
from fer_ray.recognize import (
    CROP_MAX_SIDE,
    ENGINES,
    FACES_MODES,
    FER_CROP_MAX,
    NO_FACE,
    FaceResult,
    detects,
    too_small,
)

if TYPE_CHECKING:  # imported when predicting: flags and paths are checked without torch
    from fer_ray.annotate import Annotator
    from fer_ray.recognize import Recognizer

BATCH = 1024
MAX_MIN_FACE = 10_000  # px: --min-face above any photo's side finds nothing, so it is a typo


class _NothingRead(Exception):
    """No input could be read: the output file is left as it was."""


@dataclass(frozen=True)
class Options:
    """How rows are made and written (the CLI's flags)."""

    faces: str = "auto"
    min_face: int = MIN_FACE
    rule: str = "argmax"
    kaggle: bool = False
    defer: bool = False
    annotate: Path | None = None


@dataclass
class Counts:
    """read: inputs read (faces predicted or photos without a face); rows: rows written."""

    read: int = 0
    predicted: int = 0
    rows: int = 0
    no_face: int = 0
    started: float = field(default_factory=time.perf_counter)


class RowWriter:
    """CSV rows in the predict format (or Kaggle's ``id,label``); ``classes``: the
    ensemble's class names, one probability column each."""

    def __init__(self, handle: TextIO, options: Options, counts: Counts,
                 classes: Sequence[str]) -> None:
        self.writer = csv.writer(handle)
        self.options = options
        self.counts = counts
        self.classes = tuple(classes)
        if options.kaggle:
            self.writer.writerow(["id", "label"])
        else:
            self.writer.writerow(["source", "face", "x", "y", "w", "h", "detector_score",
                                  "label", "label_name", *[f"p_{c}" for c in self.classes],
                                  *(["deferred"] if options.defer else []), "whole_image",
                                  "error"])

    def _empty(self, source: str, error: str) -> None:
        self.counts.rows += 1
        if self.options.kaggle:
            self.writer.writerow([self.counts.rows - 1, ""])
            return
        self.writer.writerow([source, *[""] * (8 + len(self.classes)),
                              *([""] if self.options.defer else []), "", error])

    def error(self, item: Item) -> None:
        print(f"error: {item.source}: {item.error}", file=sys.stderr)
        self._empty(item.source, item.error)

    def no_face(self, source: str) -> None:
        self.counts.read += 1
        self.counts.no_face += 1
        self._empty(source, NO_FACE)

    def face(self, source: str, face: FaceResult) -> None:
        self.counts.rows += 1
        self.counts.predicted += 1
        if self.options.kaggle:
            self.writer.writerow([self.counts.rows - 1, face.label])
            return
        score = "" if face.detector_score is None else f"{face.detector_score:.3f}"
        self.writer.writerow([source, face.face, *face.box, score, face.label, face.label_name,
                              *[f"{p:.5f}" for p in face.probs],
                              *([int(face.deferred)] if self.options.defer else []),
                              int(face.whole_image), ""])


def _write_faces(recognizer: Recognizer, items: list[Item], rows: RowWriter) -> None:
    """Classify a batch of items taken as whole faces, in one ensemble call."""
    if not items:
        return
    crops = np.stack([item.face_image() for item in items])
    probs, labels, deferred = recognizer.classify(crops, rows.options.rule)
    for k, item in enumerate(items):
        height, width = item.photo.shape[:2] if item.photo is not None else crops.shape[1:]
        rows.counts.read += 1
        rows.face(item.source, FaceResult(0, (0, 0, int(width), int(height)), None, probs[k],
                                          int(labels[k]), bool(deferred[k]),
                                          recognizer.classes))
    items.clear()


def _write_photo(recognizer: Recognizer, item: Item, rows: RowWriter,
                 annotator: Annotator | None) -> None:
    """Find and classify the faces of one photo; annotate it when asked."""
    assert item.photo is not None
    options = rows.options
    result = recognizer.recognize(item.photo, options.faces, options.min_face, options.rule)
    if not result.faces:
        rows.no_face(item.source)
    else:
        rows.counts.read += 1
    for face in result.faces:
        rows.face(item.source, face)
    if annotator is not None:
        annotator.write(item.source, item.photo, result)


def write_predictions(recognizer: Recognizer, inputs: Sequence[str], handle: TextIO,
                      options: Options, progress: bool) -> Counts:
    """Predict every input and write CSV rows to ``handle``.

    Faces taken whole are classified in batches of ``BATCH``; a photo's faces in one call,
    so its annotation can be drawn at once (the pending batch goes first: rows keep the
    order of the inputs).
    """
    from fer_ray.annotate import Annotator

    counts = Counts()
    rows = RowWriter(handle, options, counts, recognizer.classes)
    annotator = Annotator(options.annotate) if options.annotate else None
    pending: list[Item] = []
    for item in iter_inputs(inputs, photos=options.faces != "none"):
        if item.photo is not None:
            item.error = too_small(item.photo.shape)
        if item.error:
            _write_faces(recognizer, pending, rows)
            rows.error(item)
        elif item.photo is not None and detects(item.photo.shape, options.faces):
            _write_faces(recognizer, pending, rows)
            _write_photo(recognizer, item, rows, annotator)
        else:
            pending.append(item)
            if len(pending) == BATCH:
                _write_faces(recognizer, pending, rows)
        if counts.rows >= 10 * BATCH or (progress and counts.rows > BATCH):
            rate = counts.rows / max(time.perf_counter() - counts.started, 1e-9)
            print(f"\r{counts.rows} rows, {rate:.0f}/s", end="", file=sys.stderr, flush=True)
    _write_faces(recognizer, pending, rows)
    return counts


def _summary(counts: Counts, out: Path | None) -> str:
    faces = f"{counts.predicted} faces predicted"
    plural = "s" if counts.no_face != 1 else ""
    missing = f", {counts.no_face} photo{plural} without a face" if counts.no_face else ""
    return f"{faces}{missing} ({counts.rows} rows) -> {out if out else 'standard output'}"


def predict_files(ensemble: str, inputs: list[str], out: Path | None, options: Options,
                  engine: str = "auto", device: str = "auto") -> int:
    """Write predictions as CSV (to ``out``, else stdout); returns how many inputs were read.

    ``out`` is replaced only when at least one input was read; folders made for ``out`` or
    ``options.annotate`` are removed again when nothing was.
    """
    from fer_ray.recognize import Recognizer

    recognizer = Recognizer.load(ensemble, engine, device)
    created: list[Path] = []
    try:
        for folder in ([out.parent] if out else []) + ([options.annotate]
                                                        if options.annotate else []):
            try:
                created += storage.make_dirs(folder)
            except OSError as exc:
                raise ConfigError(f"{shown(folder)}: cannot create this folder "
                                  f"({exc.strerror})") from None
        if out is None:  # a closed pipe (| head) is the CLI wrapper's to report
            counts = write_predictions(recognizer, inputs, sys.stdout, options, False)
            if counts.read == 0:
                raise _NothingRead
        else:
            try:
                with storage.atomic_path(out) as tmp:
                    with tmp.open("w", newline="", encoding="utf-8") as handle:
                        counts = write_predictions(recognizer, inputs, handle, options, True)
                    if counts.read == 0:
                        raise _NothingRead
            except OSError as exc:  # a full disk, a vanished folder: the old output stays
                raise DataError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    except _NothingRead:
        storage.remove_created(created)
        return 0
    except BaseException:
        storage.remove_created(created)
        raise
    print(("\n" if out else "") + _summary(counts, out), file=sys.stderr)
    return counts.read


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_MIN_FACE:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..{MAX_MIN_FACE}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fer_ray.predict",
                       description="Predict the emotions of faces with a saved ensemble.")
    p.add_argument("--ensemble", required=True,
                   help="an ensemble folder (or its URI), or an exported .onnx file")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="torch or onnx (onnxruntime, no torch); auto: onnx for .onnx files")
    p.add_argument("--out", type=Path, help="output CSV (default: standard output)")
    p.add_argument("--faces", choices=FACES_MODES, default="auto",
                   help=f"auto: find faces in photos larger than {FER_CROP_MAX} px, take "
                        "smaller images, CSV/npz rows and crop-shaped images without a found "
                        f"face (up to {CROP_MAX_SIDE} px, nearly square) as faces; detect: "
                        "always find faces; none: every input is one face")
    p.add_argument("--min-face", type=_positive_int, default=MIN_FACE, metavar="PX",
                   help=f"smallest face to report, in the photo's pixels (default {MIN_FACE}; "
                        "the detector cannot find smaller ones)")
    p.add_argument("--annotate", type=Path, metavar="DIR",
                   help="write each photo with boxes and top emotions drawn on, as DIR/NAME.png")
    p.add_argument("--kaggle", action="store_true", help="write id,label only (one row per "
                   "input: with --faces none)")
    p.add_argument("--defer", action="store_true",
                   help="add a 'deferred' column: 1 where confidence is below the ensemble's "
                        "validation-chosen threshold")
    p.add_argument("--rule", choices=["argmax", "adjusted"], default="argmax",
                   help="adjusted: per-class biases fitted on validation for macro-F1")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (torch)")
    p.add_argument("inputs", nargs="+", help="images, folders, CSV or npz files")
    return p


def _options(args: argparse.Namespace) -> Options:
    """The flags as Options, after the checks that need no ensemble."""
    faces = args.faces
    if args.kaggle:
        if faces == "detect" or args.annotate:
            raise ConfigError("--kaggle writes one row per input: it cannot be used with "
                              "--faces detect or --annotate")
        faces = "none"
    if args.annotate is not None and faces == "none":
        raise ConfigError("--annotate draws found faces: use --faces auto or detect")
    local = [] if storage.is_uri(args.ensemble) else [args.ensemble]
    if args.out is not None:
        check_output_file(args.out, "--out", [*args.inputs, *local])
    if args.annotate is not None:
        check_output_dir(args.annotate, "--annotate", ["*.png"], [*args.inputs, *local])
    return Options(faces, args.min_face, args.rule, args.kaggle, args.defer, args.annotate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        read = predict_files(args.ensemble, args.inputs, args.out, _options(args),
                             args.engine, args.device)
        if read == 0:
            print("error: no input could be read"
                  + (f" ({args.out} was not written)" if args.out else ""), file=sys.stderr)
            return 1
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
