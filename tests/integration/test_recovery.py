"""Exact recovery: runs killed from outside end bit-identical to one never interrupted."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pyarrow.fs
import pytest
import torch
import yaml

from orchestrator.driver import launch
from orchestrator.errors import LaunchError
from orchestrator.job import spec
from orchestrator.train import checkpoint
from tests.conftest import regression_job

STEPS_PER_EPOCH = 28  # 7,200 training rows // 256


def recovery_job(data_dir: str, storage: str) -> dict:
    """Dropout, AdamW, a warmup-cosine schedule and clipping: everything a resume must restore.

    The hidden layers are wide enough that a step takes milliseconds, so a kill
    sent from the driver's progress callback lands within a step or two.
    """
    return regression_job(
        data_dir,
        storage,
        name="recovery",
        model={"kind": "mlp", "hidden": [512, 512], "dropout": 0.2},
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        schedule={"name": "cosine", "warmup_steps": 5},
        train={"epochs": 3, "batch_size": 256, "seed": 7, "grad_clip": 1.0, "log_every_n_steps": 5},
        checkpoint={"every_n_steps": 10, "keep": 2},
        failure={"max_failures": 4},
    )


class Recorder:
    """Collects what the workers post; keeps the latest row ids per (step, rank), as replays overwrite."""

    def __init__(self, on_record=None):
        self.pids: dict[int, int] = {}
        self.samples: dict[tuple[int, int], tuple[int, list[int]]] = {}
        self.on_record = on_record

    def __call__(self, record: dict) -> None:
        if record["kind"] == "worker":
            self.pids[record["rank"]] = record["pid"]
        elif record["kind"] == "samples":
            self.samples[(record["step"], record["rank"])] = (record["epoch"], record["ids"])
        if self.on_record:
            self.on_record(self, record)

    def ids_per_epoch(self) -> dict[int, list[int]]:
        epochs = defaultdict(list)
        for epoch, ids in self.samples.values():
            epochs[epoch] += ids
        return epochs

    def kill(self, rank: int) -> None:
        os.kill(self.pids[rank], signal.SIGKILL)


def load_weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(pathlib.Path(run_dir) / "model.pt", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


@pytest.fixture(scope="module", autouse=True)
def prompt_progress():
    """Relay the workers' records to the test every 20 ms, so kills follow them closely."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORCHESTRATOR_PROGRESS_POLL_INTERVAL_S", "0.02")
        yield


@pytest.fixture(scope="module")
def reference(regression_data, tmp_path_factory):
    """The uninterrupted run: its weights, per-step row ids and run folder."""
    data_dir, _ = regression_data
    storage = tmp_path_factory.mktemp("reference")
    recorder = Recorder()
    summary = launch.run(spec.from_dict(recovery_job(data_dir, str(storage))), on_record=recorder, audit_samples=True)
    assert summary.status == "finished" and summary.restarts == 0
    return load_weights(summary.run_dir), recorder, summary


def test_the_same_job_run_again_with_fresh_ends_with_bit_identical_weights(reference, regression_data):
    weights, _, summary = reference
    job = spec.from_dict(recovery_job(regression_data[0], str(pathlib.Path(summary.run_dir).parent)))
    again = launch.run(job, fresh=True)
    assert again.restarts == 0
    assert_identical(load_weights(again.run_dir), weights)


def test_a_finished_run_run_again_is_reported_as_already_complete(reference, regression_data):
    _, _, summary = reference
    seen = []
    job = spec.from_dict(recovery_job(regression_data[0], str(pathlib.Path(summary.run_dir).parent)))
    again = launch.run(job, on_record=seen.append)
    assert [r["kind"] for r in seen if r["kind"] != "phase"] == ["already_complete"]  # nothing trained
    assert again.status == "finished" and again.steps == summary.steps


def test_resuming_with_a_changed_training_setting_is_refused_naming_it(reference, regression_data, tmp_path):
    _, _, summary = reference
    shutil.copytree(summary.run_dir, tmp_path / "recovery")
    (tmp_path / "recovery" / "summary.json").unlink()  # as if the driver had died
    raw = recovery_job(regression_data[0], str(tmp_path))
    raw["optim"]["lr"] = 0.02
    with pytest.raises(LaunchError, match=r"optim.lr: 0.01 → 0.02.*--fresh"):
        launch.run(spec.from_dict(raw))


