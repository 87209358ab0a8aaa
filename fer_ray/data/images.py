"""Image conversion to the (48, 48) uint8 grayscale faces every model here expects.

Shared by the dataset loaders and the prediction CLI, so a face read for training and a face
read for prediction go through exactly the same conversion:

- colour -> grayscale with ITU-R 601 luma, bit-identical to PIL's ``convert("L")``;
- any size -> 48x48 with PIL's antialiased BILINEAR resize (the image is stretched, not
  cropped: FER-style inputs are already face crops);
- alpha is dropped (as PIL does): compositing would invent a background the faces never had;
- 16-bit images are scaled to 8 bits, float images in [0, 1] are scaled to [0, 255];
- at most ``MAX_IMAGE_PIXELS`` per image, checked from the file's header before decoding, so
  a small file declaring a huge image is refused instead of decoded (PIL's own warning for
  such files is made an error, which is then reported the same way).

Also parses Kaggle-style pixel strings ("70 80 82 ...", 2304 values a row) to images, fast.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageOps

from fer_ray.data._types import IMAGE_SIZE
from fer_ray.errors import DataError, reason
from fer_ray.paths import require_file, shown

_SIZE = (IMAGE_SIZE, IMAGE_SIZE)
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
MAX_IMAGE_PIXELS = 40_000_000  # a 40-megapixel photo; faces need 2,304
# PIL warns on stderr for images over its own limit (89 MP, above ours) and raises over twice
# it; as an error, the warning is reported like every other refused image.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
_T = TypeVar("_T")
_WORKERS = min(8, os.cpu_count() or 1)
# 16-bit PIL modes: their values span 0..65535, so they must be scaled, not clipped.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# Modes PIL converts to "L" directly; anything else (CMYK, YCbCr, LAB, HSV) goes through RGB.
_DIRECT_MODES = frozenset({"1", "L", "LA", "La", "RGB", "RGBA", "RGBX", "RGBa"})


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3+) uint8 RGB(A) -> (...) uint8.

    Uses PIL's fixed-point formula (weights 19595/38470/7471 over 2**16, rounded), so arrays and
    PIL images convert to the same bytes.
    """
    r = rgb[..., 0].astype(np.uint32)
    g = rgb[..., 1].astype(np.uint32)
    b = rgb[..., 2].astype(np.uint32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _resize(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (48, 48) uint8 with PIL's antialiased bilinear filter."""
    # reducing_gap: box-reduce big photos first (fast), then filter; the result stays area-like.
    small = Image.fromarray(gray).resize(_SIZE, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(small, dtype=np.uint8)


def _values_to_uint8(arr: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """Any numeric array -> same-shape uint8, and whether values were rescaled.

    uint8 passes through; other integers must already lie in 0..255, except uint16 which is
    taken as 16-bit (scaled by 1/257); floats with max <= 1 are taken as [0, 1] and scaled by
    255, other floats must lie in [0, 255]. The range is judged over the whole array, so one
    dark image in a [0, 255] stack is not mistaken for a [0, 1] image.
    """
    if arr.dtype == np.uint8:
        return arr, False
    if arr.size == 0:
        return arr.astype(np.uint8), False
    if arr.dtype == np.uint16:
        return np.rint(arr / 257.0).astype(np.uint8), True
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: pixel values outside 0..255 (min {lo}, max {hi})")
        return arr.astype(np.uint8), False
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{what}: pixel values include NaN or infinity")
        lo_f, hi_f = float(arr.min()), float(arr.max())
        if lo_f < 0.0 or hi_f > 255.0:
            raise DataError(
                f"{what}: float pixel values outside [0, 1] and [0, 255] "
                f"(min {lo_f:g}, max {hi_f:g})"
            )
        if hi_f <= 1.0:
            return np.rint(arr * 255.0).astype(np.uint8), True
        return np.rint(arr).astype(np.uint8), False
    raise DataError(f"{what}: unsupported pixel dtype {arr.dtype}")


def _pil_to_gray_array(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H, W) uint8 grayscale."""
    mode = img.mode
    if mode in _WIDE_MODES:
        wide = np.asarray(img).astype(np.float64)
        return np.rint(np.clip(wide, 0.0, 65535.0) / 257.0).astype(np.uint8)
    if mode == "F":
        return _values_to_uint8(np.clip(np.asarray(img), 0.0, None), "float image")[0]
    if mode in ("P", "PA"):
        # Via RGBA so palette transparency is read without PIL's warning, then drop alpha.
        img = img.convert("RGBA")
    elif mode not in _DIRECT_MODES:
        img = img.convert("RGB")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def to_gray(img: Image.Image | np.ndarray) -> tuple[np.ndarray, bool]:
    """Convert one image to (H, W) uint8 grayscale at its own size (see ``to_gray48``).

    Returns (image, converted): converted is True when colour or values were changed.
    """
    if isinstance(img, Image.Image):
        return _pil_to_gray_array(img), img.mode != "L"
    arr = np.asarray(img)
    what = f"image array of shape {arr.shape}"
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        channels = arr.shape[2]
    elif arr.ndim == 2:
        channels = 0
    else:
        raise DataError(f"unsupported {what} (expected (H, W) or (H, W, 1|2|3|4))")
    if min(arr.shape[:2]) == 0:
        raise DataError(f"unsupported {what}: empty image")
    arr8, converted = _values_to_uint8(arr, what)
    if channels in (1, 2):
        return np.ascontiguousarray(arr8[:, :, 0]), converted
    if channels in (3, 4):
        # PIL's C conversion: the same bytes as _luma, ~30x faster and without its uint32
        # temporaries (a 36-megapixel photo would need 1.3 GB for them).
        mode = "RGB" if channels == 3 else "RGBA"
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr8), mode).convert("L")), True
    return np.ascontiguousarray(arr8), converted


def resize_face(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (48, 48) uint8, the way every face here is made (stretched, not cropped)."""
    return _resize(gray) if gray.shape != _SIZE else np.ascontiguousarray(gray)


def to_gray48(img: Image.Image | np.ndarray) -> tuple[np.ndarray, bool]:
    """Convert one image to a (48, 48) uint8 grayscale face.

    img: a PIL image of any mode and size, or an array (H, W), (H, W, 1), (H, W, 2) (gray +
        alpha), (H, W, 3) (RGB) or (H, W, 4) (RGBA) of uint8, uint16, other integers in 0..255,
        or floats in [0, 1] or [0, 255].
    Returns (image, converted): image is (48, 48) uint8 C-contiguous; converted is True when
    anything was changed (colour to gray, resize, value rescale), False for an image that was
    already 48x48 8-bit grayscale.
    Raises DataError for arrays of any other shape or dtype.
    """
    gray, converted = to_gray(img)
    return resize_face(gray), converted or gray.shape != _SIZE


def _pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB whose luma is ``_pil_to_gray_array(img)``."""
    if img.mode in _WIDE_MODES or img.mode == "F":
        gray = _pil_to_gray_array(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


_LIMIT = f"over the {MAX_IMAGE_PIXELS / 1e6:g}-megapixel limit per image"


def _decode(source: Path | bytes, what: str, convert: Callable[[Image.Image], _T]) -> _T:
    """Open, bound, fully decode and turn upright one image, then ``convert`` it.

    Raises DataError("{what}: cannot decode image ({reason})") for truncated, corrupt or
    non-image data (PIL reads headers lazily, so img.load() is what finds a truncated PNG) and
    for images over MAX_IMAGE_PIXELS (from the header, before decoding).
    """
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{width}x{height} pixels, {_LIMIT}")
            img.load()
            return convert(ImageOps.exif_transpose(img))
    except DataError as exc:
        raise DataError(f"{what}: cannot decode image ({exc})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{what}: cannot decode image ({_LIMIT})") from None
    except OSError as exc:
        if exc.errno is None:  # PIL's own "cannot identify image file": a decoding problem
            raise DataError(f"{what}: cannot decode image ({reason(exc)})") from exc
        raise DataError(f"{what}: cannot read ({exc.strerror})") from exc
    # Decoders of damaged files raise many types (OSError, SyntaxError, ValueError,
    # struct.error, EOFError...); any of them means the same thing to the user.
    except Exception as exc:
        raise DataError(f"{what}: cannot decode image ({reason(exc)})") from exc


def read_image(path: Path) -> tuple[np.ndarray, bool]:
    """Open and fully decode one image file -> ((48, 48) uint8, converted).

    EXIF orientation is applied, so phone photos are upright. DataError naming the file for
    damaged or non-image files, images over MAX_IMAGE_PIXELS and anything but a regular file
    (a named pipe would block).
    """
    require_file(path)
    return _decode(path, shown(path), to_gray48)


def read_photo(path: Path) -> np.ndarray:
    """One image file at full size -> (H, W, 3) uint8 RGB, upright; errors as ``read_image``."""
    require_file(path)
    return _decode(path, shown(path), _pil_to_rgb_array)


def decode_photo(data: bytes, what: str) -> np.ndarray:
    """Encoded image bytes (an upload) -> (H, W, 3) uint8 RGB, upright; DataError naming
    ``what`` for anything that is not a decodable image within the size limit."""
    return _decode(bytes(data), what, _pil_to_rgb_array)


def read_images(paths: list[Path]) -> tuple[np.ndarray, int]:
    """Decode image files in order -> ((N, 48, 48) uint8, how many were converted).

    Threads help with thousands of small files because PIL's decoders release the GIL.
    """
    if not paths:
        return np.empty((0, *_SIZE), dtype=np.uint8), 0
    with ThreadPoolExecutor(_WORKERS) as ex:
        results = list(ex.map(read_image, paths))
    return np.stack([img for img, _ in results]), sum(conv for _, conv in results)


def convert_stack(arr: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    """Normalise an image stack from an npz file to (N, 48, 48) uint8 C-contiguous.

    arr: (N, 48, 48) uint8 is returned as is (made C-contiguous); also accepted are (N, H, W),
        (N, H, W, 1), (N, H, W, 3) RGB and (N, H, W, 4) RGBA, of uint8, uint16 (16-bit), other
        integers in 0..255, or floats in [0, 1] or [0, 255] (range judged over the stack).
    source: named in error messages (e.g. "data/train.npz").
    Returns (images, converted) with converted = how many images were changed (colour to gray,
    resized, or rescaled); a dropped singleton channel axis does not count.
    Raises DataError naming source and the shape for anything else.
    """
    shape = tuple(arr.shape)
    ok_shape = (arr.ndim == 3 or (arr.ndim == 4 and shape[3] in (1, 3, 4))) and all(
        s > 0 for s in shape[1:3]
    )
    if not ok_shape:
        raise DataError(
            f"{source}: unsupported image array shape {shape} "
            "(expected (N, 48, 48), (N, H, W), or (N, H, W, 1|3|4))"
        )
    n = shape[0]
    if arr.dtype == np.uint8 and shape[1:] == _SIZE:
        return np.ascontiguousarray(arr), 0
    arr8, rescaled = _values_to_uint8(arr, f"{source}: images of shape {shape}")
    colour = arr.ndim == 4 and shape[3] in (3, 4)
    gray = arr8 if arr.ndim == 3 else _luma(arr8) if colour else arr8[..., 0]
    resized = gray.shape[1:] != _SIZE
    if resized:
        # One PIL call per image: only on this conversion path, never for 48x48 data.
        out = np.empty((n, *_SIZE), dtype=np.uint8)
        for i in range(n):
            out[i] = _resize(np.ascontiguousarray(gray[i]))
        gray = out
    converted = n if (colour or resized or rescaled) else 0
    return np.ascontiguousarray(gray, dtype=np.uint8), converted


# ---------------------------------------------------------------------- pixel strings ----


class RowError(ValueError):
    """A bad row of a table (0-based data-row index); the reader adds file and line."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row, self.message = row, message


def show_value(raw: str | bytes, limit: int = 40) -> str:
    """A user value quoted for an error message, cut short so one line stays one line."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_pixel_chunk_fast(arr: pa.Array) -> np.ndarray | None:
    """Vectorised parse of space-separated decimal pixels: (n,) strings -> (n, 48, 48) uint8.

    Works on the raw bytes of the Arrow string buffer: token ends are digits not followed by a
    digit in the same row, and each value is rebuilt from at most three digits. Returns None
    on anything unusual (other characters, 4+ digit tokens, wrong counts, values > 255) so the
    exact slow path can decide whether it is an error and on which row.
    """
    n = len(arr)
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offs = np.frombuffer(arr.buffers()[1], dtype=off_type)[arr.offset : arr.offset + n + 1]
    base = int(offs[0])
    r = (offs - base).astype(np.intp)
    data = arr.buffers()[2]
    if data is None or r[-1] == 0 or arr.null_count:
        return None
    b = np.frombuffer(data, dtype=np.uint8)[base : int(offs[-1])]
    d = b - np.uint8(48)
    dig = d < 10
    if not np.all(dig | (b == 32) | (b == 9) | (b == 13)):
        return None
    # prev[i]: byte i-1 is a digit of the same row (row starts break tokens); prev[0] = False
    # and the extra slot makes index -1 from e - 1 harmless.
    prev = np.empty(b.size + 1, dtype=bool)
    prev[0], prev[1:] = False, dig
    prev[r[:-1]] = False
    ends = dig.copy()
    ends[:-1] &= ~dig[1:]
    last = r[1:] - 1
    last = last[last >= r[:-1]]
    ends[last] = dig[last]
    e = np.flatnonzero(ends)
    if not np.all(np.diff(np.searchsorted(e, r)) == NUM_PIXELS):
        return None
    p1 = prev[e]
    p2 = p1 & prev[e - 1]
    if np.any(p2 & prev[e - 2]):
        return None
    v = d[e].astype(np.uint16)
    v += d[e - 1] * p1 * np.uint16(10)
    v += d[e - 2] * p2 * np.uint16(100)
    if int(v.max()) > 255:
        return None
    return v.astype(np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)


def _bad_pixel(tokens: list[bytes]) -> str | None:
    """Why the first bad token of a row is bad, or None if all are plain integers 0..255."""
    for j, tok in enumerate(tokens):
        if tok.isdigit() and int(tok) <= 255:
            continue
        if tok.isdigit() or (tok[:1] == b"-" and tok[1:].isdigit()):
            return f"pixel value {int(tok)} (number {j + 1}) outside 0..255"
        return f"pixel value {show_value(tok)} (number {j + 1}) is not an integer 0..255"
    return None


def _parse_pixel_chunk(arr: pa.Array, first_row: int) -> np.ndarray:
    """(n,) pixel strings -> (n, 48, 48) uint8; raises RowError at the first bad row."""
    fast = _parse_pixel_chunk_fast(arr)
    if fast is not None:
        return fast
    out = np.empty((len(arr), NUM_PIXELS), dtype=np.uint8)
    for i, raw in enumerate(pc.cast(arr, pa.binary()).to_pylist()):
        try:
            out[i] = parse_pixel_row(raw)
        except ValueError as exc:
            raise RowError(first_row + i, str(exc)) from None
    return out.reshape(len(arr), IMAGE_SIZE, IMAGE_SIZE)


def parse_pixel_row(raw: bytes | str | None) -> np.ndarray:
    """One row's pixel string -> (2304,) uint8 (None counts as empty); ValueError naming the
    first problem (count, or the first value that is not an integer 0..255)."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw or b""
    tokens = data.split()
    if len(tokens) != NUM_PIXELS:
        raise ValueError(f"expected {NUM_PIXELS} pixel values, got {len(tokens)}")
    bad = _bad_pixel(tokens)
    if bad:
        raise ValueError(bad)
    return np.array(tokens).astype(np.int64).astype(np.uint8)  # plain digits <= 255 by now


def parse_pixel_strings(col: pa.ChunkedArray) -> np.ndarray:
    """Pixel strings (N,) -> (N, 48, 48) uint8 C-contiguous, chunks in parallel (numpy
    releases the GIL). Raises RowError (0-based row index) at the first bad row."""
    chunks = [c for c in col.chunks if len(c)]
    if not chunks:
        return np.empty((0, *_SIZE), dtype=np.uint8)
    firsts = np.concatenate([[0], np.cumsum([len(c) for c in chunks])])[:-1].tolist()
    with ThreadPoolExecutor(_WORKERS) as ex:
        parts = list(ex.map(_parse_pixel_chunk, chunks, firsts))
    return np.ascontiguousarray(np.concatenate(parts))
