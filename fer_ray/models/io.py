"""Save and load a model as safetensors weights + the resolved config as JSON.

Loading never unpickles: safetensors holds raw tensors only, and the architecture comes
from the JSON config through the model registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from fer_ray import storage
from fer_ray.config import TrainConfig, from_dict, to_dict
from fer_ray.errors import ConfigError, DataError
from fer_ray.models.vgg_fer import VGGFer, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the state dict as safetensors, atomically (``storage.write_bytes``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.write_bytes(str(path), safetensors_bytes(state))


def save_model(model: VGGFer, directory: str | Path, config: TrainConfig,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (config + ``extra`` metadata)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / WEIGHTS)
    payload = {"config": to_dict(config), **(extra or {})}
    storage.write_bytes(str(directory / CONFIG), json.dumps(payload, indent=2).encode())
    return directory


def read_config(directory: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig saved in ``directory/config.json`` and the rest of that file."""
    path = Path(directory) / CONFIG
    try:
        payload = json.loads(path.read_text())
        config = from_dict(TrainConfig, payload["config"])
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a fer-ray config ({exc})") from None
    except ConfigError as exc:
        raise DataError(f"{path}: {exc}") from None
    return config, {k: v for k, v in payload.items() if k != "config"}


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model`` (strict), with a clear error on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing weights file")
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot load weights ({first})") from None


def load_model(directory: str | Path, weights: str = WEIGHTS) -> tuple[VGGFer, TrainConfig]:
    """Rebuild a saved model in eval mode on the CPU: (model, config)."""
    config, _ = read_config(directory)
    model = build_model(config.model)
    load_weights(model, Path(directory) / weights)
    return model.eval(), config
