"""Model registry and factory, in the manner of timm: ``create_model(name, **hparams)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from fer_ray.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: make a factory available to ``create_model`` under ``name``."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **hparams: Any) -> nn.Module:
    """Build a registered model. Unknown names or hyperparameters raise ConfigError."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r} (known: {', '.join(list_models())})"
        ) from None
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter {unknown[0]!r} for model {name!r} "
            f"(known: {', '.join(accepted)})"
        )
    return factory(**hparams)
