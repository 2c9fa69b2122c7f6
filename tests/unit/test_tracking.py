"""Pure tracking pieces: the stopping rule, the fit reading, progress lines, the relay's dedup."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

from orchestrator.job import spec
from orchestrator.progress import ProgressPrinter
from orchestrator.track.metadata import (
    record_in_metadata,
    restart_cause,
    run_metadata,
    status,
)
from orchestrator.track.relay import Relay
from orchestrator.track.summary import fit_diagnosis, phases
from orchestrator.train import stopping
from tests.conftest import regression_job


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    rule = spec.EarlyStoppingSpec(metric="val_loss", patience=2, min_delta=0.01)
    state = stopping.StoppingState()
    verdicts = [stopping.update(rule, state, value, step=10 * i, epoch=i)
                for i, value in enumerate([1.0, 0.5, 0.495, 0.6])]
    assert [v.improved for v in verdicts] == [True, True, False, False]
    assert [v.stop for v in verdicts] == [False, False, False, True]
    assert (state.best_value, state.best_epoch, state.stopped_at_step) == (0.5, 1, 30)


def test_accuracy_is_maximized_unless_told_otherwise():
    assert spec.EarlyStoppingSpec(metric="val_accuracy").maximize
    assert not spec.EarlyStoppingSpec(metric="val_loss").maximize
    assert not spec.EarlyStoppingSpec(metric="val_accuracy", mode="min").maximize


def epoch(i, train, val):
    return {"kind": "epoch", "epoch": i, "train": {"loss": train}, "validation": {"loss": val}}


def test_the_fit_reading_names_overfitting_and_where_validation_stopped_improving():
    fit = fit_diagnosis([epoch(0, 1.0, 1.1), epoch(1, 0.5, 0.6), epoch(2, 0.3, 0.7), epoch(3, 0.2, 0.8)])
    assert fit["best_validation_epoch"] == 2
    assert fit["reading"].startswith("overfitting") and abs(fit["gap"] - 0.6) < 1e-9
    still = fit_diagnosis([epoch(0, 1.0, 1.1), epoch(1, 0.5, 0.6)])
    assert still["reading"].startswith("still improving")


def printed(records, job=None) -> str:
    out = io.StringIO()
    printer = ProgressPrinter(job or spec.from_dict(regression_job("d", "s")), out=out)
    for record in records:
        printer(record)
    return out.getvalue()


def test_a_restart_is_one_line_naming_the_cause_and_where_training_resumes():
    text = printed([
        {"kind": "start", "world_size": 2, "resumed_step": None},
        {"kind": "failure", "causes": {1: "ActorDiedError: the actor died"}},
        {"kind": "start", "world_size": 2, "resumed_step": 400},
    ])
    assert text.strip() == "rank 1 failed (ActorDiedError: the actor died); resuming from step 400 with 2 worker(s)"


def test_a_restart_after_stalls_names_the_rank_that_stopped_first_in_the_line_and_in_run_json():
    stalls = [  # rank 0 waited in the gradient all-reduce for rank 1, stuck in a read a little earlier
        {"kind": "stall", "rank": 0, "step": 23, "doing": "training a step", "idle_s": 5.2,
         "last_beat_at": 100.004, "stack": "...", "time": 105.3},
        {"kind": "stall", "rank": 1, "step": 23, "doing": "reading the next batch", "idle_s": 5.0,
         "last_beat_at": 100.001, "stack": "...", "time": 105.4},
    ]
    records = [{"kind": "start", "world_size": 2, "resumed_step": None, "time": 90.0}, *stalls,
               {"kind": "failure", "causes": {0: "ActorDiedError: exit code 75", 1: "ActorDiedError: exit code 75"}},
               {"kind": "start", "world_size": 2, "resumed_step": 20, "time": 110.0}]
    text = printed(records)
    assert text.startswith("rank 1 made no progress for 5 s while reading the next batch (step 23; its threads' "
                           "stacks are in run.json); rank 0 made no progress for 5.2 s while training a step")
    assert text.strip().endswith("resuming from step 20 with 2 worker(s)")
    meta = run_metadata({"name": "x"}, None)
    pending: dict = {}
    for record in records:
        record_in_metadata(meta, record, pending)
    assert meta["restarts"][0]["cause"] == text.strip().split("; resuming")[0]
    assert [stall["rank"] for stall in meta["stalls"]] == [0, 1] and not pending
    # A rank that stopped answering (SIGSTOP) cannot say anything itself: the controller's cause leads.
    frozen = restart_cause({1: "WorkerHealthCheckFailedError: no answer for 5 s"}, stalls[:1])
    assert frozen.startswith("rank 1 failed (WorkerHealthCheckFailedError: no answer for 5 s); rank 0 made no")


def test_the_fitted_preprocessing_is_announced_with_the_missing_values_it_filled():
    text = printed([{"kind": "start", "world_size": 2, "resumed_step": None, "preprocessing_fit_s": 0.25,
                     "missing_values": {"income": 931, "city": 1_464}}])
    assert text.splitlines()[1] == ("missing values in the training rows (null, NaN or inf; filled as each "
                                    "column's kind says): income 931, city 1,464")


def test_epochs_print_one_line_each_with_train_and_validation_metrics():
    text = printed([{"kind": "epoch", "epoch": 0, "complete": True, "step": 28, "train": {"loss": 0.5},
                     "validation": {"loss": 0.6, "r2": 0.9}, "samples_per_s": 12345.0}])
    assert text.strip() == "epoch 1/3  step 28  train loss 0.5  val loss 0.6  val r2 0.9  12,345 samples/s"


class Collecting:
    def __init__(self):
        self.rows = []

    def log(self, rows):
        self.rows += rows

    def close(self):
        pass


class Broken:
    def log(self, rows):
        raise ConnectionError("tracker unreachable")

    def close(self):
        pass


def test_the_relay_never_lets_a_metric_step_rewind_and_survives_a_broken_exporter():
    meta = run_metadata({"name": "x"}, None)
    collecting, seen = Collecting(), []
    relay = Relay(meta, [collecting, Broken()], seen.append)
    row = lambda step: {"step": step, "epoch": 0, "name": "train/loss", "value": 1.0 / step, "time": 0.0}  # noqa: E731
    relay({"kind": "log", "rows": [row(1), row(2)]})
    relay({"kind": "log", "rows": [row(2), row(3)]})  # step 2 replayed after a restart
    assert [r["step"] for r in collecting.rows] == [1, 2, 3]
    assert any(r["kind"] == "warning" and "tracker unreachable" in r["message"] for r in seen)


def test_a_running_run_whose_driver_is_gone_reads_as_interrupted():
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = socket.gethostname()
    assert status({"status": "running", "driver": {"host": here, "pid": int(gone.stdout)}}) == "interrupted"
    assert status({"status": "running", "driver": {"host": here, "pid": os.getpid()}}) == "running"
    assert status({"status": "running", "driver": {"host": "elsewhere", "pid": int(gone.stdout)}}) == "running"
    assert status({"status": "finished", "driver": {"host": here, "pid": int(gone.stdout)}}) == "finished"


def test_the_wall_time_splits_into_phases_from_the_driver_and_worker_timestamps():
    records = [
        {"kind": "phase", "phase": "data", "message": "reading footers", "time": 100.0},
        {"kind": "phase", "phase": "ray", "message": "starting a local Ray", "time": 100.5},
        {"kind": "phase", "phase": "workers", "message": "starting workers", "time": 103.0},
        {"kind": "start", "world_size": 2, "resumed_step": None, "entered_at": 108.0, "time": 109.0},
        {"kind": "first_step", "time": 109.25},
        {"kind": "final", "rank": 1, "step": 40, "weights_sha256": "a", "validation_s": 0.5, "checkpoint_s": 1.0,
         "time": 119.0},
        {"kind": "final", "rank": 0, "step": 40, "weights_sha256": "a", "validation_s": 0.75, "checkpoint_s": 1.25,
         "time": 119.25},
    ]
    found = phases(records, started_at=99.75, ended_at=120.0)
    assert found == {"prepare": 0.75, "ray": 2.5, "worker_group": 5.0, "setup": 1.0, "first_step": 0.25,
                     "training": 8.0, "validation": 0.75, "checkpointing": 1.25, "shutdown": 0.75}
    assert sum(found.values()) == 120.0 - 99.75  # every second of the session is in exactly one phase
    joined = [r for r in records if r.get("phase") != "ray"]  # a cluster joined before: no Ray phase
    assert "ray" not in phases(joined, 99.75, 120.0) and phases(joined, 99.75, 120.0)["prepare"] == 3.25
    assert phases([r for r in records if r["kind"] == "phase"], 99.75, 120.0) is None
