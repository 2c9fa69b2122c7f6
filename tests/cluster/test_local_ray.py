"""`orchestrator up` / `down`: a warm local Ray that runs join, stopped exactly by the command that started it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import yaml

from orchestrator.driver import local_ray
from tests.cluster.conftest import orchestrator
from tests.conftest import REPO, regression_job


def group_alive(pgid: int) -> bool:
    return local_ray._group_alive(pgid)


def test_up_starts_a_local_ray_that_runs_join_and_down_stops_exactly_it(regression_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["ORCHESTRATOR_STATE_DIR"] = str(tmp_path / "state")
    state = tmp_path / "state" / "local-ray.json"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(regression_job(regression_data[0], str(tmp_path / "runs"), train={
        "epochs": 1, "batch_size": 256, "seed": 0, "log_every_n_steps": 10})))

    def command(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(orchestrator(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    up = command("up", "--cpus", "2")
    head = json.loads(state.read_text()) if state.exists() else None
    try:
        assert up.returncode == 0, up.stderr
        assert head and "local Ray up at 127.0.0.1:" in up.stdout and group_alive(head["pid"])
        assert oct(os.stat(head["token_path"]).st_mode & 0o777) == "0o600"
        again = command("up")
        assert again.returncode != 0 and "already runs at" in again.stderr

        run = command("run", str(job))
        assert run.returncode == 0, run.stderr
        assert f"joining the local Ray started by `orchestrator up` at {head['gcs_address']}" in run.stdout
        assert "starting a local Ray" not in run.stdout
        summary = json.loads((tmp_path / "runs" / "test-run" / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["world_size"] == 2
        assert group_alive(head["pid"])  # the run left the head running, for the next one

        down = command("down")
        assert down.returncode == 0 and f"stopped the local Ray at {head['gcs_address']}" in down.stdout
        assert not group_alive(head["pid"]) and not state.exists() and not pathlib.Path(head["temp_dir"]).exists()
        assert "no local Ray started by `orchestrator up` is running" in command("down").stdout
    finally:
        if head and group_alive(head["pid"]):  # never leave a head behind, whatever failed
            local_ray._stop_group(head["pid"], timeout_s=10)


def test_a_state_file_whose_head_is_gone_is_forgotten_even_if_its_pid_was_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path))
    (tmp_path / "local-ray.json").write_text(json.dumps({
        "pid": os.getpid(), "gcs_address": "127.0.0.1:1", "dashboard_url": "http://127.0.0.1:2",
        "token_path": str(tmp_path / "token"), "temp_dir": str(tmp_path / "nowhere"), "cpus": 2, "started_at": 0.0}))
    assert local_ray.running() is None  # the pid runs (this test) but is not that head's `ray start`
    assert not (tmp_path / "local-ray.json").exists()
