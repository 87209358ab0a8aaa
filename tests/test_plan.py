"""Fitting runs and searches into a deadline, with a fake clock: step planning, re-planning
when the pace changes, evaluation only where the best epoch can be, and the search's rule
against starting trials that cannot get a useful share of the time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from fer_ray.config import TrainConfig, merge
from fer_ray.data import FerData
from fer_ray.search.tuner import BudgetedLimiter, DeadlineStopper
from fer_ray.train import Trainer, get_preset
from fer_ray.train.budget import (
    DeadlinePlanner,
    evaluate_from,
    planned_epochs,
    should_evaluate,
    steps_that_fit,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeRun:
    """A Trainer's planning surface: steps, plan, no training."""

    steps_per_epoch: int
    total_steps: int
    step: int = 0
    step_probe: Any = None

    def plan_steps(self, total: int) -> None:
        self.total_steps = max(total, self.step, 1)


@pytest.mark.parametrize(("left", "per_step", "per_eval", "expected"), [
    (1031.0, 1.0, 0.0, 1000),  # the 3 % margin kept free (1031 / 1.03 = 1000.97)
    (1031.0, 1.0, 10.0, 900),  # (1000.97 - 10) / (1 + 10 / 100) = 900.9
    (5.0, 1.0, 10.0, 0),  # not even the last evaluation fits
    (-9.0, 1.0, 0.0, 0),
])
def test_steps_that_fit(left: float, per_step: float, per_eval: float, expected: int) -> None:
    assert steps_that_fit(left, per_step, per_eval, 100, 0.03) == expected


def simulate(deadline: float, pace: Any, eval_seconds: float, spe: int = 100,
             most_epochs: int = 1000) -> tuple[FakeRun, float, list[int]]:
    """Train a fake run to its planned end under a DeadlinePlanner: ``pace(now)`` seconds
    per step. Returns the run, the clock at the end and the plan after each epoch."""
    clock = FakeClock()
    run = FakeRun(spe, spe * most_epochs)
    planner = DeadlinePlanner(run, deadline, clock)
    assert run.step_probe == planner.probe  # the Trainer calls it after its first steps
    planner.probe(pace(0.0))
    plans = [run.total_steps]
    while run.step < run.total_steps:
        steps = min(spe, run.total_steps - run.step)
        seconds = steps * pace(clock.now)
        clock.now += seconds + eval_seconds
        run.step += steps
        plans.append(planner.after_epoch({"epoch_seconds": seconds, "steps": steps}))
    return run, clock.now, plans


def test_a_slow_cpu_uses_the_budget_with_a_partial_last_epoch() -> None:
    """The issue's case: a 10-minute run where one epoch takes 5 minutes. Whole epochs
    planned one epoch (5:20 of 10 used); steps use >= 90 % and the last epoch is partial."""
    run, end, _ = simulate(deadline=600.0, pace=lambda now: 3.0, eval_seconds=8.0)
    assert 0.9 * 600 <= end <= 600
    assert run.total_steps % run.steps_per_epoch != 0
    assert planned_epochs(run.total_steps, run.steps_per_epoch) == 2


@pytest.mark.parametrize("change", [0.5, 1.5])
def test_the_plan_follows_a_change_of_pace(change: float) -> None:
    """The machine speeds up (or slows down) a third of the way in: the plan grows (or
    shrinks) and the run still ends within the margin before the deadline."""
    _, end, plans = simulate(deadline=3000.0, pace=lambda now: 1.0 if now < 1000 else change,
                               eval_seconds=5.0)
    assert 0.95 * 3000 <= end <= 3000
    grew = plans[-1] > plans[3]
    assert grew == (change < 1.0)


def test_the_plan_never_exceeds_the_configs_epochs() -> None:
    run, end, _ = simulate(deadline=1e6, pace=lambda now: 1.0, eval_seconds=0.0,
                           most_epochs=3)
    assert run.total_steps == 300 and end == pytest.approx(300.0)


def test_a_finished_run_is_never_replanned() -> None:
    clock = FakeClock()
    run = FakeRun(100, 250, step=250)
    planner = DeadlinePlanner(run, 1e6, clock, most_steps=10_000)
    clock.now = 10.0
    assert planner.after_epoch({"epoch_seconds": 5.0, "steps": 50}) == 250


