"""Save and load a model as safetensors weights + the resolved config as JSON.

Loading never unpickles: safetensors holds raw tensors only, and the architecture comes
from the JSON config through the model registry. The classes a model predicts are its
config's label set (``data.labels``; a config without one is FER2013's, 7 classes), and
``config.json`` names them (``classes``). A config from a file is bounded and checked
against the weights file's header before the model is allocated (``build_checked``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from fer_ray import storage
from fer_ray.config import ModelConfig, TrainConfig, from_dict, to_dict
from fer_ray.data import NUM_CLASSES, class_names
from fer_ray.errors import ConfigError, DataError, reason
from fer_ray.models.vgg_fer import VGGFer, build_model
from fer_ray.paths import read_json, require_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Beside the weights of a trained model (a train run's output, a search checkpoint):
VAL_PROBS = "val_probs.npy"  # (N_val, n_classes) float32 softmax on validation, fp32 evaluation
VAL_LABELS = "val_labels.npy"  # (N_val,) int64, to check they belong to the same split


def model_classes(config: TrainConfig) -> tuple[str, ...]:
    """The class names a model trained with ``config`` predicts, in its output order."""
    return class_names(config.data.labels)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the state dict as safetensors, atomically (``storage.write_bytes``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.write_bytes(str(path), safetensors_bytes(state))


def save_model(model: VGGFer, directory: str | Path, config: TrainConfig,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (config, class names, ``extra``)."""
    classes = model_classes(config)
    if len(classes) != model.num_classes:
        raise ConfigError(f"a model of {model.num_classes} classes saved with the "
                          f"{len(classes)} classes of data.labels {config.data.labels!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / WEIGHTS)
    payload = {"config": to_dict(config), "classes": list(classes), **(extra or {})}
    storage.write_bytes(str(directory / CONFIG), json.dumps(payload, indent=2).encode())
    return directory


def read_config(directory: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig saved in ``directory/config.json`` and the rest of that file."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise DataError(f"{path}: missing")
    payload = read_json(path)
    try:
        config = from_dict(TrainConfig, payload["config"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a fer-ray config ({type(exc).__name__}: {exc})") from None
    except ConfigError as exc:
        raise DataError(f"{path}: {exc}") from None
    if payload.get("classes", list(model_classes(config))) != list(model_classes(config)):
        raise DataError(f"{path}: classes {payload['classes']!r:.100} are not those of its "
                        f"data.labels {config.data.labels!r}")
    return config, {k: v for k, v in payload.items() if k != "config"}


def weights_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header (no tensor is read)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing weights file")
    require_file(path)
    try:
        with path.open("rb"):  # safetensors words a permission error as a missing file
            pass
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or reason(exc)})") from None
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load weights ({reason(exc)})") from None


def expected_shapes(config: ModelConfig, num_classes: int = NUM_CLASSES
                    ) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the state dict ``config`` describes, built on the meta
    device (nothing allocated) after ``check_model`` has bounded it."""
    with torch.device("meta"):
        model = VGGFer(config, num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(config: ModelConfig, path: str | Path, num_classes: int = NUM_CLASSES
                  ) -> None:
    """Refuse (DataError) a weights file whose tensors are not the ones ``config`` needs."""
    found, needed = weights_header(path), expected_shapes(config, num_classes)
    wrong = sorted(k for k in needed.keys() & found.keys() if needed[k] != found[k])
    missing, extra = sorted(needed.keys() - found.keys()), sorted(found.keys() - needed.keys())
    if wrong:
        k = wrong[0]
        raise DataError(f"{path}: does not match its config ({len(wrong)} tensor(s) of the "
                        f"wrong shape, e.g. {k}: {list(found[k])} in the file, "
                        f"{list(needed[k])} in the config)")
    if missing or extra:
        what = f"{len(missing)} missing, e.g. {missing[0]}" if missing \
            else f"{len(extra)} unexpected, e.g. {extra[0]}"
        raise DataError(f"{path}: does not match its config (tensors {what})")


def build_checked(config: ModelConfig, path: str | Path, num_classes: int = NUM_CLASSES
                  ) -> VGGFer:
    """The model ``config`` describes with ``num_classes`` outputs and the weights at
    ``path``, in eval mode on the CPU.

    For configs read from files: the config is bounded (``check_model``) and checked against
    the weights file's header before the model is allocated.
    """
    try:
        check_weights(config, path, num_classes)
        model = build_model(config, num_classes)
    except ConfigError as exc:
        raise DataError(f"{path}: its config is refused ({exc})") from None
    load_weights(model, path)
    return model.eval()


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model`` (strict), with a clear error on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing weights file")
    require_file(path)
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise DataError(f"{path}: cannot load weights ({reason(exc)})") from None


def load_model(directory: str | Path, weights: str = WEIGHTS) -> tuple[VGGFer, TrainConfig]:
    """Rebuild a saved model in eval mode on the CPU: (model, config)."""
    config, _ = read_config(directory)
    return build_checked(config.model, Path(directory) / weights,
                         len(model_classes(config))), config
