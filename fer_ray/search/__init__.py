"""Search: Ray Tune trials over a search space, Optuna TPE proposals, ASHA early stopping."""

from fer_ray.experiment import SearchSettings

__all__ = ["SearchSettings"]