def test_evaluation_only_where_the_best_epoch_can_be() -> None:
    onecycle = merge(TrainConfig(), {"optim": {"schedule": "onecycle"}})
    assert evaluate_from(onecycle, budgeted=True, early_stopping=False) == 0.5
    assert evaluate_from(onecycle, budgeted=True, early_stopping=True) == 0.0  # ASHA judges
    assert evaluate_from(onecycle, budgeted=False, early_stopping=False) == 0.0
    plateau = merge(TrainConfig(), {"optim": {"schedule": "plateau"}})
    assert evaluate_from(plateau, budgeted=True, early_stopping=False) == 0.0
    # 10 epochs of 100 steps, from half-way on: the first, then the 5th to the last
    shown = [e for e in range(1, 11) if should_evaluate(e, 100 * e, 1000, 0.5)]
    assert shown == [1, 5, 6, 7, 8, 9, 10]
    assert should_evaluate(3, 250, 250, 0.5)  # a partial last epoch is always evaluated


def _limiter(clock: FakeClock, trial_seconds: float) -> BudgetedLimiter:
    from ray.tune.search import Searcher

    class Always(Searcher):  # proposes forever: only the limiter says when to stop
        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            return {"x": 1}

        def on_trial_complete(self, trial_id: str, result: Any = None,
                              error: bool = False) -> None:
            pass

    searcher = Always(metric="val_acc", mode="max")
    return BudgetedLimiter(searcher, max_concurrent=100, stop_at=1000.0,
                           trial_seconds=trial_seconds, clock=clock)


def test_no_trial_starts_with_less_than_its_minimum_share() -> None:
    from ray.tune.search import Searcher

    clock = FakeClock(0.0)
    limiter = _limiter(clock, trial_seconds=800.0)  # minimum share: 200 s
    assert limiter.suggest("a") == {"x": 1}
    clock.now = 799.0  # 201 s left
    assert limiter.suggest("b") == {"x": 1}
    clock.now = 800.0  # 200 s left: a quarter of a slot's time, not more
    assert limiter.suggest("c") == Searcher.FINISHED
    # the fastest epoch seen also counts: two of them must fit
    limiter = _limiter(clock, trial_seconds=0.0)
    limiter.on_trial_result("a", {"status_flag": "ok", "time_this_iter_s": 150.0})
    clock.now = 600.0
    assert limiter.suggest("d") == {"x": 1}  # 400 s left, 2 x 150 needed
    clock.now = 750.0
    assert limiter.suggest("e") == Searcher.FINISHED


def test_deadline_stopper_stops_all_at_the_deadline() -> None:
    clock = FakeClock(99.0)
    stopper = DeadlineStopper(100.0, clock)
    assert not stopper.stop_all() and not stopper("t", {})
    clock.now = 100.0
    assert stopper.stop_all()
    assert not DeadlineStopper(None, clock).stop_all()


def test_a_partial_last_epoch_ends_the_schedule(small_data: FerData) -> None:
    """Planned 2 epochs and 3 steps: the third epoch trains 3 steps and the one-cycle
    schedule reaches its end (lr / 25e4) exactly at the last step."""
    config = merge(get_preset("tiny"), {"epochs": 5, "optim": {
        "batch_size": 32, "lr": 3e-3, "schedule": "onecycle"}})
    trainer = Trainer(config, small_data.train, small_data.val, "cpu")
    spe = trainer.steps_per_epoch
    trainer.plan_steps(2 * spe + 3)
    assert trainer.config.epochs == 3
    steps = []
    while not trainer.done:
        steps.append(int(trainer.run_epoch(evaluate=False)["steps"]))
    assert steps == [spe, spe, 3]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 / 25e4)
    state = trainer.state_dict()
    assert (state["step"], state["total_steps"]) == (2 * spe + 3, 2 * spe + 3)
    assert np.isfinite(trainer.evaluate()["val_loss"]) and torch.isfinite(
        next(trainer.model.parameters())).all()


@pytest.mark.parametrize(("minutes", "reserve"), [
    (2.0, 30.0),  # a quarter of a short budget
    (10.0, 45.0),  # at least 45 s
    (45.0, 162.0),  # 6 %
    (120.0, 180.0),  # at most 3 minutes
])
def test_the_ensemble_reserve(minutes: float, reserve: float) -> None:
    from fer_ray.search.run import post_search_reserve

    assert post_search_reserve(60 * minutes) == pytest.approx(reserve)
