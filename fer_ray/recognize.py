"""Emotions of the faces in photos: the public Python API behind ``fer_ray.predict`` and serve.

    from fer_ray.recognize import Recognizer
    rec = Recognizer.load("runs/my-search/ensemble")      # or "model.onnx" (no torch needed)
    result = rec.recognize("group.jpg")                   # or a numpy image (H, W[, 3|4])
    for face in result.faces:
        print(face.box, face.label_name, face.probs.max())

Faces are found with OpenCV's cascade (``fer_ray.data.faces``), cropped FER2013-style and
classified in one ensemble call per photo (``recognize``) or per list of photos
(``recognize_many``: what a batching server wants). ``faces="auto"`` detects faces in images
larger than a FER crop (over ``FER_CROP_MAX`` px on a side) and takes smaller images as one
face; where detection (``faces.find_faces``: the image, then a padded copy) finds none, an
image shaped like a face crop (``looks_like_crop``) is taken whole as one face too, and a
larger or wider one has no face. ``"detect"`` always detects and never takes the whole image;
``"none"`` takes every image as one face. A face taken whole has ``whole_image`` true (its box
is the whole image, its ``detector_score`` None).

Two engines: a saved ensemble folder runs with PyTorch (on a GPU with ``device="cuda"``); an
exported ``.onnx`` file runs with onnxruntime and never imports torch. Both give the same
probabilities (``python -m fer_ray.export`` checks it). No Ray import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from fer_ray import storage
from fer_ray.data import CLASS_NAMES
from fer_ray.data.faces import MIN_FACE, clip_box, crop_face, find_faces
from fer_ray.data.images import read_photo, resize_face, to_gray
from fer_ray.errors import ConfigError

FacesMode = Literal["auto", "detect", "none"]
FACES_MODES: tuple[str, ...] = ("auto", "detect", "none")
ENGINES: tuple[str, ...] = ("auto", "torch", "onnx")
FER_CROP_MAX = 64  # px: "auto" takes images no larger than this on both sides as one face
# "auto" takes an image in which no face is found as one face when it has a face crop's shape.
# Aligned-face datasets crop square or nearly (FER2013 48x48, RAF-DB's aligned 100x100) and at
# a few hundred px at most; a larger image, or a 4:3 frame (320x240 webcam), is more likely a
# scene without a frontal face, and classifying it whole would invent an emotion.
CROP_MAX_SIDE = 400  # px, the longer side
CROP_MAX_ASPECT = 1.25  # longer side / shorter side
NO_FACE = "no face found"
MIN_SIDE = 8  # px: a smaller image cannot show a face; it is refused, not stretched to 48x48


class Engine(Protocol):
    """What a loaded ensemble offers: ``fer_ray.ensemble.model.Ensemble`` (torch) and
    ``fer_ray.ensemble.onnx_model.OnnxEnsemble`` (onnxruntime)."""

    info: dict[str, Any]

    @property
    def classes(self) -> Sequence[str]: ...

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...

    def decide(self, probs: np.ndarray, rule: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
        ...


@dataclass(frozen=True)
class FaceCrop:
    """A face located in a photo, before classification. image: (48, 48) uint8."""

    face: int
    box: tuple[int, int, int, int]  # x, y, w, h in the photo's pixels
    detector_score: float | None  # None: the whole image was taken as the face
    image: np.ndarray


@dataclass(frozen=True)
class FaceResult:
    """One face and its emotion. probs: (C,) in the order of ``classes`` (the ensemble's;
    FER2013's by default), summing to 1."""

    face: int
    box: tuple[int, int, int, int]
    detector_score: float | None
    probs: np.ndarray
    label: int
    deferred: bool
    classes: tuple[str, ...] = CLASS_NAMES

    @property
    def label_name(self) -> str:
        return self.classes[self.label]

    @property
    def whole_image(self) -> bool:
        """Whether no detector found this face: the whole image was classified as one face."""
        return self.detector_score is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: face, box {x, y, w, h}, whole_image, detector_score, label, label_name,
        probs {class name: p}, deferred."""
        x, y, w, h = self.box
        return {"face": self.face, "box": {"x": x, "y": y, "w": w, "h": h},
                "whole_image": self.whole_image, "detector_score": self.detector_score,
                "label": self.label, "label_name": self.label_name,
                "probs": {name: float(p) for name, p in zip(self.classes, self.probs,
                                                             strict=True)},
                "deferred": self.deferred}


@dataclass(frozen=True)
class PhotoResult:
    """The faces of one photo (left to right); error says why there are none."""

    width: int
    height: int
    faces: list[FaceResult]
    error: str = ""


def _check_mode(faces: str) -> None:
    if faces not in FACES_MODES:
        raise ConfigError(f"faces: {faces!r} is not one of {', '.join(FACES_MODES)}")


def detects(shape: tuple[int, ...], faces: str) -> bool:
    """Whether an image of this (H, W[, C]) shape goes through face detection."""
    _check_mode(faces)
    return faces == "detect" or (faces == "auto" and max(shape[:2]) > FER_CROP_MAX)


def too_small(shape: tuple[int, ...]) -> str:
    """Why an image of this (H, W[, C]) shape cannot be a face, or ""."""
    height, width = shape[:2]
    if min(height, width) >= MIN_SIDE:
        return ""
    return f"{width}x{height} pixels: too small to show a face (at least {MIN_SIDE} a side)"


def looks_like_crop(shape: tuple[int, ...]) -> bool:
    """Whether an image of this (H, W[, C]) shape may be a face crop (see ``CROP_MAX_SIDE``)."""
    longer, shorter = max(shape[:2]), min(shape[:2])
    return longer <= CROP_MAX_SIDE and longer <= CROP_MAX_ASPECT * shorter


def locate_faces(gray: np.ndarray, faces: str = "auto",
                 min_face: int = MIN_FACE) -> list[FaceCrop]:
    """The faces of a (H, W) uint8 photo as FER crops, each (48, 48) uint8: the whole image
    when it is not searched (``detects``) or, in "auto", when nothing is found in an image
    shaped like a crop; [] when nothing is found otherwise (the photo has no face)."""
    height, width = gray.shape
    found = find_faces(gray, min_face) if detects(gray.shape, faces) else None
    if found:
        return [FaceCrop(i, clip_box(d, width, height), d.score, crop_face(gray, d))
                for i, d in enumerate(found)]
    if found is None or (faces == "auto" and looks_like_crop(gray.shape)):
        return [FaceCrop(0, (0, 0, width, height), None, resize_face(gray))]
    return []


class Recognizer:
    """A loaded ensemble plus face finding: load once, call on many photos."""

    def __init__(self, engine: Engine, ensemble_id: str, version: str,
                 members: list[dict[str, Any]]) -> None:
        self.engine = engine
        self.ensemble_id = ensemble_id
        self.version = version
        self.members = members

    @property
    def classes(self) -> tuple[str, ...]:
        """The names of the probabilities' columns, in order (the ensemble's classes)."""
        return tuple(self.engine.classes)

    @property
    def info(self) -> dict[str, Any]:
        """The ensemble's recorded figures (validation, test, data fingerprint...)."""
        return self.engine.info

    @classmethod
    def load(cls, location: str | Path, engine: str = "auto",
             device: str = "auto") -> Recognizer:
        """An ensemble folder (or its URI) with torch, or an exported ``.onnx`` file with
        onnxruntime. engine: "auto" (by the file name), "torch" or "onnx"; device: "auto",
        "cpu", "cuda", "cuda:N" (torch only)."""
        if engine not in ENGINES:
            raise ConfigError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
        if engine == "onnx" or (engine == "auto" and str(location).endswith(".onnx")):
            if device not in ("auto", "cpu"):
                raise ConfigError(f"device: {device!r}, but the onnx engine runs on the CPU")
            from fer_ray.ensemble.onnx_model import OnnxEnsemble

            onnx = OnnxEnsemble.load(Path(location))
            return cls(onnx, onnx.ensemble_id, str(onnx.format_version), onnx.members)
        from fer_ray.ensemble.model import Ensemble
        from fer_ray.ensemble.record import FORMAT_VERSION
        from fer_ray.models.inference import resolve_device

        target = resolve_device(device)
        torch_ensemble = Ensemble.load(storage.fetch_dir(str(location))).to(target)
        members = [{"name": m.name, "info": m.info} for m in torch_ensemble.members]
        return cls(torch_ensemble, torch_ensemble.ensemble_id, str(FORMAT_VERSION), members)

    def classify(self, crops: np.ndarray,
                 rule: str = "argmax") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 48, 48) uint8 faces -> probs (N, C), labels (N,) int, deferred (N,) bool."""
        if len(crops) == 0:
            return (np.zeros((0, len(self.classes))), np.zeros(0, dtype=np.int64),
                    np.zeros(0, dtype=bool))
        probs = np.asarray(self.engine.predict_proba(crops), dtype=np.float64)
        labels, deferred = self.engine.decide(probs, rule)
        return probs, labels, deferred

    def recognize(self, image: np.ndarray | str | Path, faces: str = "auto",
                  min_face: int = MIN_FACE, rule: str = "argmax") -> PhotoResult:
        """The faces of one photo: a path, or an array (H, W) gray, (H, W, 3) RGB or
        (H, W, 4) RGBA (uint8, or see ``images.to_gray`` for other value types)."""
        return self.recognize_many([image], faces, min_face, rule)[0]

    def recognize_many(self, images: Sequence[np.ndarray | str | Path], faces: str = "auto",
                       min_face: int = MIN_FACE, rule: str = "argmax") -> list[PhotoResult]:
        """The faces of many photos, classified in one ensemble call."""
        _check_mode(faces)
        grays = [to_gray(read_photo(Path(i)) if isinstance(i, str | Path) else i)[0]
                 for i in images]
        refused = [too_small(gray.shape) for gray in grays]
        located = [[] if why else locate_faces(gray, faces, min_face)
                   for gray, why in zip(grays, refused, strict=True)]
        crops = [crop for found in located for crop in found]
        probs, labels, deferred = self.classify(
            np.stack([c.image for c in crops]) if crops else np.zeros((0, 48, 48), np.uint8),
            rule)
        results, k = [], 0
        for gray, why, found in zip(grays, refused, located, strict=True):
            face_results = [FaceResult(crop.face, crop.box, crop.detector_score, probs[k + i],
                                       int(labels[k + i]), bool(deferred[k + i]), self.classes)
                            for i, crop in enumerate(found)]
            k += len(found)
            results.append(PhotoResult(gray.shape[1], gray.shape[0], face_results,
                                       why or ("" if face_results else NO_FACE)))
        return results
