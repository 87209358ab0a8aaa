"""An exported ensemble (``python -m fer_ray.export``) run with onnxruntime: no torch, no Ray.

One ``.onnx`` file holds the whole prediction of ``Ensemble.predict_proba`` as one graph
(input ``images`` (N, 48, 48) uint8, output ``probs`` (N, C) float32, C = len(classes)) and,
as JSON in the model's ``metadata_props`` under ``METADATA_KEY``, what deciding and
describing need: class names, class biases, the deferral rule, temperature, weights, TTA,
the members' and the ensemble's ``info`` and the ensemble's id. ``OnnxEnsemble`` has the
interface of ``Ensemble`` for prediction (``predict_proba``, ``decide``, ``predict``,
``info``, ``classes``), with the same decision (``decision.decide_labels``). Imports numpy
and onnxruntime only, so it starts in a fraction
of torch's import time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fer_ray.ensemble.decision import decide_labels
from fer_ray.errors import ConfigError, DataError, reason
from fer_ray.paths import require_file, shown
from fer_ray.tta import tta_mode

METADATA_KEY = "fer_ray"
FORMAT_VERSION = 1  # of the metadata; ``ensemble.json`` has its own
INPUT_NAME, OUTPUT_NAME = "images", "probs"
IMAGE_SHAPE = (48, 48)
# Images per run of the graph: bounds the activations held at once (a whole test set in
# one run would hold every member's feature maps for every image). 64 as torch's EVAL_BATCH:
# on one core 64 ran 1.15x faster per image than 256 (BENCHMARKS.md, "ONNX export").
BATCH = 64
_DEFER_KINDS = ("max_prob", "margin")


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"{shown(path)}: {what}")


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's choice (one per core)
    options.log_severity_level = 4  # failures are raised below; no log lines on stderr
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        raise _fail(path, f"not a readable ONNX model ({reason(exc)[:200]})") from None


def _check_io(session: ort.InferenceSession, path: Path) -> None:
    """One input ``images`` uint8 (N, 48, 48) and one output ``probs``."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if (len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(uint8)"
            or len(shape) != 3 or tuple(shape[1:]) != IMAGE_SHAPE
            or [o.name for o in outputs] != [OUTPUT_NAME]):
        raise _fail(path, f"not a fer-ray ensemble graph (expected input {INPUT_NAME} uint8 "
                          f"(N, 48, 48) and output {OUTPUT_NAME})")


def _number(meta: dict[str, Any], key: str, low: float, high: float) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{key}: {value!r:.40} is not a number in {low:g}..{high:g}")
    return float(value)


def _numbers(meta: dict[str, Any], key: str, length: int) -> np.ndarray:
    values = meta.get(key)
    if not isinstance(values, list) or len(values) != length:
        raise ValueError(f"{key}: expected a list of {length} numbers")
    return np.array([_number({key: v}, key, -math.inf, math.inf) for v in values])


def parse_metadata(meta: Any) -> dict[str, Any]:
    """The decoded metadata JSON, checked (ValueError naming the key): what ``decide`` and the
    attributes of ``OnnxEnsemble`` read must have the right types, lengths and ranges."""
    if not isinstance(meta, dict):
        raise ValueError("expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version: {meta.get('format_version')!r:.20} is not "
                         f"supported (this fer-ray reads version {FORMAT_VERSION})")
    classes, members = meta.get("classes"), meta.get("members")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError("classes: expected a list of names")
    if not (isinstance(members, list) and members and all(
            isinstance(m, dict) and isinstance(m.get("name"), str) for m in members)):
        raise ValueError("members: expected a list of objects with a name")
    defer = meta.get("defer")
    if not isinstance(defer, dict) or defer.get("kind") not in _DEFER_KINDS:
        raise ValueError(f"defer.kind: expected one of {', '.join(_DEFER_KINDS)}")
    threshold = defer.get("threshold")
    if not isinstance(meta.get("ensemble_id"), str):
        raise ValueError("ensemble_id: expected a string")
    if not isinstance(meta.get("info"), dict):
        raise ValueError("info: expected an object")
    try:  # exports before TTA modes hold true/false
        tta = tta_mode(meta.get("tta"), "tta")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return {**meta, "tta": tta,
            "weights": _numbers(meta, "weights", len(members)),
            "class_biases": _numbers(meta, "class_biases", len(classes)),
            "temperature": _number(meta, "temperature", 1e-6, math.inf),
            "defer": {"kind": defer["kind"], "threshold": None if threshold is None
                      else _number(defer, "threshold", 0.0, 1.0)}}


class OnnxEnsemble:
    """An exported ensemble in an onnxruntime session (CPU). See the module doc.

    Attributes (from the metadata): classes, members ([{name, info}]), weights (n_members,),
    tta (the mode; exports before modes: true/false read as flip/none), temperature,
    class_biases (C,), defer_kind, defer_threshold (None: never defer), info (the ensemble's
    validation/test figures), ensemble_id, format_version, path.
    """

    def __init__(self, session: ort.InferenceSession, meta: dict[str, Any], path: Path) -> None:
        self.session = session
        self.path = path
        self.metadata = meta
        self.classes: list[str] = list(meta["classes"])
        self.members: list[dict[str, Any]] = [
            {"name": m["name"], "info": m.get("info", {})} for m in meta["members"]]
        self.weights: np.ndarray = meta["weights"]
        self.tta: str = meta["tta"]
        self.temperature: float = meta["temperature"]
        self.class_biases: np.ndarray = meta["class_biases"]
        self.defer_kind: str = meta["defer"]["kind"]
        self.defer_threshold: float | None = meta["defer"]["threshold"]
        self.info: dict[str, Any] = meta["info"]
        self.ensemble_id: str = meta["ensemble_id"]
        self.format_version: int = meta["format_version"]

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxEnsemble:
        """Open an exported ``.onnx``; DataError naming the file when it is not a readable
        ONNX model, not a fer-ray ensemble graph, or lacks valid fer-ray metadata.

        threads: onnxruntime intra-op threads (None: its own choice, one per core).
        """
        path = require_file(path)
        session = _session(path, threads)
        _check_io(session, path)
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise _fail(path, f"an ONNX model without fer-ray metadata (no {METADATA_KEY!r} "
                              "entry); export ensembles with python -m fer_ray.export")
        try:
            meta = parse_metadata(json.loads(raw))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise _fail(path, f"invalid fer-ray metadata ({reason(exc)})") from None
        n_out = session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(meta["classes"]):
            raise _fail(path, f"the graph gives {n_out} classes, the metadata names "
                              f"{len(meta['classes'])}")
        return cls(session, meta, path)

    def predict_proba(self, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """(N, C) float32 calibrated class probabilities for (N, 48, 48) uint8 images."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, 48, 48) uint8, got {images.shape} "
                             f"{images.dtype}")
        out = np.zeros((len(images), len(self.classes)), np.float32)
        for start in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[start:start + batch_size])
            out[start:start + len(chunk)] = self.session.run(
                [OUTPUT_NAME], {INPUT_NAME: chunk})[0]
        return out

    def decide(self, probs: np.ndarray, rule: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,), deferred (N,) bool) from probabilities (N, C), as ``Ensemble.decide``."""
        return decide_labels(probs, rule, self.class_biases, self.defer_threshold,
                             self.defer_kind)

    def predict(self, images: np.ndarray, rule: str = "argmax") -> np.ndarray:
        return self.decide(self.predict_proba(images), rule)[0]
