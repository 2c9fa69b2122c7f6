"""When to checkpoint: a pure decision, separate from the loop that acts on it.

Owns the rule that turns `checkpoint.every_n_steps`, `checkpoint.every_n_seconds`,
epoch ends and preemption notices into "checkpoint now" or "not yet". It is
plain arithmetic on values every rank holds identically (steps, and timer
figures that reached every rank in the same all-reduce), so every rank takes
the same decision at the same step and no rank waits alone in
`ray.train.report`. Saving and reporting the checkpoint is the loop's.

The timer is honoured at a step, not at a log point: at each log point the
ranks agree on how long rank 0 has gone since the last checkpoint and how
long a step takes, and from that the policy names the step at which the
timer falls due (`timer_due_step`). A wrong estimate moves a time-based
checkpoint by a few steps, never the run's result: checkpoints do not change
the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.job.spec import CheckpointSpec

EPOCH_END = "epoch end"
PREEMPTION = "preemption"
EVERY_N_STEPS = "every_n_steps"
EVERY_N_SECONDS = "every_n_seconds"


@dataclass(frozen=True)
class Moment:
    """Where a rank stands after an optimizer step, as every rank sees it."""

    step: int  # optimizer steps taken
    last_checkpoint_step: int  # the step of the newest checkpoint (0: none yet)
    epoch_end: bool = False  # the epoch (or the run) ends at this step; validation is done
    preempted: bool = False  # Ray Train announced that a node of the group is about to go
    timer_due_step: int | None = None  # the step at which every_n_seconds falls due (None: no timer)
    last: bool = False  # the run ends at this step (its last step, or early stopping stops it)
    seconds_since_checkpoint: float = 0.0  # rank 0's, as every rank received it (epoch ends only)


def checkpoint_reason(spec: CheckpointSpec, moment: Moment) -> str | None:
    """Why a checkpoint is due at `moment` (EPOCH_END, PREEMPTION, EVERY_N_STEPS, EVERY_N_SECONDS), or None.

    Never twice at one step. An epoch's end checkpoints when the run ends there
    or the newest checkpoint is at least `epoch_min_interval_s` old; a shorter
    epoch's end is coalesced into a later checkpoint (a resume replays it
    exactly), unless a step or timer checkpoint falls due there: the epoch end
    takes those, as its state holds the epoch's metrics and early-stopping
    verdict.
    """
    if moment.step == moment.last_checkpoint_step:
        return None
    if moment.epoch_end and (moment.last or moment.seconds_since_checkpoint >= spec.epoch_min_interval_s):
        return EPOCH_END
    if moment.preempted:
        return PREEMPTION
    every = spec.every_n_steps
    if every and moment.step // every > moment.last_checkpoint_step // every:
        return EVERY_N_STEPS
    if moment.timer_due_step is not None and moment.step >= moment.timer_due_step:
        return EVERY_N_SECONDS
    return None


def timer_due_step(spec: CheckpointSpec, step: int, seconds_since_checkpoint: float,
                   seconds_per_step: float) -> int | None:
    """The step at which `every_n_seconds` falls due, projected from `step` at the current pace.

    None without a timer or before the pace is known (seconds_per_step <= 0).
    At least `step`, so a timer already due checkpoints at once.
    """
    if not spec.every_n_seconds or seconds_per_step <= 0:
        return None
    left = spec.every_n_seconds - seconds_since_checkpoint
    return step + max(0, math.ceil(left / seconds_per_step))
