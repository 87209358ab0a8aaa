"""Fitting a training run into a deadline, in optimizer steps.

A run with a deadline (a budgeted search's trial, ``python -m fer_ray.train --time-budget``)
plans how many optimizer steps it trains in all, so that its learning-rate schedule
(one-cycle, cosine) anneals to its end just before the deadline whatever the machine's pace:
a partial last epoch is trained rather than a whole epoch's time thrown away (on a CPU
without bf16 one FER2013 epoch takes about 5 minutes). The plan is made from the first
steps' speed, then re-made after every epoch from the measured pace, up or down, with a
margin of ``DeadlinePlanner.MARGIN``.

Time comes from a ``clock`` argument (``time.time`` by default), so the rules are tested
with a fake clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fer_ray.config import TrainConfig

Clock = Callable[[], float]

# Schedules whose learning rate anneals towards the planned end: their best epoch is at or
# near the end, so evaluating the first part of the run cannot change which epoch is kept.
ANNEALING = ("onecycle", "cosine")


class PlannedRun(Protocol):
    """What the planner needs of a Trainer (``fer_ray.train.loop.Trainer``)."""

    steps_per_epoch: int
    step: int
    total_steps: int
    step_probe: Callable[[float], None] | None

    def plan_steps(self, total: int) -> None: ...


def steps_that_fit(seconds_left: float, seconds_per_step: float, seconds_per_eval: float,
                   steps_per_epoch: int, margin: float) -> int:
    """Optimizer steps that end within ``seconds_left``: each step costs ``seconds_per_step``
    and each epoch (the last, partial one included) one evaluation/checkpoint of
    ``seconds_per_eval``; ``margin`` (0.03 = 3 %) is kept free. 0 when nothing fits."""
    usable = max(seconds_left, 0.0) / (1.0 + margin) - seconds_per_eval
    per_step = max(seconds_per_step, 1e-9) + seconds_per_eval / max(steps_per_epoch, 1)
    return max(int(usable // per_step), 0)


@dataclass
class DeadlinePlanner:
    """Keeps a run's planned steps ending by ``deadline`` (epoch seconds, on ``clock``).

    ``probe`` plans from the seconds per step of the first steps (the Trainer calls it), so
    even epoch 1 runs about the right schedule; ``after_epoch`` re-plans from the pace of the
    recent epochs (the first one, slowed by kernel selection, left out once there are
    others): training seconds per step, and the evaluation/checkpoint seconds between
    epochs. The plan grows again when the machine speeds up, up to ``most_steps`` (the
    config's epochs); a one-cycle schedule then only moves back by the plan's few percent.
    """

    run: PlannedRun
    deadline: float
    clock: Clock = time.time
    most_steps: int = 0  # 0: the run's plan when the planner starts
    MARGIN = 0.03
    EVAL_SHARE = 0.15  # evaluation + checkpoint per training epoch, until one is measured
    RECENT = 3  # epochs whose pace counts
    last: float = field(init=False)
    train_pace: list[tuple[float, int]] = field(init=False, default_factory=list)
    eval_seconds: list[float] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.last = self.clock()
        self.most_steps = self.most_steps or self.run.total_steps
        if self.run.step == 0:
            self.run.step_probe = self.probe

    def _plan(self, seconds_per_step: float, seconds_per_eval: float) -> int:
        fit = steps_that_fit(self.deadline - self.clock(), seconds_per_step, seconds_per_eval,
                             self.run.steps_per_epoch, self.MARGIN)
        self.run.plan_steps(min(self.run.step + fit, self.most_steps))
        return self.run.total_steps

    def probe(self, seconds_per_step: float) -> None:
        """Plan from the first steps' speed (no epoch measured yet)."""
        eval_guess = self.EVAL_SHARE * seconds_per_step * self.run.steps_per_epoch
        self._plan(seconds_per_step, eval_guess)

    def after_epoch(self, metrics: dict[str, Any], evaluated: bool = True) -> int:
        """Re-plan after an epoch whose ``metrics`` hold ``epoch_seconds`` (training) and
        ``steps``; the steps now planned in all. ``evaluated``: whether the time since the
        last call included an evaluation (its cost is measured only then)."""
        now = self.clock()
        wall, self.last = now - self.last, now
        if self.run.step >= self.run.total_steps:
            return self.run.total_steps  # ended: its schedule has annealed, keep it so
        self.train_pace.append((float(metrics["epoch_seconds"]), int(metrics["steps"])))
        if evaluated:
            self.eval_seconds.append(max(wall - float(metrics["epoch_seconds"]), 0.0))
        recent = self.train_pace[1:][-self.RECENT:] or self.train_pace
        per_step = sum(s for s, _ in recent) / max(sum(n for _, n in recent), 1)
        evals = self.eval_seconds[1:][-self.RECENT:] or self.eval_seconds
        per_eval = max(evals) if evals else self.EVAL_SHARE * per_step * self.run.steps_per_epoch
        return self._plan(per_step, per_eval)


def evaluate_from(config: TrainConfig, budgeted: bool, early_stopping: bool) -> float:
    """The share of a run's planned steps after which every epoch is evaluated (before it,
    only the first epoch is, so the run is seen to be alive): 0.5 for a budgeted run with an
    annealing schedule and nothing that compares epochs or trials on the way (early
    stopping, ASHA); else 0 (every epoch)."""
    if budgeted and not early_stopping and config.optim.schedule in ANNEALING:
        return 0.5
    return 0.0


def should_evaluate(epoch: int, step: int, total_steps: int, share: float) -> bool:
    """Whether the epoch that ended at optimizer ``step`` (1-based ``epoch``) is evaluated,
    with every epoch evaluated from ``share`` of ``total_steps`` on; the first and the last
    always are."""
    return epoch == 1 or step >= total_steps or step >= share * total_steps


def planned_epochs(total_steps: int, steps_per_epoch: int) -> int:
    """Epochs ``total_steps`` take, the last one partial."""
    return max(math.ceil(total_steps / max(steps_per_epoch, 1)), 1)
