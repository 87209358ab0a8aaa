"""Read FER datasets (Kaggle CSVs, .npz files, image folders) into (N, 48, 48) uint8 arrays.

read_source(path) -> RawDataset: fer2013.csv (Usage Training/PublicTest/PrivateTest -> train,
tests["public_test"], tests["private_test"]); any CSV with emotion,pixels and no Usage (train
pool); a folder with train.csv and/or test.csv (-> tests["test"]); image trees
root/<split>/<class>/*.png or root/<class>/*.png; an .npz file or a folder of them (train.npz,
val.npz, other x.npz -> tests["x"]). read_split(path, name) -> Split reads one test set.
Every problem is a one-line DataError naming the file and, for CSV, the line number an editor
shows (header = line 1). Rows are never dropped silently.

CSV parsing lives in fer_ray.data.csv_files; this module reads .npz files and image trees
and dispatches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_ray.data._types import CLASS_NAMES, NUM_CLASSES, RawDataset, Split
from fer_ray.data.csv_files import read_csv_folder, read_csv_source, read_csv_split
from fer_ray.data.images import convert_stack, read_images
from fer_ray.data.npz_files import read_npz
from fer_ray.errors import DataError, reason
from fer_ray.paths import require_file_or_folder

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_CLASS_INDEX = {n: i for i, n in enumerate(CLASS_NAMES)} | {str(i): i for i in range(NUM_CLASSES)}
_ALLOWED_CLASSES = ", ".join(CLASS_NAMES) + f" (or 0..{NUM_CLASSES - 1})"
_SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val"}
_NPZ_ROLES = {"train": "train", "val": "val", "validation": "val"}
_EXPECTED = (
    "expected fer2013.csv, train.csv/test.csv, .npz files (train.npz, ...), or image folders "
    "<split>/<class>/*.png or <class>/*.png"
)


def _must_exist(path: str | Path) -> Path:
    """A regular file or a folder (a named pipe or a device would block or never end)."""
    return require_file_or_folder(path)


# ----------------------------------------------------------------------------------- npz ----


def _npz_split(path: Path, *, need_labels: bool) -> tuple[Split, int]:
    """An npz with `images` (any shape convert_stack takes) and optional `labels` (N,) in 0..6
    -> (Split, converted count). Never enables pickle: object arrays are refused."""
    arrays, keys = read_npz(path)  # sizes checked from the headers, before decoding
    if "images" not in arrays:
        raise DataError(f"{path}: no 'images' array (found: {', '.join(keys) or 'none'})")
    images, labels = arrays["images"], arrays.get("labels")
    if need_labels and labels is None:
        raise DataError(
            f"{path}: no 'labels' array, so there is nothing to train on "
            f"(found: {', '.join(keys)}; give it as a test set instead)"
        )
    if images.ndim >= 1 and images.shape[0] == 0:
        raise DataError(f"{path}: no images (empty 'images' array)")
    images, converted = convert_stack(images, str(path))
    if labels is not None:
        labels = _check_labels(path, labels, len(images))
    return Split(images, labels, str(path)), converted


def _check_labels(path: Path, labels: np.ndarray, n: int) -> np.ndarray:
    """(N,) integer labels -> (N,) int64 C-contiguous, checked to lie in 0..6."""
    if labels.shape != (n,):
        if labels.ndim == 1:
            raise DataError(f"{path}: {len(labels)} labels for {n} images")
        raise DataError(f"{path}: 'labels' has shape {labels.shape}, expected ({n},)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be integers 0..6, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} outside 0..6")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _npz_folder(path: Path, files: list[Path]) -> RawDataset:
    """train.npz -> train, val.npz / validation.npz -> val, other x.npz -> tests['x']."""
    roles = {f: _NPZ_ROLES.get(f.stem.lower()) for f in files}
    if list(roles.values()).count("val") > 1:
        raise DataError(f"{path}: more than one validation npz (val.npz, validation.npz)")
    if "train" not in roles.values():
        names = ", ".join(f.name for f in files)
        raise DataError(f"{path}: no train.npz among the .npz files ({names})")
    found: dict[str, Split] = {}
    converted = 0
    for f, role in roles.items():
        found[role or f.stem], n_conv = _npz_split(f, need_labels=role is not None)
        converted += n_conv
    train, val = found.pop("train"), found.pop("val", None)
    return RawDataset(train=train, val=val, tests=found, converted=converted, source=str(path))


# --------------------------------------------------------------------------- image trees ----


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, image files) directly in folder, sorted; hidden/macOS debris skipped."""
    dirs, images = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.name == "__MACOSX":
            continue
        if p.is_dir():
            dirs.append(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
    return dirs, images


def _split_key(name: str) -> str:
    """Folder name -> split key: train, val, public_test, private_test, or the name itself."""
    low = name.lower()
    for prefix in ("public", "private"):
        if low.startswith(prefix):
            return f"{prefix}_test"
    return _SPLIT_ALIASES.get(low, low)


def _image_split(folder: Path, *, allow_unlabeled: bool) -> tuple[Split, int]:
    """folder/<class>/**/*.png -> labelled Split ordered by class, then path; for test sets
    also folder/*.png (no class folders) -> unlabelled Split. Returns (split, converted)."""
    dirs, loose = _scan(folder)
    hint = f"class folders such as {folder / 'happy'} holding .png/.jpg/.jpeg/.bmp files"
    if not dirs:
        if not loose:
            raise DataError(f"{folder}: no images found (expected {hint})")
        if not allow_unlabeled:
            raise DataError(f"{folder}: images without class folders (expected {hint})")
        images, converted = read_images(loose)
        return Split(images, None, str(folder)), converted
    if loose:
        raise DataError(f"{loose[0]}: image outside a class folder (expected {hint})")
    by_class: list[tuple[int, str, Path]] = []
    for d in dirs:
        idx = _CLASS_INDEX.get(d.name.strip().lower())
        if idx is None:
            msg = f"unknown class folder {d.name!r} (expected one of: {_ALLOWED_CLASSES})"
            raise DataError(f"{d}: {msg}")
        for p in d.rglob("*"):
            hidden = any(part.startswith(".") for part in p.relative_to(d).parts)
            if p.suffix.lower() in IMAGE_SUFFIXES and not hidden and p.is_file():
                by_class.append((idx, str(p), p))
    if not by_class:
        raise DataError(f"{folder}: no images in its class folders (expected {hint})")
    by_class.sort()  # deterministic: class, then path (folders named Happy and happy merge)
    images, converted = read_images([p for _, _, p in by_class])
    labels = np.array([c for c, _, _ in by_class], dtype=np.int64)
    return Split(images, labels, str(folder)), converted


def _image_tree(path: Path, dirs: list[Path]) -> RawDataset:
    """root/<class>/ (train pool) or root/<split>/<class>/ (splits by folder name)."""
    if any(d.name.strip().lower() in _CLASS_INDEX for d in dirs):
        train, converted = _image_split(path, allow_unlabeled=False)
        return RawDataset(train=train, converted=converted, source=str(path))
    found: dict[str, Path] = {}
    for d in dirs:
        key = _split_key(d.name)
        if key in found:
            raise DataError(f"{path}: both {found[key].name!r} and {d.name!r} are the {key} split")
        found[key] = d
    if "train" not in found:
        raise DataError(
            f"{path}: no training split (found folders: {', '.join(d.name for d in dirs)}; "
            f"expected train/<class>/ or <class>/ folders named {_ALLOWED_CLASSES})"
        )
    splits: dict[str, Split] = {}
    converted = 0
    for key, d in found.items():
        splits[key], n_conv = _image_split(d, allow_unlabeled=key not in ("train", "val"))
        converted += n_conv
    train, val = splits.pop("train"), splits.pop("val", None)
    return RawDataset(train=train, val=val, tests=splits, converted=converted, source=str(path))


# ------------------------------------------------------------------------------ dispatch ----


def _unreadable(path: str | Path, exc: OSError) -> DataError:
    """An OSError met while reading data (permissions, a folder vanishing) as one line."""
    where = exc.filename if exc.filename is not None else path
    return DataError(f"{where}: cannot read ({exc.strerror or reason(exc)})")


def read_source(path: str | Path) -> RawDataset:
    """Read a dataset (file or folder; formats in the module docstring) -> RawDataset.

    A folder is read as: its .npz files if any, else its Kaggle CSVs, else an image tree, else
    its only CSV. Raises DataError for a missing path, unrecognised content or bad input.
    """
    try:
        return _read_source(path)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _read_source(path: str | Path) -> RawDataset:
    p = _must_exist(path)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return read_csv_source(p)
        if p.suffix.lower() == ".npz":
            split, converted = _npz_split(p, need_labels=True)
            return RawDataset(train=split, converted=converted, source=str(p))
        raise DataError(f"{path}: unrecognised file type ({_EXPECTED})")
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    npzs = [f for f in files if f.suffix.lower() == ".npz"]
    if npzs:
        return _npz_folder(p, npzs)
    csvs = {f.name.lower(): f for f in files if f.suffix.lower() == ".csv"}
    from_csv = read_csv_folder(p, csvs)
    if from_csv is not None:
        return from_csv
    dirs, _ = _scan(p)
    if dirs:
        return _image_tree(p, dirs)
    if len(csvs) == 1:
        return read_csv_source(next(iter(csvs.values())))
    raise DataError(f"{path}: no recognised data ({_EXPECTED})")


def read_split(path: str | Path, name: str) -> Split:
    """Read one test set given on its own -> Split (labels None if the data has none).

    path: an .npz (images, optional labels), a CSV (pixels, optional emotion; all rows kept
    whatever their Usage), or an image folder (<class>/ subfolders, or just images).
    name: the test set's name, used in messages.
    """
    try:
        return _read_split(path, name)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _read_split(path: str | Path, name: str) -> Split:
    p = _must_exist(path)
    if p.is_dir():
        return _image_split(p, allow_unlabeled=True)[0]
    if p.suffix.lower() == ".npz":
        return _npz_split(p, need_labels=False)[0]
    if p.suffix.lower() == ".csv":
        return read_csv_split(p)
    raise DataError(
        f"{path}: unrecognised file type for test set {name!r} "
        "(expected a .npz file, a .csv file, or an image folder)"
    )
