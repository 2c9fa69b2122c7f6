"""run.json tells the truth on every exit path: a refusal before training, Ctrl-C, a killed driver."""

from __future__ import annotations

import json
import pathlib

import pytest

from orchestrator.driver import launch
from orchestrator.errors import LaunchError
from orchestrator.job import spec
from orchestrator.results import reports
from tests.conftest import regression_job


def run_json(storage: pathlib.Path, name: str = "test-run") -> dict:
    return json.loads((storage / name / "run.json").read_text())


def test_a_job_refused_before_training_leaves_a_failed_run_with_its_cause(regression_data, tmp_path):
    job = spec.from_dict(regression_job(regression_data[0], str(tmp_path), scaling={"workers": 64}))
    with pytest.raises(LaunchError, match="cannot be placed"):
        launch.run(job)
    meta = run_json(tmp_path)
    assert meta["status"] == "failed" and "cannot be placed" in meta["error"] and meta["ended_at"]
    assert reports.open_run(str(tmp_path / "test-run")).status == "failed"


def test_ctrl_c_leaves_an_interrupted_run_that_the_same_command_resumes(regression_data, tmp_path):
    # A warmup longer than the run (84 steps) is accepted with a warning.
    job = spec.from_dict(regression_job(regression_data[0], str(tmp_path), schedule={"warmup_steps": 100}))

    warnings, phases = [], []

    def interrupt(record: dict) -> None:
        if record["kind"] == "warning":
            warnings.append(record["message"])
        if record["kind"] == "phase":  # what the driver says while it starts, before any worker reports
            phases.append(record["message"])
        if record["kind"] == "checkpoint":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch.run(job, on_record=interrupt)
    assert run_json(tmp_path)["status"] == "interrupted"
    assert reports.open_run(str(tmp_path / "test-run")).status == "interrupted"
    summary = launch.run(job)
    assert summary.status == "finished" and summary.resumed_from_steps
    assert any("schedule.warmup_steps (100) is not below the run's 84 steps" in w for w in warnings)
    assert phases[0].startswith("reading the Parquet footers at ") and phases[1].startswith("data: 3 file(s)")
    assert phases[-1] == "starting 2 Ray Train worker(s) (linear, 1 CPU(s) each) …"
    assert run_json(tmp_path)["status"] == "finished" and "error" not in run_json(tmp_path)


def test_a_corrupt_page_behind_a_valid_footer_fails_once_naming_the_file_and_row_group(regression_data, tmp_path):
    import shutil

    from orchestrator.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(regression_data[0], data)
    victim = sorted(data.glob("*.parquet"))[1]
    raw = bytearray(victim.read_bytes())
    raw[4:68] = b"\xff" * 64  # the first page header of the first column chunk; the footer stays valid
    victim.write_bytes(bytes(raw))
    job = spec.from_dict(regression_job(str(data), str(tmp_path / "runs")))
    with pytest.raises(DataError) as info:
        launch.run(job)
    assert victim.name in str(info.value) and "row group 0" in str(info.value)
    assert len(run_json(tmp_path / "runs")["restarts"]) == 0
