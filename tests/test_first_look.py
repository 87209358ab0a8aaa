"""The first look (``python -m fer_ray.search`` without --data): its defaults and shares."""

from __future__ import annotations

from fer_ray.search.cli import FIRST_LOOK, build_parser, settings_from_args
from fer_ray.search.run import run_timing


def _settings(*argv: str):  # type: ignore[no-untyped-def]
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_no_arguments_is_a_budgeted_first_look_on_the_quick_space() -> None:
    s = _settings()
    assert (s.time_budget, s.num_samples, s.space, s.data) == (2.5, 8, "quick", None)
    assert FIRST_LOOK == {"time_budget": 2.5, "num_samples": 8, "space": "quick"}


def test_a_flag_the_user_gave_wins_and_data_means_a_real_run() -> None:
    assert _settings("--space", "smoke").space == "smoke"
    assert _settings("--space", "smoke").time_budget == 2.5
    real = _settings("--data", "faces.npz")
    assert (real.time_budget, real.num_samples, real.space) == (None, None, "small")
    counted = _settings("--num-samples", "3")  # a trial count without a budget: as before
    assert (counted.time_budget, counted.space) == (None, "small")


def test_the_trial_count_splits_the_budget_into_shares() -> None:
    """8 trials on 2 slots: 4 follow each other in a slot, each a quarter of the search."""
    s = _settings()
    assert s.generations(2) == 4 and s.generations(3) == 3
    timing = run_timing(s, {}, started=1000.0, slots=2)
    assert timing.deadline == 1150.0
    assert timing.trial_seconds == (timing.stop_at - 1000.0) / 4
    # Without a count, the share follows the budget's length (one trial per slot below 90 min).
    budget_only = _settings("--data", "x.npz", "--time-budget", "45")
    assert budget_only.generations(2) == 1
