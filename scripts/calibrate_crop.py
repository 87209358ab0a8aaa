"""Measure how the face detector's boxes relate to FER2013's crops, and its recall.

FER2013 training faces are pasted enlarged at known squares onto a photo
(``synthetic.paste_faces``); the detector runs on each photo. For every pasted face that a
detection overlaps, the script records the ratio of the known square's side to the detected
box's side and the offset of the square's centre from the box's centre (in box sides). The
medians are ``faces.CROP_SCALE`` / ``CROP_SHIFT``; recall is then the share of pasted faces
whose crop square (``faces.crop_box``) overlaps the known square with IoU >= 0.5.

    python scripts/calibrate_crop.py --data ../shared/data/fer2013 --faces 2000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fer_ray.data.faces import (
    CROP_SCALE,
    CROP_SHIFT,
    Detection,
    box_iou,
    crop_box,
    detect_faces,
)
from fer_ray.data.synthetic import paste_faces


def crop_square(det: Detection) -> tuple[int, int, int, int]:
    left, top, side = crop_box(det)
    return left, top, side, side


def match(boxes: np.ndarray, found: list[Detection]) -> list[Detection | None]:
    """For each known box, the detection whose crop square overlaps it most (IoU >= 0.5)."""
    out: list[Detection | None] = []
    for box in boxes:
        scored = [(box_iou(tuple(box), crop_square(d)), d) for d in found]
        best = max(scored, key=lambda s: s[0], default=(0.0, None))
        out.append(best[1] if best[0] >= 0.5 else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.npz")
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--sides", type=int, nargs="+", default=[72, 120, 200])
    args = parser.parse_args()
    images = np.load(args.data / "train.npz")["images"]
    rng = np.random.default_rng(0)
    chosen = images[rng.choice(len(images), args.faces, replace=False)]
    ratios, shifts, found_n, total = [], [], 0, 0
    for side, share in zip(args.sides, np.array_split(chosen, len(args.sides)), strict=True):
        per_photo = (480 // side) * (640 // side)
        hits = 0
        for start in range(0, len(share), per_photo):
            photo, boxes = paste_faces(share[start:start + per_photo], side, seed=start)
            dets = detect_faces(photo)
            for box, det in zip(boxes, match(boxes, dets), strict=True):
                total += 1
                if det is None:
                    continue
                hits += 1
                ratios.append(box[2] / det.w)
                shifts.append(((box[1] + box[3] / 2) - (det.y + det.h / 2)) / det.h)
        found_n += hits
        print(f"side {side:>3} px: recall at IoU>=0.5 {hits / len(share):.3f} "
              f"({len(share)} faces)")
    print(f"faces {total}, found {found_n} (recall {found_n / total:.3f}) with CROP_SCALE "
          f"{CROP_SCALE}, CROP_SHIFT {CROP_SHIFT}")
    print(f"measured: median side ratio {np.median(ratios):.3f} "
          f"(IQR {np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}), "
          f"median centre shift {np.median(shifts):+.3f} box sides")


if __name__ == "__main__":
    main()
