"""The checkpoint policy, as plain arithmetic: no Ray, no clock."""

from __future__ import annotations

from orchestrator.job.spec import CheckpointSpec
from orchestrator.train import policy
from orchestrator.train.policy import Moment, checkpoint_reason, timer_due_step


def reasons(spec: CheckpointSpec, steps: range, timer_due_step_=None, seconds_per_step=0.0,
            **moment) -> dict[int, str]:
    """Step → reason over `steps`, checkpointing whenever the policy says so, as the loop does:
    after each checkpoint the timer is projected afresh from the pace."""
    taken, last, due = {}, 0, timer_due_step_
    for step in steps:
        reason = checkpoint_reason(spec, Moment(step=step, last_checkpoint_step=last, timer_due_step=due, **moment))
        if reason:
            taken[step], last = reason, step
            due = timer_due_step(spec, step, 0.0, seconds_per_step)
    return taken


def test_every_n_steps_checkpoints_on_each_multiple():
    assert reasons(CheckpointSpec(every_n_steps=3), range(1, 10)) == {
        3: policy.EVERY_N_STEPS, 6: policy.EVERY_N_STEPS, 9: policy.EVERY_N_STEPS}


def test_no_step_checkpoints_when_every_n_steps_is_off():
    assert reasons(CheckpointSpec(every_n_steps=None), range(1, 50)) == {}


def test_an_epoch_end_checkpoints_once_the_newest_checkpoint_is_old_enough_unless_this_step_has_one():
    spec = CheckpointSpec(every_n_steps=None, epoch_min_interval_s=10)
    old = Moment(step=7, last_checkpoint_step=3, epoch_end=True, seconds_since_checkpoint=10.0)
    assert checkpoint_reason(spec, old) == policy.EPOCH_END
    assert checkpoint_reason(spec, Moment(step=7, last_checkpoint_step=7, epoch_end=True,
                                          seconds_since_checkpoint=10.0)) is None
    assert checkpoint_reason(CheckpointSpec(epoch_min_interval_s=0), Moment(step=7, last_checkpoint_step=3,
                                                                            epoch_end=True)) == policy.EPOCH_END


def test_short_epochs_share_a_checkpoint_but_the_last_step_and_due_step_checkpoints_are_never_skipped():
    spec = CheckpointSpec(every_n_steps=20, epoch_min_interval_s=10)

    def at(step: int, **moment) -> str | None:
        return checkpoint_reason(spec, Moment(step=step, last_checkpoint_step=10, epoch_end=True,
                                              seconds_since_checkpoint=0.4, **moment))
    assert at(14) is None  # a sub-second epoch: coalesced
    assert at(14, last=True) == policy.EPOCH_END  # the run ends here (its last step, or an early stop)
    assert at(20) == policy.EVERY_N_STEPS  # a step checkpoint due at the epoch's end is taken there
    assert at(14, preempted=True) == policy.PREEMPTION
    assert at(14, timer_due_step=12) == policy.EVERY_N_SECONDS


def test_a_preemption_notice_checkpoints_at_once():
    spec = CheckpointSpec(every_n_steps=100)
    assert checkpoint_reason(spec, Moment(step=5, last_checkpoint_step=0, preempted=True)) == policy.PREEMPTION


def test_the_timer_falls_due_at_its_projected_step_not_at_a_log_point():
    spec = CheckpointSpec(every_n_steps=None, every_n_seconds=1.0)
    # 0.25 s since the last checkpoint at step 10, 0.1 s a step: due 8 steps later.
    due = timer_due_step(spec, step=10, seconds_since_checkpoint=0.25, seconds_per_step=0.1)
    assert due == 18
    # then every 10 steps at 0.1 s a step
    assert reasons(spec, range(11, 40), timer_due_step_=due, seconds_per_step=0.1) == {
        18: policy.EVERY_N_SECONDS, 28: policy.EVERY_N_SECONDS, 38: policy.EVERY_N_SECONDS}


def test_a_timer_already_overdue_is_due_now():
    spec = CheckpointSpec(every_n_seconds=1.0)
    assert timer_due_step(spec, step=40, seconds_since_checkpoint=5.0, seconds_per_step=0.1) == 40


def test_no_timer_without_every_n_seconds_or_before_the_pace_is_known():
    assert timer_due_step(CheckpointSpec(every_n_seconds=None), 10, 100.0, 0.1) is None
    assert timer_due_step(CheckpointSpec(every_n_seconds=1.0), 10, 0.5, 0.0) is None


def test_steps_count_from_the_last_checkpoint_whatever_took_it():
    spec = CheckpointSpec(every_n_steps=10)
    # an epoch-end checkpoint at step 7 does not move the step schedule: the next is at 10
    assert checkpoint_reason(spec, Moment(step=10, last_checkpoint_step=7)) == policy.EVERY_N_STEPS
    assert checkpoint_reason(spec, Moment(step=9, last_checkpoint_step=7)) is None
