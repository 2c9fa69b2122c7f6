"""A node announced as preempted gets a just-in-time checkpoint before it goes.

Ray Core learns of a spot reclaim as a drain request with reason PREEMPTION;
Ray Train's watcher turns it into `ray.train.get_preemption_info()`, which the
loop checks at every log point. Here the drain is requested with Ray's own
`ray drain-node` against a real worker node of a local cluster.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time

import pytest
import yaml

from orchestrator.driver.cluster import free_port
from tests.cluster.conftest import RayHead, end_process_group, orchestrator
from tests.conftest import regression_job


class WorkerNode:
    """A `ray start` worker node joined to `head`, in a process group of its own."""

    def __init__(self, head: RayHead, num_cpus: int):
        ports = {name: free_port() for name in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")}
        self.log = open(os.path.join(head.tmp, "worker-node.log"), "w")
        self.process = subprocess.Popen(
            ["ray", "start", f"--address={head.gcs_address}", "--block", f"--num-cpus={num_cpus}",
             "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats",
             *(f"--{name}={port}" for name, port in ports.items())],
            env=head.env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            alive = [n for n in head.nodes() if n["state"] == "ALIVE" and n["resources_total"].get("CPU")]
            if alive:
                self.node_id = alive[0]["node_id"]
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("the worker node did not join the cluster within 90 s")

    def stop(self) -> None:
        end_process_group(self.process)
        self.log.close()


@pytest.fixture
def cluster():
    head = RayHead(num_cpus=0)
    node = WorkerNode(head, num_cpus=2)
    yield head, node
    node.stop()
    head.stop()


def test_a_preempted_node_gets_a_checkpoint_at_once_and_the_run_still_finishes(cluster, regression_data, tmp_path):
    head, node = cluster
    raw = regression_job(
        regression_data[0], str(tmp_path / "runs"),
        name="spot",
        model={"kind": "mlp", "hidden": [512, 512]},
        optim={"name": "adamw", "lr": 0.001},
        train={"epochs": 25, "batch_size": 256, "log_every_n_steps": 5},
        checkpoint={"every_n_steps": None, "keep": 100},  # no step checkpoints: the preemption one stands out
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(raw))
    driver = subprocess.Popen(
        orchestrator("run", str(job_file)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=head.env(RAY_ADDRESS=head.gcs_address, RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="0.5"),
    )
    output = []
    for line in driver.stdout:
        output.append(line)
        if line.startswith("epoch 1/25"):
            break
    drained = head.run("ray", "drain-node", f"--address={head.gcs_address}", f"--node-id={node.node_id}",
                       "--reason=DRAIN_NODE_REASON_PREEMPTION", "--reason-message=spot reclaim",
                       "--deadline-remaining-seconds=600")
    assert drained.returncode == 0, drained.stderr
    output += list(driver.stdout)
    assert driver.wait(timeout=300) == 0, "".join(output)

    summary = json.loads((tmp_path / "runs" / "spot" / "summary.json").read_text())
    warnings = [w for w in summary["warnings"] if "preempted" in w]
    assert len(warnings) == 1, summary["warnings"]
    step = int(warnings[0].rsplit("at step ", 1)[1])
    assert 28 < step < 25 * 28  # after the first epoch, long before the end
    assert (pathlib.Path(summary["run_dir"]) / f"step-{step:08d}" / "manifest.json").exists()
    assert summary["status"] == "finished" and summary["steps"] == 25 * 28
