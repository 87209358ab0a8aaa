"""Image conversion: what PIL would give, the `converted` flag, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_ray.data.images import convert_stack, read_image, to_gray48
from fer_ray.errors import DataError

RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def test_gray48_passes_through_unchanged() -> None:
    face = _u8(48, 48)
    for src in (face, Image.fromarray(face), face[:, :, None]):
        out, converted = to_gray48(src)
        assert not converted and out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, face)


def test_colour_matches_pil_luma_and_resize() -> None:
    rgb = _u8(48, 48, 3)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    for src in (rgb, Image.fromarray(rgb), np.dstack([rgb, _u8(48, 48)])):
        out, converted = to_gray48(src)
        assert converted
        np.testing.assert_array_equal(out, expected)
    big = Image.fromarray(_u8(100, 80, 3))
    out, converted = to_gray48(big)
    want = big.convert("L").resize((48, 48), Image.Resampling.BILINEAR, reducing_gap=3.0)
    assert converted and out.shape == (48, 48)
    np.testing.assert_array_equal(out, np.asarray(want))


def test_modes_and_dtypes(tmp_path: Path) -> None:
    wide = RNG.integers(0, 65536, size=(48, 48), dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    out, converted = read_image(tmp_path / "w.png")
    assert converted
    np.testing.assert_array_equal(out, np.rint(wide / 257.0).astype(np.uint8))
    pal = Image.fromarray(_u8(48, 48, 3)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png")
    out, converted = read_image(tmp_path / "p.png")
    assert converted and out.shape == (48, 48)
    out, converted = to_gray48(np.full((48, 48), 0.5))
    assert converted and (out == 128).all()
    out, converted = to_gray48(np.full((48, 48), 7, dtype=np.int64))
    assert not converted and (out == 7).all()
    with pytest.raises(DataError, match=r"unsupported image array of shape \(48, 48, 5\)"):
        to_gray48(np.zeros((48, 48, 5), np.uint8))
    with pytest.raises(DataError, match=r"outside 0\.\.255"):
        to_gray48(np.full((48, 48), 300))


def test_read_image_refuses_damaged_files(tmp_path: Path) -> None:
    Image.fromarray(_u8(100, 100, 3)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode image \("):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DataError, match=r"text\.png: cannot decode image \("):
        read_image(tmp_path / "text.png")


def test_convert_stack() -> None:
    faces = _u8(5, 48, 48)
    out, n = convert_stack(faces, "s")
    assert n == 0 and out is faces
    out, n = convert_stack(faces[:, :, :, None], "s")
    assert n == 0 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, faces)
    out, n = convert_stack(faces / 255.0, "s")
    assert n == 5
    np.testing.assert_array_equal(out, faces)
    out, n = convert_stack(faces.astype(np.float32), "s")
    assert n == 0
    np.testing.assert_array_equal(out, faces)
    rgb = _u8(3, 64, 40, 3)
    out, n = convert_stack(rgb, "s")
    assert n == 3 and out.shape == (3, 48, 48)
    for i in range(3):
        np.testing.assert_array_equal(out[i], to_gray48(Image.fromarray(rgb[i]))[0])


@pytest.mark.parametrize(
    ("arr", "expected"),
    [
        (np.zeros((2, 48, 48, 2), np.uint8), r"data\.npz: unsupported image array shape \(2, 48"),
        (np.zeros((48, 48), np.uint8), r"data\.npz: unsupported image array shape \(48, 48\)"),
        (np.zeros((2, 0, 48), np.uint8), r"unsupported image array shape \(2, 0, 48\)"),
        (np.full((2, 48, 48), np.nan), r"data\.npz: .*NaN"),
        (np.full((2, 48, 48), -3.0), r"data\.npz: .*outside"),
        (np.full((2, 48, 48), 256, np.int32), r"data\.npz: .*outside 0\.\.255"),
        (np.zeros((2, 48, 48), np.complex64), r"data\.npz: .*unsupported pixel dtype"),
    ],
)
def test_convert_stack_errors(arr: np.ndarray, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        convert_stack(arr, "data.npz")
