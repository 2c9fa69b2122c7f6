"""A job sent to a running cluster: Ray's `ray job submit`, and `orchestrator submit|status|logs|stop`.

One head, started with `ray start --head` (2 CPUs, dashboard on 127.0.0.1,
free ports, its own token), serves every test in this module.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import uuid

import pytest

from orchestrator.driver.cluster import free_port
from orchestrator.driver.submit import EXCLUDES
from tests.cluster.conftest import QUICK, RayHead, orchestrator
from tests.conftest import REPO

# The Jobs API (dashboard) and its client come with ray[default].
pytest.importorskip("aiohttp", reason="needs ray[default] for the Ray Jobs API")


@pytest.fixture(scope="module")
def head():
    head = RayHead(num_cpus=2)
    yield head
    head.stop()


def _finished_run(storage: str, name: str = "quickstart") -> dict:
    run = pathlib.Path(storage, name)
    assert (run / "model.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    return summary


def test_ray_job_submit_runs_the_quickstart_on_the_cluster_it_was_sent_to(head):
    storage, job_id = f"{head.tmp}/via-ray-job-submit", f"quickstart-{uuid.uuid4().hex[:8]}"
    workers_before = len(head.actors("RayTrainWorker"))
    result = head.run(
        "ray", "job", "submit", "--address", head.url, "--submission-id", job_id, "--working-dir", ".",
        "--runtime-env-json", json.dumps({"excludes": list(EXCLUDES)}), "--",
        "orchestrator", "run", "jobs/quickstart.yaml", "--workers", "2", "--storage", storage, *QUICK,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert head.get(f"/api/jobs/{job_id}")["status"] == "SUCCEEDED"
    assert _finished_run(storage)["world_size"] == 2
    # The job's `orchestrator run` joined this cluster (RAY_ADDRESS from Ray) instead of starting its own.
    assert len(head.actors("RayTrainWorker")) == workers_before + 2


def test_orchestrator_submit_follows_the_job_and_exits_0_when_it_succeeds(head):
    storage = f"{head.tmp}/via-orchestrator-submit"
    result = head.run(*orchestrator("submit", "jobs/quickstart.yaml", "--address", head.url, "--workers", "2",
                                    "--storage", storage, *QUICK))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 2/2" in result.stdout  # the run's own progress, followed live
    assert _finished_run(storage)["world_size"] == 2


def test_a_bad_job_file_fails_the_job_with_its_spec_error_in_orchestrator_logs(head, tmp_path):
    project, job_id = tmp_path / "project", f"bad-{uuid.uuid4().hex[:8]}"
    project.mkdir()
    bad = (REPO / "jobs/quickstart.yaml").read_text().replace("lr: 0.05", "lr_shedule: 0.05")
    (project / "bad.yaml").write_text(bad)
    result = head.run("ray", "job", "submit", "--address", head.url, "--submission-id", job_id,
                      "--working-dir", str(project), "--", "python", "-m", "orchestrator", "run", "bad.yaml")
    assert result.returncode != 0

    status = head.run(*orchestrator("status", job_id, "--address", head.url))
    assert status.returncode == 0 and f"{job_id}: FAILED" in status.stdout
    logs = head.run(*orchestrator("logs", job_id, "--address", head.url))
    assert "error: Invalid job in bad.yaml: optim.lr_shedule: unknown key (did you mean 'lr'?" in logs.stdout


def test_more_workers_than_the_cluster_has_fail_the_job_at_once_saying_so(head):
    result = head.run(*orchestrator("submit", "jobs/quickstart.yaml", "--address", head.url, "--workers", "3",
                                    "--storage", f"{head.tmp}/too-many", *QUICK), timeout_s=120)
    assert result.returncode == 2
    assert "cannot be placed: it needs 3 CPUs (scaling.workers 3 × scaling.cpus_per_worker 1) but the cluster has 2" \
        in result.stderr


def test_a_wrong_token_is_refused_with_how_to_give_the_right_one_and_is_never_printed(head):
    token = "not-this-clusters-token-" + uuid.uuid4().hex
    result = head.run(*orchestrator("status", "any-job", "--address", head.url), RAY_AUTH_TOKEN=token)
    assert result.returncode == 2
    assert "refused the token this machine sent" in result.stderr and "RAY_AUTH_TOKEN" in result.stderr
    assert token not in result.stdout + result.stderr


def test_a_job_still_pending_after_the_timeout_is_stopped_with_the_reason(head):
    # A driver asking for a resource no node has stays PENDING for good.
    script = (
        "import sys\n"
        "from orchestrator.driver import submit\n"
        "from orchestrator.errors import LaunchError\n"
        "client = submit.connect(sys.argv[1])\n"
        "job = client.submit_job(entrypoint='true', entrypoint_resources={'no_such_resource': 1})\n"
        "print(job, flush=True)\n"
        "try:\n"
        "    submit.follow(client, job, sys.argv[1], out=print)\n"
        "except LaunchError as error:\n"
        "    print(error)\n"
    )
    result = head.run(sys.executable, "-c", script, head.url, ORCHESTRATOR_SUBMIT_PENDING_TIMEOUT_S="2",
                      timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert "was still PENDING after 2 s (ORCHESTRATOR_SUBMIT_PENDING_TIMEOUT_S), so it was told to stop" \
        in result.stdout
    assert "It may be waiting for resources" in result.stdout  # Ray's own word on why


def test_submit_names_the_address_at_once_when_no_cluster_answers_there():
    address = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(orchestrator("submit", "jobs/quickstart.yaml", "--address", address), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"No Ray cluster answers at {address}" in result.stderr


def test_submit_refuses_a_bad_job_before_contacting_any_cluster():
    result = subprocess.run(orchestrator("submit", "jobs/quickstart.yaml", "--address", "http://127.0.0.1:1",
                                         "--set", "train.epochs=five"),
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "train.epochs" in result.stderr and "No Ray cluster" not in result.stderr
