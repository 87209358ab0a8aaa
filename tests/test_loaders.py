"""Loaders: every input format round-trips, and every kind of bad input is a one-line DataError
naming the file (and, for CSV, the 1-based line number an editor would show)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fer_ray.data._types import CLASS_NAMES, Split
from fer_ray.data.loaders import read_source, read_split
from fer_ray.errors import DataError

HEADER3 = "emotion,pixels,Usage"


def _faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 48, 48) uint8 random faces and (n,) int64 labels covering all classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    labels = (np.arange(n) % 7).astype(np.int64)
    return images, labels


def _pixels(img: np.ndarray) -> str:
    return " ".join(map(str, img.ravel().tolist()))


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def _fer_rows(images: np.ndarray, labels: np.ndarray, usages: list[str]) -> list[str]:
    return [
        f"{lab},{_pixels(img)},{u}" for img, lab, u in zip(images, labels, usages, strict=True)
    ]


def _counts(split: Split | None) -> list[int]:
    """Per-class counts of a labelled split."""
    assert split is not None and split.labels is not None
    return np.bincount(split.labels, minlength=7).tolist()


def _raises(match: str, fn: Callable[..., object], *args: object) -> str:
    with pytest.raises(DataError, match=match) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- CSV ----


def test_fer2013_csv_round_trip(tmp_path: Path) -> None:
    images, labels = _faces(30)
    usages = ["Training"] * 20 + ["PublicTest"] * 6 + ["PrivateTest"] * 4
    path = _write_csv(tmp_path / "fer2013.csv", HEADER3, _fer_rows(images, labels, usages))
    ds = read_source(path)
    assert ds.train is not None and ds.converted == 0
    np.testing.assert_array_equal(ds.train.images, images[:20])
    np.testing.assert_array_equal(ds.train.labels, labels[:20])
    assert set(ds.tests) == {"public_test", "private_test"} and ds.val is None
    np.testing.assert_array_equal(ds.tests["public_test"].images, images[20:26])
    np.testing.assert_array_equal(ds.tests["private_test"].labels, labels[26:])
    for split in (ds.train, *ds.tests.values()):
        assert split.images.dtype == np.uint8 and split.images.flags.c_contiguous
        assert split.labels is not None and split.labels.dtype == np.int64
    # The same file inside a folder is found by name.
    assert len(read_source(tmp_path).train or []) == 20


def test_csv_tolerates_bom_crlf_quotes_blank_lines_and_spaced_header(tmp_path: Path) -> None:
    images, labels = _faces(3)
    rows = [f'{labels[0]},"{_pixels(images[0])}",Training', ""]
    rows += [
        f"{lab} , {_pixels(img)}  , Training "
        for img, lab in zip(images[1:], labels[1:], strict=True)
    ]
    text = "\ufeffEmotion, pixels, Usage\r\n"
    text += "\r\n".join(rows) + "\r\n"
    (tmp_path / "icml_face_data.csv").write_text(text, newline="")
    ds = read_source(tmp_path)
    assert ds.train is not None
    np.testing.assert_array_equal(ds.train.images, images)


def test_kaggle_train_and_test_csv_folder(tmp_path: Path) -> None:
    images, labels = _faces(12)
    train_rows = [f"{lab},{_pixels(img)}" for img, lab in zip(images[:8], labels[:8], strict=True)]
    _write_csv(tmp_path / "train.csv", "emotion,pixels", train_rows)
    _write_csv(tmp_path / "test.csv", "pixels", [_pixels(img) for img in images[8:]])
    (tmp_path / "example_submission.csv").write_text("id,emotion\n")
    ds = read_source(tmp_path)
    assert ds.train is not None
    np.testing.assert_array_equal(ds.train.images, images[:8])
    np.testing.assert_array_equal(ds.train.labels, labels[:8])
    assert list(ds.tests) == ["test"] and ds.tests["test"].labels is None
    np.testing.assert_array_equal(ds.tests["test"].images, images[8:])
    # A single labelled CSV (any name, no Usage) is a training pool.
    ds_file = read_source(tmp_path / "train.csv")
    assert ds_file.train is not None and len(ds_file.train) == 8 and not ds_file.tests


def test_unlabelled_csv_alone_cannot_be_trained_on(tmp_path: Path) -> None:
    images, _ = _faces(2)
    path = _write_csv(tmp_path / "test.csv", "pixels", [_pixels(img) for img in images])
    msg = _raises("nothing to train", read_source, path)
    assert "test.csv" in msg
    _raises("nothing to train", read_source, tmp_path)
    split = read_split(path, "test")
    assert split.labels is None and len(split) == 2


def test_csv_errors_found_in_later_chunks_get_exact_lines(tmp_path: Path) -> None:
    # ~600 rows span several pyarrow blocks (parsed in parallel); the bad row is near the end.
    images, labels = _faces(600)
    rows = _fer_rows(images, labels, ["Training"] * 600)
    rows[500] = rows[500].replace(" ", " 1 ", 1)
    rows.insert(10, "")  # a blank line: skipped, but it still counts as a line
    path = _write_csv(tmp_path / "fer2013.csv", HEADER3, rows)
    _raises(r"fer2013\.csv line 503: expected 2304 pixel values, got 2305$", read_source, path)


def _bad_csv_cases() -> list[tuple[str, str, str]]:
    """(header, bad row, expected message regex after 'line 3: ')."""
    px = _pixels(_faces(1)[0][0])
    short, rest = px.rsplit(" ", 1)[0], px.split(" ", 1)[1]
    return [
        (HEADER3, f"0,{short},Training", "expected 2304 pixel values, got 2303"),
        (HEADER3, "0,,Training", "expected 2304 pixel values, got 0"),
        (HEADER3, f"0,{short} x7,Training", r"pixel value 'x7' \(number 2304\) is not an integer"),
        (HEADER3, f"0,{short} 3.5,Training", r"pixel value '3.5' .* is not an integer 0..255"),
        (HEADER3, f"0,256 {rest},Training", r"pixel value 256 \(number 1\) outside"),
        (HEADER3, f"0,-1 {rest},Training", r"pixel value -1 \(number 1\) outside"),
        (HEADER3, f"7,{px},Training", "emotion label 7 outside 0..6"),
        (HEADER3, f"x,{px},Training", "emotion label 'x' is not an integer 0..6"),
        (HEADER3, f"2.0,{px},Training", "emotion label '2.0' is not an integer 0..6"),
        (HEADER3, f"-1,{px},Training", "emotion label '-1' is not an integer 0..6"),
        (HEADER3, f",{px},Training", "emotion label '' is not an integer"),
        (HEADER3, f"0,{px},Trainnig", "unknown Usage value 'Trainnig' .expected Training"),
        (HEADER3, f"0,{px},Training,extra", "expected 3 comma-separated fields, got 4"),
        (HEADER3, f"0,{px}", "expected 3 comma-separated fields, got 2"),
        ("emotion,pixels", "2", "expected 2 comma-separated fields, got 1"),
    ]


@pytest.mark.parametrize(("header", "bad", "expected"), _bad_csv_cases())
def test_bad_csv_rows_name_file_and_line(
    tmp_path: Path, header: str, bad: str, expected: str
) -> None:
    images, labels = _faces(3)
    ncol = header.count(",") + 1
    good = [
        r.rsplit(",", 3 - ncol)[0] if ncol < 3 else r
        for r in _fer_rows(images, labels, ["Training"] * 3)
    ]
    path = _write_csv(tmp_path / "fer2013.csv", header, [good[0], bad, good[2]])
    _raises(rf"^{re.escape(str(path))} line 3: {expected}", read_source, path)


def test_first_bad_line_wins_across_checks(tmp_path: Path) -> None:
    images, labels = _faces(6)
    rows = _fer_rows(images, labels, ["Training"] * 6)
    rows[4] = rows[4].replace(",Training", ",Nope")
    rows[1] = "9" + rows[1][1:]
    rows[3] = rows[3].replace(",", ",1000 ", 1)
    path = _write_csv(tmp_path / "d.csv", HEADER3, rows)
    _raises(r"d\.csv line 3: emotion label 9 outside", read_source, path)


def test_csv_structural_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    _raises(r"empty\.csv: empty file", read_source, empty)
    only = _write_csv(tmp_path / "only.csv", HEADER3, [])
    _raises(r"only\.csv: no data rows \(header only\)", read_source, only)
    cols = _write_csv(tmp_path / "cols.csv", "label,pixel_values", ["0,1 2"])
    msg = _raises(r"cols\.csv: missing column\(s\) emotion, pixels", read_source, cols)
    assert "found: 'label', 'pixel_values'" in msg
    no_train = _write_csv(tmp_path / "pub.csv", HEADER3, [f"0,{_pixels(_faces(1)[0])},PublicTest"])
    _raises(r"pub\.csv: no rows with Usage 'Training'", read_source, no_train)


def test_csv_leading_zeros_take_the_exact_slow_path(tmp_path: Path) -> None:
    images, labels = _faces(2)
    padded = [" ".join(f"{v:04d}" for v in img.ravel()) for img in images]
    rows = [f"{lab},{px}" for px, lab in zip(padded, labels, strict=True)]
    ds = read_source(_write_csv(tmp_path / "z.csv", "emotion,pixels", rows))
    assert ds.train is not None
    np.testing.assert_array_equal(ds.train.images, images)


# ---------------------------------------------------------------------- image trees ----


def _save_tree(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[lab]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"img{i:03d}.png")


def test_image_tree_with_splits_round_trip(tmp_path: Path) -> None:
    images, labels = _faces(28)
    names = [n.capitalize() for n in CLASS_NAMES]  # class folders are case-insensitive
    layout = {
        "Training": slice(0, 14),
        "val": slice(14, 18),
        "PublicTest": slice(18, 21),
        "private_test": slice(21, 24),
        "test": slice(24, 26),
        "Extra": slice(26, 28),
    }
    for split, sl in layout.items():
        _save_tree(tmp_path / split, images[sl], labels[sl], names)
    (tmp_path / "README.md").write_text("not data")
    ds = read_source(tmp_path)
    assert set(ds.tests) == {"public_test", "private_test", "test", "extra"}
    assert ds.train is not None and ds.val is not None and ds.converted == 0
    for split, got in [("Training", ds.train), ("val", ds.val), ("Extra", ds.tests["extra"])]:
        sl = layout[split]
        order = np.lexsort((np.arange(sl.stop - sl.start), labels[sl]))  # class, then name
        np.testing.assert_array_equal(got.images, images[sl][order])
        np.testing.assert_array_equal(got.labels, labels[sl][order])
        assert got.images.flags.c_contiguous and got.labels is not None


def test_class_folders_without_split_level(tmp_path: Path) -> None:
    images, labels = _faces(9)
    _save_tree(tmp_path, images, labels, list(CLASS_NAMES))
    ds = read_source(tmp_path)
    assert ds.train is not None and not ds.tests
    assert _counts(ds.train) == [2, 2, 1, 1, 1, 1, 1]


def test_colour_and_odd_size_images_are_converted_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "happy").mkdir()
    rgb = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "happy" / "a.jpg", quality=95)
    rgba = rng.integers(0, 256, (48, 48, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "happy" / "b.png")
    Image.fromarray(_faces(1)[0][0]).save(tmp_path / "happy" / "c.png")
    ds = read_source(tmp_path)
    assert ds.train is not None and ds.converted == 2 and ds.train.images.shape == (3, 48, 48)
    expected = np.asarray(Image.fromarray(rgba, "RGBA").convert("L"))
    np.testing.assert_array_equal(ds.train.images[1], expected)


def test_image_tree_errors(tmp_path: Path) -> None:
    images, labels = _faces(7)
    _save_tree(tmp_path / "train", images, labels, list(CLASS_NAMES))
    good = tmp_path / "train" / "happy" / "img003.png"
    data = good.read_bytes()
    (tmp_path / "train" / "happy" / "broken.png").write_bytes(data[: len(data) // 2])
    _raises(r"broken\.png: cannot decode image", read_source, tmp_path)
    (tmp_path / "train" / "happy" / "broken.png").write_bytes(b"not an image at all")
    _raises(r"broken\.png: cannot decode image", read_source, tmp_path)
    (tmp_path / "train" / "happy" / "broken.png").unlink()
    (tmp_path / "train" / "Contempt").mkdir()
    msg = _raises(r"Contempt: unknown class folder 'Contempt'", read_source, tmp_path)
    assert "angry, disgust, fear, happy, sad, surprise, neutral" in msg
    (tmp_path / "train" / "Contempt").rmdir()
    Image.fromarray(images[0]).save(tmp_path / "train" / "loose.png")
    _raises(r"loose\.png: image outside a class folder", read_source, tmp_path)
    (tmp_path / "train" / "loose.png").unlink()
    (tmp_path / "test" / "sad").mkdir(parents=True)
    _raises(r"test: no images in its class folders", read_source, tmp_path)


def test_folders_without_data(tmp_path: Path) -> None:
    _raises(r"no recognised data \(expected fer2013\.csv", read_source, tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    _raises(r"notes\.txt: unrecognised file type", read_source, tmp_path / "notes.txt")
    (tmp_path / "test" / "happy").mkdir(parents=True)
    Image.fromarray(_faces(1)[0][0]).save(tmp_path / "test" / "happy" / "a.png")
    _raises("no training split .found folders: test", read_source, tmp_path)
    (tmp_path / "train").mkdir()
    _raises(r"train: no images found", read_source, tmp_path)
    _raises(r"nowhere: no such file or directory", read_source, tmp_path / "nowhere")
    _raises(r"nowhere: no such file or directory", read_split, tmp_path / "nowhere", "t")


# ------------------------------------------------------------------------------ npz ----


def test_npz_file_and_folder_round_trip(tmp_path: Path) -> None:
    images, labels = _faces(20)
    np.savez(tmp_path / "train.npz", images=images[:10], labels=labels[:10])
    np.savez(tmp_path / "validation.npz", images=images[10:14], labels=labels[10:14])
    np.savez(tmp_path / "public_test.npz", images=images[14:17], labels=labels[14:17])
    np.savez_compressed(tmp_path / "Faces_X.npz", images=images[17:])  # unlabelled test
    ds = read_source(tmp_path)
    assert ds.train is not None and ds.val is not None
    np.testing.assert_array_equal(ds.train.images, images[:10])
    np.testing.assert_array_equal(ds.val.labels, labels[10:14])
    assert set(ds.tests) == {"public_test", "Faces_X"} and ds.tests["Faces_X"].labels is None
    one = read_source(tmp_path / "train.npz")
    assert one.train is not None and one.train.labels is not None
    assert one.train.labels.dtype == np.int64


def test_npz_conversions_are_counted(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).random((4, 48, 48, 3))
    np.savez(tmp_path / "c.npz", images=rgb, labels=np.arange(4, dtype=np.int32))
    ds = read_source(tmp_path / "c.npz")
    assert ds.converted == 4 and ds.train is not None and ds.train.images.dtype == np.uint8


def test_npz_errors(tmp_path: Path) -> None:
    images, labels = _faces(5)
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "noimg.npz": ({"x": images, "labels": labels}, r"no 'images' array \(found: x, labels\)"),
        "len.npz": ({"images": images, "labels": labels[:4]}, "4 labels for 5 images"),
        "range.npz": ({"images": images, "labels": labels + 3}, "label 7 at index 4 outside 0..6"),
        "shape.npz": (
            {"images": images[:, :, :, None, None], "labels": labels},
            r"unsupported image array shape \(5, 48, 48, 1, 1\)",
        ),
        "nolab.npz": ({"images": images}, "no 'labels' array, so there is nothing to train on"),
        "pickled.npz": (
            {"images": np.array([images[0], None], dtype=object), "labels": labels},
            "holds object arrays that need pickle to load, which is refused",
        ),
    }
    for name, (arrays, expected) in cases.items():
        np.savez(tmp_path / name, **arrays)
        _raises(rf"{name}: {expected}", read_source, tmp_path / name)
    (tmp_path / "fake.npz").write_text("hello")
    _raises(r"fake\.npz: not an \.npz \(zip\) file", read_source, tmp_path / "fake.npz")
    assert read_split(tmp_path / "nolab.npz", "x").labels is None


# ------------------------------------------------------------------------ read_split ----


def test_read_split_formats(tmp_path: Path) -> None:
    images, labels = _faces(9)
    rows = _fer_rows(images, labels, ["Training", "PublicTest", "Whatever"] * 3)
    split = read_split(_write_csv(tmp_path / "all.csv", HEADER3, rows), "all")
    np.testing.assert_array_equal(split.images, images)  # Usage ignored: every row kept
    np.testing.assert_array_equal(split.labels, labels)
    _save_tree(tmp_path / "tree", images, labels, list(CLASS_NAMES))
    assert len(read_split(tmp_path / "tree", "tree")) == 9
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, img in enumerate(images[:3]):
        Image.fromarray(img).save(flat / f"{i}.bmp")
    unlabelled = read_split(flat, "flat")
    assert unlabelled.labels is None
    np.testing.assert_array_equal(unlabelled.images, images[:3])
    (tmp_path / "x.txt").write_text("")
    _raises(
        r"x\.txt: unrecognised file type for test set 'x'", read_split, tmp_path / "x.txt", "x"
    )


# ------------------------------------------------------------------------ real data ----

FER_DIR = os.environ.get("FER2013_DIR", "")
needs_fer = pytest.mark.skipif(
    not FER_DIR or not (Path(FER_DIR) / "train.npz").is_file(), reason="FER2013_DIR not set"
)


def _manifest_counts(split: str) -> list[int]:
    manifest = json.loads((Path(FER_DIR) / "manifest.json").read_text())
    return [manifest["splits"][split]["per_class"][name] for name in CLASS_NAMES]


@needs_fer
def test_real_fer2013_folder() -> None:
    ds = read_source(FER_DIR)
    assert ds.train is not None and len(ds.train) == 28709
    assert len(ds.tests["public_test"]) == 3589
    assert _counts(ds.train) == _manifest_counts("train")
    assert _counts(ds.tests["public_test"]) == _manifest_counts("public_test")


@needs_fer
@pytest.mark.slow
def test_real_fer2013_as_kaggle_csv(tmp_path: Path) -> None:
    text = [str(i).encode() for i in range(256)]
    path = tmp_path / "fer2013.csv"
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with open(path, "wb") as f:
        f.write(b"emotion,pixels,Usage\n")
        for name, usage in [("train", b"Training"), ("public_test", b"PublicTest")]:
            with np.load(Path(FER_DIR) / f"{name}.npz", allow_pickle=False) as z:
                arrays[name] = (z["images"], z["labels"])
            for img, lab in zip(
                arrays[name][0].reshape(-1, 2304).tolist(), arrays[name][1], strict=True
            ):
                f.write(
                    b"%d," % lab + b" ".join(map(text.__getitem__, img)) + b"," + usage + b"\n"
                )
    ds = read_source(path)
    assert ds.train is not None and set(ds.tests) == {"public_test"}
    for name, split in [("train", ds.train), ("public_test", ds.tests["public_test"])]:
        assert _counts(split) == _manifest_counts(name)
        np.testing.assert_array_equal(split.images, arrays[name][0])
        np.testing.assert_array_equal(split.labels, arrays[name][1])
