"""The kinds of progress record, declared once.

Records are plain dicts with a "kind" (one of `Kind`, a `str` enum, so a
record still compares and serializes as its plain string). Workers post them
to the `RunBoard`; the driver adds RESUME and ALREADY_COMPLETE itself.
"""

from __future__ import annotations

import enum


class Kind(str, enum.Enum):
    """What a progress record reports, and the fields it carries."""

    # a worker group began (world_size, resumed_step or None, null_labels: training rows without a label,
    # preprocessing_fit_s: seconds the statistics pass took, None when the group loaded them; missing_values:
    # {feature: training values it was missing (null, NaN, ±inf)}, for those that had any; entered_at:
    # when rank 0's train function began, after its process started and imported everything)
    START = "start"
    # the driver is about to do something slow before training (message; phase: data | ray | workers); not on the board
    PHASE = "phase"
    WORKER = "worker"  # a rank is running (rank, pid)
    SAMPLES = "samples"  # with audit_samples: the row ids a rank trains on at a step (rank, step, epoch, ids)
    FIRST_STEP = "first_step"  # the first optimizer step of a group finished
    LOG = "log"  # periodic train metrics (step, epoch, loss, lr, samples_per_s, rows)
    EPOCH = "epoch"  # an epoch ended (train and validation metrics, rows, early-stopping state)
    CHECKPOINT = "checkpoint"  # a checkpoint is complete in storage (step, path: its directory name)
    BEST = "best"  # early stopping's best checkpoint was copied outside retention (step, path)
    STOPPED_EARLY = "stopped_early"  # early stopping ended the run (best_value, best_step, best_epoch, ...)
    WARNING = "warning"  # something the user should know that did not stop training (message)
    FATAL = "fatal"  # training must stop and not be retried (message; error_class: the OrchestratorError to raise)
    FAILURE = "failure"  # the controller saw a worker group fail (causes: rank → one line)
    # a rank's watchdog found its training thread stuck and is ending the process (rank, doing, step,
    # idle_s: seconds since it last moved on, last_beat_at: when, stack: every Python thread's stack)
    STALL = "stall"
    # a rank finished (rank, step, weights_sha256: replicas must agree; networks add validation_s and
    # checkpoint_s, the seconds its training thread spent on each; tree models add peak_rss_mb and
    # rss_before_data_mb, the worker's resident memory at its peak and before it read any data)
    FINAL = "final"
    RESUME = "resume"  # the driver continues an earlier run (checkpoint, step)
    # the driver wrote a finished run's summary.json (summary: the RunSummary), just before stopping an
    # embedded Ray; to the caller's on_record only
    SUMMARY = "summary"
    ALREADY_COMPLETE = "already_complete"  # the driver found the run finished (step, run_dir)

    def __str__(self) -> str:
        return self.value
