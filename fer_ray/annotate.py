"""Photos with their faces drawn on: a box per face, its top emotion and probability.

Used by ``python -m fer_ray.predict --annotate DIR``. The text scales with the photo, sits
above the box (inside it at the top edge) on a filled label so it reads on any background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_ray import storage
from fer_ray.errors import DataError
from fer_ray.paths import shown
from fer_ray.recognize import PhotoResult

_GREEN = (40, 200, 60)  # RGB; deferred faces (not sure enough) are drawn orange
_ORANGE = (240, 150, 20)


def draw_faces(rgb: np.ndarray, result: PhotoResult) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 RGB photo with each face's box and "label 87%" drawn."""
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    height, width = out.shape[:2]
    thick = max(1, round(max(height, width) / 400))
    font = max(0.35, max(height, width) / 1600)
    for face in result.faces:
        x, y, w, h = face.box
        colour = _ORANGE if face.deferred else _GREEN
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, thick)
        text = f"{face.label_name} {face.probs[face.label]:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        top = y - th - base - 2 * thick if y - th - base - 2 * thick >= 0 else y
        cv2.rectangle(out, (x, top), (x + tw + 2 * thick, top + th + base + 2 * thick), colour,
                      cv2.FILLED)
        cv2.putText(out, text, (x + thick, top + th + thick), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (0, 0, 0), thick, cv2.LINE_AA)
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG file bytes."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


class Annotator:
    """Writes ``<folder>/<photo name>.png`` per photo; a second photo of the same name (from
    another folder) gets ``-2``, ``-3``..., so no annotated photo replaces another."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: set[str] = set()

    def name_for(self, source: str) -> str:
        stem = Path(source).stem or "photo"
        name, n = f"{stem}.png", 1
        while name in self.taken:
            n += 1
            name = f"{stem}-{n}.png"
        self.taken.add(name)
        return name

    def write(self, source: str, rgb: np.ndarray, result: PhotoResult) -> Path:
        path = self.folder / self.name_for(source)
        try:
            storage.write_bytes(str(path), png_bytes(draw_faces(rgb, result)))
        except OSError as exc:  # a full disk, a folder removed meanwhile
            raise DataError(f"--annotate {shown(path)}: cannot write "
                            f"({exc.strerror or exc})") from None
        return path