def test_workers_killed_twice_end_bit_identical_with_every_sample_seen_once(reference, regression_data, tmp_path):
    weights, reference_recorder, _ = reference
    kills: list[tuple[str, int]] = []

    def chaos(recorder: Recorder, record: dict) -> None:
        if not kills and record["kind"] == "log" and record["step"] == 15:
            recorder.kill(1)  # mid-epoch, 5 steps past the last checkpoint
            kills.append(("mid-epoch", record["step"]))
        elif len(kills) == 1 and record["kind"] == "checkpoint" and record["step"] >= 50:
            recorder.kill(0)  # right after a checkpoint is reported
            kills.append(("after checkpoint", record["step"]))

    recorder = Recorder(chaos)
    job = spec.from_dict(recovery_job(regression_data[0], str(tmp_path)))
    summary = launch.run(job, on_record=recorder, audit_samples=True)

    assert [k for k, _ in kills] == ["mid-epoch", "after checkpoint"]
    assert summary.status == "finished" and summary.restarts == 2
    # Nothing lost beyond the last reported checkpoint: the second restart resumes from it.
    assert summary.resumed_from_steps[-1] == kills[1][1]
    assert_identical(load_weights(summary.run_dir), weights)

    epochs = recorder.ids_per_epoch()
    assert sorted(epochs) == [0, 1, 2]
    for epoch, ids in epochs.items():
        assert len(ids) == len(set(ids)) == STEPS_PER_EPOCH * 256, f"epoch {epoch}"
        assert sorted(ids) == sorted(reference_recorder.ids_per_epoch()[epoch])

    fs = pyarrow.fs.LocalFileSystem()
    assert checkpoint.newest_first(fs, summary.run_dir) == ["step-00000084", "step-00000080"]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    reference, regression_data, tmp_path
):
    weights, _, _ = reference
    run_dir = tmp_path / "recovery"
    fs = pyarrow.fs.LocalFileSystem()
    corrupted: list[str] = []
    fallback: list[str] = []

    def kill_then_corrupt(recorder: Recorder, record: dict) -> None:
        if corrupted or record["kind"] != "checkpoint" or record["step"] < 40:
            return
        recorder.kill(1)
        time.sleep(0.5)  # let rank 0 finish an upload in flight: the group can write nothing more
        newest, previous = checkpoint.newest_first(fs, str(run_dir))[:2]
        with open(run_dir / newest / checkpoint.MODEL_FILE, "r+b") as f:
            f.truncate(100)
        half = run_dir / checkpoint.dir_name(int(newest.split("-")[1]) + 1)  # an upload cut short
        half.mkdir()
        (half / checkpoint.MODEL_FILE).write_bytes(b"partial")
        corrupted.extend([newest, half.name])
        fallback.append(previous)

    job = spec.from_dict(recovery_job(regression_data[0], str(tmp_path)))
    summary = launch.run(job, on_record=Recorder(kill_then_corrupt))

    assert summary.status == "finished" and summary.restarts == 1
    assert any(corrupted[0] in w and "corrupt" in w for w in summary.warnings), summary.warnings
    assert any(corrupted[1] in w and "incomplete" in w for w in summary.warnings), summary.warnings
    assert summary.resumed_from_steps == [int(fallback[0].split("-")[1])]
    assert_identical(load_weights(summary.run_dir), weights)
    assert checkpoint.newest_first(fs, summary.run_dir) == ["step-00000084", "step-00000080"]


def test_a_killed_driver_rerun_with_the_same_command_resumes_and_ends_bit_identical(
    reference, regression_data, tmp_path
):
    weights, _, _ = reference
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(recovery_job(regression_data[0], str(tmp_path / "runs"))))
    command = [sys.executable, "-m", "orchestrator", "run", str(job_file)]

    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in driver.stdout:
        if line.startswith("epoch 1/3"):
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming recovery from its checkpoint at step" in rerun.stdout
    assert_identical(load_weights(tmp_path / "runs" / "recovery"), weights)


def test_a_stopped_worker_is_treated_as_dead_after_the_hang_timeout_and_the_run_ends_bit_identical(
    reference, regression_data, tmp_path
):
    weights, _, _ = reference
    stopped: list[int] = []

    def freeze(recorder: Recorder, record: dict) -> None:
        if not stopped and record["kind"] == "checkpoint" and record["step"] >= 20:
            os.kill(recorder.pids[1], signal.SIGSTOP)  # alive but silent: no exit for Ray to notice
            stopped.append(recorder.pids[1])

    raw = recovery_job(regression_data[0], str(tmp_path))
    raw["failure"] = {"max_failures": 4, "hang_timeout_s": 5}
    try:
        summary = launch.run(spec.from_dict(raw), on_record=Recorder(freeze))
    finally:
        for pid in stopped:  # never leave a stopped process behind, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped and summary.status == "finished" and summary.restarts == 1
    meta = json.loads((tmp_path / "recovery" / "run.json").read_text())
    assert "rank 1" in meta["restarts"][0]["cause"]
    assert_identical(load_weights(summary.run_dir), weights)


def test_a_rank_stuck_while_alive_is_ended_by_its_watchdog_named_with_its_stack_and_the_run_ends_bit_identical(
    reference, regression_data, tmp_path
):
    weights, _, _ = reference
    raw = recovery_job(regression_data[0], str(tmp_path))
    # Rank 1's training thread blocks for good after step 22 (a rehearsal of a read that never returns):
    # the process still answers Ray's health checks, so only the watchdog can tell.
    raw["failure"] = {"max_failures": 4, "hang_timeout_s": 5, "inject": {"hang_at_step": 22, "rank": 1}}
    summary = launch.run(spec.from_dict(raw))
    assert summary.status == "finished" and summary.restarts == 1
    meta = json.loads((tmp_path / "recovery" / "run.json").read_text())
    assert "rank 1 made no progress for" in meta["restarts"][0]["cause"]
    stalled = [stall for stall in meta["stalls"] if stall["rank"] == 1]
    assert stalled and stalled[0]["doing"] == "reading the next batch" and stalled[0]["idle_s"] >= 5
    assert "maybe_fail" in stalled[0]["stack"]  # the stuck thread's own frames, not the watchdog's
    assert_identical(load_weights(summary.run_dir), weights)
