"""Early stopping: when a monitored metric stops improving, every rank stops at the same step.

Owns the decision only, as plain arithmetic on the epoch's metrics. The loop
feeds it metrics that are already reduced across ranks, so every rank makes
the same decision at the same step, and its state travels in checkpoints so
a resumed run keeps counting where it left off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from orchestrator.job.spec import EarlyStoppingSpec


@dataclass
class StoppingState:
    """Best value seen, where it was seen, and epochs since it improved."""

    best_value: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_at_step: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    improved: bool
    stop: bool


def metric_value(metric: str, train: dict[str, float], validation: dict[str, float]) -> float | None:
    """The monitored value from an epoch's metrics ("val_loss" → validation["loss"])."""
    split, _, name = metric.partition("_")
    source = validation if split == "val" else train
    return source.get(name)


def update(spec: EarlyStoppingSpec, state: StoppingState, value: float | None, step: int, epoch: int) -> Verdict:
    """Record an epoch's monitored `value`; say whether it improved and whether to stop now."""
    if value is None or math.isnan(value):
        improved = False
    elif state.best_value is None:
        improved = True
    elif spec.maximize:
        improved = value > state.best_value + spec.min_delta
    else:
        improved = value < state.best_value - spec.min_delta
    if improved:
        state.best_value, state.best_step, state.best_epoch = value, step, epoch
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement += 1
    stop = state.epochs_without_improvement >= spec.patience
    if stop:
        state.stopped_at_step = step
    return Verdict(improved=improved, stop=stop)
