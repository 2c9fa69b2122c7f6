"""The command line as a user meets it: exit codes, one-paragraph errors, shipped jobs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from orchestrator import cli
from orchestrator.job import spec
from tests.conftest import REPO, regression_job

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def orchestrator(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("job_file", JOBS, ids=[p.name for p in JOBS])
def test_every_shipped_job_file_is_valid(job_file):
    job = spec.load(job_file)
    assert job.name and job.data.path


def test_validate_checks_spec_and_footers_without_starting_ray(tmp_path, regression_data):
    data_dir, _ = regression_data
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(regression_job(data_dir, str(tmp_path / "runs"))))
    result = orchestrator("validate", str(job_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "job test-run: OK" in result.stdout
    assert "3 file(s)" in result.stdout and "8,000 rows" in result.stdout


def test_a_bad_job_file_exits_2_with_every_problem_and_no_traceback(tmp_path, regression_data):
    data_dir, _ = regression_data
    raw = regression_job(data_dir, str(tmp_path / "runs"))
    raw["optim"] = {"name": "adamw", "lr_shedule": 3, "lr": -1}
    raw["train"]["epochs"] = "five"
    job_file = tmp_path / "bad.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    result = orchestrator("run", str(job_file), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "optim.lr_shedule: unknown key (did you mean 'lr'?" in result.stderr
    assert "optim.lr: must be > 0" in result.stderr
    assert "train.epochs: expected an integer, got 'five'" in result.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"path": "/nonexistent/dir", "label": "y"}}, "/nonexistent/dir"),
        ({"data": {"path": "DATA", "label": "target"}}, "data.label: no column 'target'"),
    ],
    ids=["missing path", "missing label column"],
)
def test_bad_data_exits_2_naming_the_path_or_column(tmp_path, regression_data, change, message):
    data_dir, _ = regression_data
    raw = regression_job(data_dir, str(tmp_path / "runs"))
    raw.update({k: {kk: (data_dir if vv == "DATA" else vv) for kk, vv in v.items()} for k, v in change.items()})
    job_file = tmp_path / "bad.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    result = orchestrator("run", str(job_file), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_set_overrides_reach_the_job(tmp_path, regression_data):
    data_dir, _ = regression_data
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(regression_job(data_dir, str(tmp_path / "runs"))))
    result = orchestrator("validate", str(job_file), "--set", "train.batch_size=1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "global batches of 1000" in result.stdout


def test_an_address_where_no_cluster_answers_fails_at_once_naming_it(tmp_path, regression_data):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(regression_job(regression_data[0], str(tmp_path / "runs"))))
    result = orchestrator("run", str(job_file), "--address", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port} (from --address)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bare_orchestrator_prints_the_full_help_with_every_command_and_exits_2(capsys):
    assert cli.main([]) == 2

    err = capsys.readouterr().err
    assert err.startswith("usage: orchestrator")
    for command in ("run", "validate", "submit", "runs", "report", "compare", "predict", "evaluate"):
        assert f"\n    {command} " in err


def test_validate_takes_workers_storage_and_name_as_run_does(tmp_path, regression_data, capsys):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(regression_job(regression_data[0], str(tmp_path / "runs"))))
    elsewhere = tmp_path / "elsewhere"

    options = ["--workers", "1,3", "--storage", str(elsewhere), "--name", "other"]
    assert cli.main(["validate", str(job_file), *options]) == 0
    assert f"run folder  {elsewhere / 'other'}" in capsys.readouterr().out

    assert cli.main(["validate", str(job_file), "--workers", "0"]) == 2
    assert "--workers '0': scaling.workers: " in capsys.readouterr().err


@pytest.mark.parametrize("option, problem", [
    (["--set", "optim.lrr=0.1"], "--set 'optim.lrr=0.1': optim.lrr: unknown key (did you mean 'lr'?"),
    (["--set", "train.epochs=five"], "--set 'train.epochs=five': train.epochs: expected an integer, got 'five'"),
    (["--name", "my run"], "--name 'my run': name: "),
], ids=["unknown key", "bad value", "bad --name"])
def test_a_mistake_in_an_option_names_the_option_not_the_job_file(tmp_path, regression_data, capsys, option, problem):
    raw = regression_job(regression_data[0], str(tmp_path / "runs"))
    raw["train"]["batch_size"] = 0  # the job file's own mistake stays the job file's
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(raw))

    assert cli.main(["validate", str(job_file), *option]) == 2

    err = capsys.readouterr().err
    assert f"  - {problem}" in err
    assert "  - train.batch_size: must be >= 1" in err


def test_validate_of_a_job_whose_data_is_generated_writes_nothing_and_checks_a_copy(tmp_path, capsys, monkeypatch):
    raw = regression_job("data/gen", "runs")
    raw["data"]["generate"] = {"kind": "regression", "rows": 3000, "features": 3, "files": 2}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)

    assert cli.main(["validate", "job.yaml"]) == 0

    out = capsys.readouterr().out
    assert f"no data at {tmp_path / 'data' / 'gen'} yet; the first run writes 3,000 regression rows there" in out
    assert "job test-run: OK" in out and "2 file(s)" in out and "3,000 rows" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_validate_warns_of_a_warmup_longer_than_the_run_and_describes_a_tree_job(tmp_path, regression_data, capsys):
    raw = regression_job(regression_data[0], str(tmp_path / "runs"), schedule={"warmup_steps": 1000})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", str(job_file)]) == 0
    assert "warning     schedule.warmup_steps (1000) is not below the run's" in capsys.readouterr().out

    trees = {key: value for key, value in raw.items() if key not in ("optim", "schedule", "train")}
    job_file.write_text(yaml.safe_dump({**trees, "model": {"kind": "xgboost", "rounds": 50}}))
    assert cli.main(["validate", str(job_file)]) == 0
    out = capsys.readouterr().out
    assert "training    50 xgboost boosting rounds" in out and "global batches" not in out
