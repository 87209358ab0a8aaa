"""What the searcher proposes, without running a search: the Optuna TPE searcher a search
builds (``fer_ray.search.proposals.build_searcher``), asked for configs the way Ray Tune asks,
and told a result for each, as Tune tells it. No Ray cluster starts (``ray.tune`` is imported
only for its searcher classes)."""

from __future__ import annotations

import json
from typing import Any

from fer_ray.config import TrainConfig, to_dict
from fer_ray.experiment import SearchSettings, base_config
from fer_ray.search.proposals import build_searcher, warm_start
from fer_ray.space import load_space
from fer_ray.trainable import TrialSetup, trial_config

TRIALS = 8  # small's points first, then TPE's own proposals (random, then modelled)


def proposals(seed: int, space_name: str = "small") -> list[TrainConfig]:
    """The first TRIALS trial configs of a search with ``--seed seed``, in proposal order."""
    settings = SearchSettings(space=space_name, seed=seed)
    space = load_space(space_name)
    base = base_config(settings)
    searcher = build_searcher(settings, space, warm_start(settings, space, base))
    setup = TrialSetup(space=space, base=base, max_epochs=settings.epochs_cap(),
                       cpus_per_trial=1.0)
    configs = []
    for i in range(TRIALS):
        params: dict[str, Any] = searcher.suggest(f"t{i}")
        config = trial_config(params, setup)
        configs.append(config)
        # a result that depends on the config, so TPE's model has something to follow
        score = (config.optim.lr * 1e3 + len(config.model.filters)) % 1.0
        searcher.on_trial_complete(f"t{i}", {"val_acc": score, "trial_id": f"t{i}"})
    return configs


def _without_seed(configs: list[TrainConfig]) -> list[str]:
    return [json.dumps({**to_dict(c), "seed": None}, sort_keys=True) for c in configs]


def test_the_same_seed_proposes_the_same_trial_configs() -> None:
    first, again, other = proposals(0), proposals(0), proposals(1)
    assert first == again  # every field, the trials' seeds included
    n_points = len(load_space("small").points)
    assert 1 <= n_points < TRIALS
    # The space's points come first whatever the seed; what TPE proposes after them differs.
    assert _without_seed(first)[:n_points] == _without_seed(other)[:n_points]
    differ = [a != b for a, b in zip(_without_seed(first), _without_seed(other), strict=True)]
    assert sum(differ[n_points:]) >= TRIALS - n_points - 1, differ


def test_every_trial_gets_its_own_seed() -> None:
    """The search's seed plus the trial's number in proposal order: distinct, so two trials
    of one architecture do not start from the same weights and batch order."""
    assert [c.seed for c in proposals(0, "smoke")] == list(range(TRIALS))
    assert [c.seed for c in proposals(7, "smoke")] == list(range(7, 7 + TRIALS))
