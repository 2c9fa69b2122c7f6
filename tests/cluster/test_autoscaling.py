"""Jobs on a local autoscaling cluster: Ray's fake multi-node provider with cluster-local.yaml.

The head has 0 CPUs and each worker node 1 CPU, at most 2 of them, so every
training worker needs a node the autoscaler starts. All "nodes" run on this
machine, so a plain path outside the job's working directory is shared.
"""

from __future__ import annotations

import glob
import json
import pathlib
import time

import pytest
import yaml

from tests.cluster.conftest import QUICK, RayHead, orchestrator
from tests.conftest import REPO

# The Jobs API (dashboard) and its client come with ray[default].
pytest.importorskip("aiohttp", reason="needs ray[default] for the Ray Jobs API")

# Ray notices a lost node after 3 missed 1 s health checks (default: 5 × 3 s).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def autoscaling():
    config = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    head = RayHead(num_cpus=0, autoscaling_config=config, head_env=FAST_NODE_DEATH)
    yield head
    head.stop()


def _cpu_nodes(head: RayHead, state: str | None = None) -> list[dict]:
    return [n for n in head.nodes() if n["resources_total"].get("CPU") and state in (None, n["state"])]


def _shared_data(head: RayHead, name: str) -> list[str]:
    # Outside the job's working directory, of which each node unpacks its own copy.
    return ["--set", f"data.path={head.tmp}/{name}/*.parquet"]


def _in_place(**env_vars: str) -> list[str]:
    # The "nodes" share this machine's disk: use the project where it is rather than
    # have every node unpack the same upload into the one directory they share.
    return ["--runtime-env-json", json.dumps({"working_dir": f"local://{REPO}", "env_vars": env_vars})]


def _logs(head: RayHead, job_id: str) -> str:
    return head.run(*orchestrator("logs", job_id, "--address", head.url)).stdout[-4000:]


def test_a_job_larger_than_the_autoscaler_can_ever_make_fails_at_once_saying_so(autoscaling):
    result = autoscaling.run(*orchestrator(
        "submit", "jobs/quickstart.yaml", "--address", autoscaling.url, "--workers", "3",
        "--storage", f"{autoscaling.tmp}/runs", *QUICK, *_shared_data(autoscaling, "data")), timeout_s=120)
    assert result.returncode == 2
    assert "needs 3 CPUs (scaling.workers 3 × scaling.cpus_per_worker 1) but the cluster can grow to at most 2" \
        in result.stderr
    assert "limits from the autoscaler config" in result.stderr


def test_a_two_worker_job_makes_the_autoscaler_start_two_nodes_and_completes(autoscaling):
    assert _cpu_nodes(autoscaling, "ALIVE") == []
    storage = f"{autoscaling.tmp}/runs"
    result = autoscaling.run(*orchestrator(
        "submit", "jobs/quickstart.yaml", "--address", autoscaling.url, "--workers", "2", "--storage", storage,
        *QUICK, *_shared_data(autoscaling, "data"), *_in_place()))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(pathlib.Path(storage, "quickstart", "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert len(_cpu_nodes(autoscaling)) >= 2


def test_an_elastic_job_carries_on_with_one_worker_when_a_node_goes_away(autoscaling):
    storage = f"{autoscaling.tmp}/runs"
    result = autoscaling.run(*orchestrator(
        "submit", "jobs/quickstart.yaml", "--address", autoscaling.url, "--workers", "1,2", "--name", "elastic",
        "--storage", storage, "--no-wait", *_shared_data(autoscaling, "elastic-data"),
        "--set", "data.generate.rows=20000", "--set", "train.epochs=12", "--set", "train.batch_size=256",
        "--set", "checkpoint.every_n_steps=20",
        # Ray Train waits this long for a worker group it sized from a node that just died.
        *_in_place(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="10")))
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[-1]

    # Once two workers train and have checkpointed, take away the node of one of them.
    # Not the node of the driver's RunBoard actor: launch.py does not pin it to the
    # driver's node yet, and losing it ends the run (a known gap, not what this tests).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = [a for a in autoscaling.actors("RayTrainWorker") if a["state"] == "ALIVE"]
        if len(workers) == 2 and glob.glob(f"{storage}/elastic/step-*"):
            boards = {a["node_id"] for a in autoscaling.actors("RunBoard") if a["state"] == "ALIVE"}
            victim = next(w["node_id"] for w in workers if w["node_id"] not in boards)
            assert autoscaling.remove_node(victim) > 0
            break
        assert autoscaling.get(f"/api/jobs/{job_id}")["status"] in ("PENDING", "RUNNING"), _logs(autoscaling, job_id)
        time.sleep(0.5)
    else:
        pytest.fail("the elastic job never ran with two workers")

    deadline = time.monotonic() + 180
    while autoscaling.get(f"/api/jobs/{job_id}")["status"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, "the elastic job did not finish after losing a node"
        time.sleep(1)
    assert autoscaling.get(f"/api/jobs/{job_id}")["status"] == "SUCCEEDED", _logs(autoscaling, job_id)
    summary = json.loads(pathlib.Path(storage, "elastic", "summary.json").read_text())
    sizes = summary["world_sizes"]
    assert any(a == 2 and b == 1 for a, b in zip(sizes, sizes[1:])), sizes
    assert summary["status"] == "finished" and summary["restarts"] >= 1
    # The one worker left went on from a checkpoint taken before the end, not after it.
    assert summary["resumed_from_steps"] and summary["resumed_from_steps"][-1] < summary["steps"]
