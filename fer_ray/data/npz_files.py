"""Read ``.npz`` archives without trusting them: each array's header is checked before it is
decoded.

An .npz is a zip of .npy files, and a compressed member can decode to far more than the file
holds (a few kilobytes of zeros can declare a 20000x20000 image), so the file size bounds
nothing. The .npy header (shape, dtype) does: before an array is read, it must be a plain
numeric array (object arrays need pickle, which is refused) of at most ``MAX_ARRAY_BYTES``
decoded bytes, and an image stack (N, H, W[, C]) at most ``MAX_IMAGE_PIXELS`` pixels per
image. Damaged archives of any kind become one DataError naming the file. No torch.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from fer_ray.data.images import MAX_IMAGE_PIXELS
from fer_ray.errors import DataError, reason
from fer_ray.paths import require_file, shown

MAX_ARRAY_BYTES = 2**30  # 1 GiB decoded per array: FER2013 as uint8 is 83 MB, as float64 660 MB
_PICKLE = "holds object arrays that need pickle to load, which is refused (save plain " \
          "numeric arrays instead)"


def _header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header; the stream is left at the start of the data."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(s) for s in shape), np.dtype(dtype)


def check_header(source: str, key: str, shape: tuple[int, ...], dtype: np.dtype,
                 image_axes: bool) -> None:
    """Refuse (DataError) an array too big to decode, or one that needs pickle.

    image_axes: axes 1 and 2 are an image's height and width (an ``images`` stack).
    """
    if dtype.hasobject:
        raise DataError(f"{source}: {_PICKLE}")
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise DataError(f"{source}: '{key}' {shape} {dtype} would decode to "
                        f"{size / 2**20:,.0f} MiB, over the {MAX_ARRAY_BYTES // 2**20:,} MiB "
                        "limit per array")
    if image_axes and len(shape) >= 3 and shape[1] * shape[2] > MAX_IMAGE_PIXELS:
        raise DataError(f"{source}: '{key}' holds images of {shape[1]}x{shape[2]} pixels, "
                        f"over the {MAX_IMAGE_PIXELS / 1e6:g}-megapixel limit per image")


def read_npz(path: str | Path, keys: tuple[str, ...] = ("images", "labels")
             ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays named ``keys`` that the archive holds, and the names of all its arrays.

    Raises DataError naming the file for a non-zip file, a damaged archive, object arrays,
    and arrays over the limits (checked from headers, before decoding).
    """
    path = require_file(path)
    source = shown(path)
    try:
        with path.open("rb"):  # is_zipfile would word a permission error as "not a zip"
            pass
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or reason(exc)})") from None
    if not zipfile.is_zipfile(path):
        raise DataError(f"{source}: not an .npz (zip) file, or one cut short")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()
                       if n.endswith(".npy")}
            arrays: dict[str, np.ndarray] = {}
            for key in (k for k in keys if k in members):
                with archive.open(members[key]) as member:
                    shape, dtype = _header(member)
                    check_header(source, key, shape, dtype, image_axes=key == "images")
                with archive.open(members[key]) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy raise many types for damaged files
        if "pickle" in reason(exc):
            raise DataError(f"{source}: {_PICKLE}") from None
        raise DataError(f"{source}: cannot read npz ({reason(exc)})") from None
    return arrays, list(members)
