"""Secrets never leak: a canary Ray token and a canary storage credential appear nowhere in the output,
the logs, run.json, summary.json or the checkpoints of a run."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import yaml

from tests.conftest import REPO, regression_job

CANARY_TOKEN = "canary-token-5f3a9c0e"
CANARY_SECRET = "canary-secret-8b2d17aa"


def test_a_canary_token_and_credential_appear_nowhere_in_a_runs_output_or_folder(regression_data, tmp_path):
    job_file = tmp_path / "job.yaml"
    raw = regression_job(regression_data[0], str(tmp_path / "runs"), train={"epochs": 1, "batch_size": 256})
    job_file.write_text(yaml.safe_dump(raw))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # an embedded Ray of its own
    env.update(RAY_AUTH_TOKEN=CANARY_TOKEN, AWS_SECRET_ACCESS_KEY=CANARY_SECRET, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(job_file), "-v"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert CANARY_TOKEN not in output and CANARY_SECRET not in output
    for path in pathlib.Path(tmp_path / "runs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CANARY_TOKEN.encode() not in data and CANARY_SECRET.encode() not in data, path
