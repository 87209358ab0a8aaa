"""A saved ensemble as one ONNX graph, run by ``onnx_model.OnnxEnsemble`` without torch.

The graph computes what ``Ensemble.predict_proba`` computes, with the same torch code traced
into it: uint8 images (N, 48, 48) -> float / 255 (``as_float_images``) -> each member's
logits, with TTA the mean over the mode's views (``tta_logits``: mirror image, 2 px edge-padded
shifts) -> softmax
-> weighted mean over members -> softmax(log(clip(p, 1e-12, 1)) / T) -> ``probs`` (N, C)
float32. The batch axis is dynamic. The decision inputs (class biases, deferral) and the
description (``info``, members, id) go into ``metadata_props`` as JSON, with the key names of
``ensemble.json``.

Exporter: torch's TorchScript-based one (``dynamo=False``). The default dynamo exporter needs
the ``onnxscript`` package; these nets (convolutions, batch norm, pooling, dense layers)
trace to a fixed graph, which is all the TorchScript exporter needs. It supports opsets up to
``MAX_OPSET``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from fer_ray import __version__, storage
from fer_ray.ensemble.decision import LOG_EPS
from fer_ray.ensemble.model import Ensemble
from fer_ray.ensemble.onnx_model import (
    FORMAT_VERSION,
    IMAGE_SHAPE,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    OnnxEnsemble,
)
from fer_ray.ensemble.voting import normalise_weights
from fer_ray.errors import ConfigError
from fer_ray.models.inference import as_float_images, tta_logits

# 13: Softmax over one axis (not the flattened tail); 20: the TorchScript exporter's newest.
MIN_OPSET, MAX_OPSET = 13, 20
DEFAULT_OPSET = 17
# One .onnx file is one protobuf message, which cannot exceed 2 GiB.
MAX_GRAPH_BYTES = 2 * 2**30 - 2**24
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| the export is held to


class EnsembleGraph(nn.Module):
    """forward: images (N, 48, 48) uint8 -> probabilities (N, C) float32, as
    ``Ensemble.predict_proba`` (module doc). Members must be in eval mode."""

    weights: torch.Tensor

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.nets = nn.ModuleList([m.model for m in ensemble.members])
        w = normalise_weights(ensemble.weights, len(ensemble.members))
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float32).reshape(-1, 1, 1))
        self.tta = ensemble.tta
        self.temperature = float(ensemble.temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = as_float_images(images.unsqueeze(1))
        probas = torch.stack([torch.softmax(tta_logits(net, x, self.tta), dim=1)
                              for net in self.nets])
        voted = (probas * self.weights).sum(0)
        logits = torch.log(voted.clamp(LOG_EPS, 1.0)) / self.temperature
        return torch.softmax(logits, dim=1)


def onnx_metadata(ensemble: Ensemble, opset: int) -> dict[str, Any]:
    """What the runtime needs besides the graph (``onnx_model.parse_metadata`` reads it)."""
    return {
        "format_version": FORMAT_VERSION, "ensemble_id": ensemble.ensemble_id,
        "classes": list(ensemble.classes),
        "members": [{"name": m.name, "info": m.info} for m in ensemble.members],
        "weights": [float(w) for w in ensemble.weights], "tta": ensemble.tta,
        "temperature": float(ensemble.temperature),
        "class_biases": [float(b) for b in ensemble.class_biases],
        "defer": {"kind": ensemble.defer_kind, "threshold": ensemble.defer_threshold},
        "info": ensemble.info,
        "exported_with": {"fer_ray": __version__, "torch": torch.__version__, "opset": opset},
    }


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset {opset}: supported are {MIN_OPSET}..{MAX_OPSET}")
    return opset


def _check_exportable(ensemble: Ensemble, opset: int) -> None:
    check_opset(opset)
    size = sum(p.numel() * p.element_size() for m in ensemble.members
               for p in (*m.model.parameters(), *m.model.buffers()))
    if size > MAX_GRAPH_BYTES:
        raise ConfigError(f"the ensemble's {size / 2**30:.1f} GiB of weights do not fit one "
                          ".onnx file (2 GiB at most)")


def export_onnx(ensemble: Ensemble, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``ensemble`` as one checked ONNX graph with fer-ray metadata to ``out``.

    Written to a temporary file that replaces ``out`` only once ``onnx.checker`` passed, so
    a failed export leaves any previous file as it was. ConfigError for an opset outside
    MIN_OPSET..MAX_OPSET or an ensemble over 2 GiB.
    """
    _check_exportable(ensemble, opset)
    graph = EnsembleGraph(ensemble).eval()
    example = torch.zeros((2, *IMAGE_SHAPE), dtype=torch.uint8)
    out = Path(out)
    with storage.atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation; the choice is made above.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        model = onnx.load(str(tmp))
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(onnx_metadata(ensemble, opset))
        model.doc_string = f"fer-ray ensemble {ensemble.ensemble_id[:12]}"
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
    return out


@dataclass(frozen=True)
class Parity:
    """The exported graph against torch on the same images: ``max_abs_diff`` of the
    probabilities, and the fraction of images with the same label per decision."""

    images: int
    max_abs_diff: float
    same_argmax: float
    same_adjusted: float
    same_deferred: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE


def parity(ensemble: Ensemble, model: OnnxEnsemble, images: np.ndarray) -> Parity:
    """Compare ``model`` with ``ensemble`` on images (N, 48, 48) uint8, N > 0."""
    with torch.inference_mode():
        p_torch = ensemble.predict_proba(images)
    p_onnx = model.predict_proba(images)
    decisions = [(ensemble.decide(p_torch, rule), model.decide(p_onnx, rule))
                 for rule in ("argmax", "adjusted")]
    return Parity(
        images=len(images), max_abs_diff=float(np.abs(p_onnx - p_torch).max()),
        same_argmax=float(np.mean(decisions[0][0][0] == decisions[0][1][0])),
        same_adjusted=float(np.mean(decisions[1][0][0] == decisions[1][1][0])),
        same_deferred=float(np.mean(decisions[0][0][1] == decisions[0][1][1])))
