"""Faces in photos: detection speed, whole-photo speed, and what detection costs in accuracy.

    .venv/bin/python scripts/bench_faces.py --ensemble DIR [--onnx model.onnx]
        [--data ../shared/data/fer2013] [--threads 2] [--quick]

Speed: a 640x480 photo with 4 faces (FER2013 PublicTest faces pasted at 160 px, or the
astronaut's face from scikit-image without ``--data``): photos/s of detection alone and of
``Recognizer.recognize`` (detect, crop, ensemble) for each engine given, and faces/s.
Accuracy (with ``--data``): PublicTest faces pasted at 120 px into 640x480 photos; the recall
of the detector (IoU >= 0.5 with the pasted square), and the ensemble's accuracy on the
detected crops next to its accuracy on the very same faces' original 48x48 crops.
Without ``--ensemble`` a tiny ensemble with random weights is used: speed only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data as skdata

from fer_ray.data.faces import Detection, box_iou, crop_box, detect_faces
from fer_ray.data.images import resize_face, to_gray
from fer_ray.data.synthetic import paste_faces
from fer_ray.recognize import Recognizer


def speed_photo(data: Path | None) -> np.ndarray:
    """A (480, 640) photo with 4 faces of 160 px."""
    if data is not None:
        images = np.load(data / "public_test.npz")["images"]
        faces = images[[0, 5, 9, 21]]
    else:
        gray = to_gray(skdata.astronaut())[0]
        faces = np.stack([resize_face(gray[50:180, 160:290])] * 4)
    return paste_faces(faces, 160, seed=1)[0]


def rate(fn: object, seconds: float) -> float:
    """Calls per second of ``fn()`` over about ``seconds`` (after one warm-up call)."""
    assert callable(fn)
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_speed(recognizers: dict[str, Recognizer], photo: np.ndarray, seconds: float) -> None:
    faces = len(detect_faces(photo))
    print(f"speed: one 640x480 photo, {faces} faces found (4 pasted)")
    detect = rate(lambda: detect_faces(photo), seconds)
    print(f"  {'detection only':<28} {detect:7.1f} photos/s  {detect * faces:7.1f} faces/s")
    for name, rec in recognizers.items():
        whole = rate(lambda rec=rec: rec.recognize(photo), seconds)
        print(f"  {'detect + crop + ' + name:<28} {whole:7.1f} photos/s  "
              f"{whole * faces:7.1f} faces/s")


def crop_square(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The FER-style crop square (x, y, side, side) of a detected (x, y, w, h) box."""
    left, top, side = crop_box(Detection(*box, 0.0))
    return left, top, side, side


def bench_accuracy(rec: Recognizer, data: Path, n_faces: int) -> None:
    test = np.load(data / "public_test.npz")
    pick = np.random.default_rng(0).choice(len(test["labels"]), n_faces, replace=False)
    images, labels = test["images"][pick], test["labels"][pick]
    found, detected = [], []
    per_photo = (480 // 120) * (640 // 120)
    for start in range(0, n_faces, per_photo):
        photo, boxes = paste_faces(images[start:start + per_photo], 120, seed=start)
        faces = rec.recognize(photo, faces="detect").faces
        for j, box in enumerate(boxes):
            scored = [(box_iou(tuple(box), crop_square(f.box)), f.label) for f in faces]
            overlap, label = max(scored, default=(0.0, -1))
            if overlap >= 0.5:
                found.append(start + j)
                detected.append(label)
    hit, on_detected = np.array(found, dtype=int), np.array(detected, dtype=int)
    direct = rec.classify(images)[1]
    print(f"accuracy: {n_faces} PublicTest faces pasted at 120 px, {len(hit)} found "
          f"(recall {len(hit) / n_faces:.3f} at IoU >= 0.5)")
    print(f"  ensemble on the original 48x48 crops (all {n_faces}):  "
          f"{(direct == labels).mean():.4f}")
    print(f"  ensemble on the original crops of the found faces:     "
          f"{(direct[hit] == labels[hit]).mean():.4f}")
    print(f"  ensemble on the detected crops of the found faces:     "
          f"{(on_detected == labels[hit]).mean():.4f}  (same label as on the original: "
          f"{(on_detected == direct[hit]).mean():.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", type=Path, help="an ensemble folder (default: random)")
    parser.add_argument("--onnx", type=Path, help="the same ensemble exported to ONNX")
    parser.add_argument("--data", type=Path, help="FER2013 folder with public_test.npz")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--faces", type=int, default=1000, help="faces for the accuracy part")
    parser.add_argument("--quick", action="store_true", help="short timings, 100 faces")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = 0.5 if args.quick else 5.0
    with tempfile.TemporaryDirectory() as tmp:
        ensemble = args.ensemble
        if ensemble is None:
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.support.cli import save_tiny_ensemble

            ensemble = save_tiny_ensemble(Path(tmp) / "ensemble", members=2)
            print("ensemble: tiny, random weights (speed only)")
        recognizers = {"torch": Recognizer.load(ensemble, "torch", "cpu")}
        if args.onnx is not None:
            recognizers["onnx"] = Recognizer.load(args.onnx, "onnx")
        print(f"torch threads: {torch.get_num_threads()}")
        bench_speed(recognizers, speed_photo(args.data), seconds)
        if args.data is not None:
            bench_accuracy(recognizers["torch"], args.data, 100 if args.quick else args.faces)


if __name__ == "__main__":
    main()
