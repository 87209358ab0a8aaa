"""Face detection in photos and FER2013-style face crops.

The detector is OpenCV's frontal-face Haar cascade ("alt"), which ships inside the
``opencv-python-headless`` 4.x wheel (``cv2.data.haarcascades``): nothing is downloaded at run
time, it needs no GPU, and it finds upright frontal faces of 24 px and up. It misses profiles
and strongly tilted faces; that is the price of a detector that needs no model download.
Of OpenCV's three frontal cascades and three settings, "alt" with minNeighbors=3 found the most
pasted FER2013 faces at the fewest false detections for its speed (BENCHMARKS.md, "Faces").

Crops are made the way FER2013's faces look: FER2013 crops show the whole face with a little
forehead and chin, a little wider than the cascade's box. ``CROP_SCALE`` and ``CROP_SHIFT``
were measured by detecting 2,000 FER2013 training faces pasted enlarged at known squares onto
a background (``scripts/calibrate_crop.py``): the median ratio of the known square's side to
the detected box's (1.081) and the median vertical offset of their centres (+0.007 sides).
Crops are then squared, padded by edge replication where they leave the photo, and resized to
48x48 with the same filter as every other input (``images.resize_face``).

A face that fills the image (an aligned face crop, as RAF-DB and AffectNet ship them) is often
missed: the cascade's windows were trained on faces with some background around them.
``find_faces`` therefore searches a copy with margins added when the image itself shows none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fer_ray.data.images import resize_face

MIN_FACE = 24  # px: the cascade's own window; smaller faces are not findable
# Photos are searched at most this wide/tall: a 40 MP photo downscaled first, so the time a
# photo takes is bounded (the cascade's cost grows with the pixels it scans).
DETECT_MAX_SIDE = 1280
CROP_SCALE = 1.08  # crop side / detected box side (measured, see the module doc)
CROP_SHIFT = 0.0  # crop centre below the box centre, in box sides (measured)
# Margin added on each side, as a fraction of the longer side, for the second search of an
# image in which no face was found. Measured on scikit-image's astronaut cropped to 0.7 and 0.8
# of the detector's box and resized to 100x100 (found in neither): edge-replicated margins of
# a third found both; a quarter missed the 0.7 crop; mean-gray and mirrored margins missed more.
PAD_MARGIN = 1 / 3
_CASCADE = "haarcascade_frontalface_alt.xml"
_lock = threading.Lock()


@dataclass(frozen=True)
class Detection:
    """A face found in a photo: box in the photo's pixels, and the cascade's confidence
    (the last stage's weight: higher is surer; the scale is the cascade's own)."""

    x: int
    y: int
    w: int
    h: int
    score: float


@lru_cache(maxsize=1)
def _cascade() -> object:
    import cv2  # imported here: reading CSVs and npz files never needs OpenCV

    path = cv2.data.haarcascades + _CASCADE  # type: ignore[attr-defined]
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():  # a broken OpenCV install: say which file, not "empty classifier"
        raise RuntimeError(f"OpenCV could not load its face cascade {path}")
    return cascade


def detect_faces(gray: np.ndarray, min_face: int = MIN_FACE) -> list[Detection]:
    """Frontal faces in a (H, W) uint8 grayscale photo, left to right (then top to bottom).

    min_face: the smallest face side to report, in the photo's pixels (at least 24).
    """
    import cv2

    height, width = gray.shape
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    small = gray if scale == 1.0 else cv2.resize(
        gray, (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA)
    side = max(MIN_FACE, round(min_face * scale))
    if min(small.shape) < side:
        return []
    # Histogram equalisation evens out lighting: the cascade was trained on equalised faces.
    equalised = cv2.equalizeHist(np.ascontiguousarray(small))
    with _lock:  # one cascade object is shared; OpenCV does not promise it is re-entrant
        boxes, _, weights = _cascade().detectMultiScale3(  # type: ignore[attr-defined]
            equalised, scaleFactor=1.1, minNeighbors=3, minSize=(side, side),
            outputRejectLevels=True)
    found = [Detection(round(x / scale), round(y / scale), round(w / scale), round(h / scale),
                       float(score))
             for (x, y, w, h), score in zip(np.reshape(boxes, (-1, 4)),
                                            np.reshape(weights, -1), strict=True)]
    return sorted(_drop_nested(found), key=lambda d: (d.x, d.y))


def find_faces(gray: np.ndarray, min_face: int = MIN_FACE) -> list[Detection]:
    """``detect_faces`` on a (H, W) uint8 photo; when it finds none, ``detect_faces`` again on a
    copy padded by edge replication (``PAD_MARGIN`` of the longer side each side).

    Boxes are in the photo's pixels; those from the padded copy may reach beyond the photo (as
    the face did beyond the crop), and ``crop_face`` repeats the edge there, as the padded copy
    did. A box mostly (half or more) in the margins is dropped: there is no face in them.
    """
    found = detect_faces(gray, min_face)
    if found:
        return found
    height, width = gray.shape
    pad = round(PAD_MARGIN * max(height, width))
    padded = detect_faces(np.pad(gray, pad, mode="edge"), min_face)
    shifted = [Detection(d.x - pad, d.y - pad, d.w, d.h, d.score) for d in padded]
    return [d for d in shifted
            if 2 * _intersection((d.x, d.y, d.w, d.h), (0, 0, width, height)) >= d.w * d.h]


def clip_box(det: Detection, width: int, height: int) -> tuple[int, int, int, int]:
    """The (x, y, w, h) part of a detection inside a width x height photo (what is reported)."""
    x, y = max(det.x, 0), max(det.y, 0)
    return x, y, min(det.x + det.w, width) - x, min(det.y + det.h, height) - y


def _drop_nested(found: list[Detection]) -> list[Detection]:
    """Detections that are not mostly (half their area or more) inside a larger one.

    The cascade's own grouping merges boxes of similar size only; a small box on an eye or
    mouth inside a found face is a second "face" a user would call a mistake.
    """
    kept: list[Detection] = []
    for det in sorted(found, key=lambda d: -d.w * d.h):
        box = (det.x, det.y, det.w, det.h)
        inside = any(_intersection(box, (big.x, big.y, big.w, big.h)) >= 0.5 * det.w * det.h
                     for big in kept)
        if not inside:
            kept.append(det)
    return kept


def _intersection(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Area shared by two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy


def box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes (how detections are scored)."""
    inter = _intersection(a, b)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def crop_box(det: Detection) -> tuple[int, int, int]:
    """The square (left, top, side) a FER2013-style crop of this detection covers (it may
    reach beyond the photo)."""
    side = round(max(det.w, det.h) * CROP_SCALE)
    cx = det.x + det.w / 2
    cy = det.y + det.h / 2 + CROP_SHIFT * det.h
    return round(cx - side / 2), round(cy - side / 2), side


def crop_face(gray: np.ndarray, det: Detection) -> np.ndarray:
    """(H, W) uint8 photo + a detection -> (48, 48) uint8 face, FER2013-style.

    Where the square leaves the photo its edge pixels are repeated (a face at the border
    keeps its shape instead of being squeezed).
    """
    left, top, side = crop_box(det)
    height, width = gray.shape
    rows = np.clip(np.arange(top, top + side), 0, height - 1)
    cols = np.clip(np.arange(left, left + side), 0, width - 1)
    return resize_face(np.ascontiguousarray(gray[np.ix_(rows, cols)]))
