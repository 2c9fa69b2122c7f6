"""Real Ray clusters in their own processes, for the tests of `submit` and autoscaling.

Unlike tests/integration, nothing here starts Ray inside the test process:
each module starts a head with `ray start --head --block` in its own process
group, on free ports, with its own temp dir and its own auth token, and stops
exactly that group at the end. Commands run against it get an explicit
environment naming it (never the RAY_ADDRESS of another cluster).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

from orchestrator.driver.cluster import free_ports
from tests.conftest import REPO

# The quickstart made small: two short epochs over 6,000 rows.
QUICK = ["--set", "data.generate.rows=6000", "--set", "train.epochs=2", "--set", "checkpoint.every_n_steps=5"]


class RayHead:
    """A Ray head node in a process group of its own; `stop()` ends that group and nothing else."""

    def __init__(self, num_cpus: int, autoscaling_config: dict | None = None, head_env: dict | None = None):
        self.tmp = tempfile.mkdtemp(prefix="orc-cluster-")
        self.token_path = os.path.join(self.tmp, "auth_token")
        with open(self.token_path, "w") as f:
            f.write(secrets.token_hex(32))
        names = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port")
        ports = dict(zip(names, free_ports(len(names))))
        self.gcs_address = f"127.0.0.1:{ports['port']}"
        self.url = f"http://127.0.0.1:{ports['dashboard-port']}"
        command = ["ray", "start", "--head", "--block", f"--num-cpus={num_cpus}", "--dashboard-host=127.0.0.1",
                   "--min-worker-port=0", "--max-worker-port=0", f"--temp-dir={self.tmp}/ray",
                   "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items())]
        extra = {}
        if autoscaling_config is not None:
            config = json.loads(json.dumps(autoscaling_config))
            config["provider"]["gcs_address"] = self.gcs_address
            path = os.path.join(self.tmp, "autoscaling.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(config, f)
            command.append(f"--autoscaling-config={path}")
            extra = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        extra.update(head_env or {})
        self.log = open(os.path.join(self.tmp, "head.log"), "w")
        self.process = subprocess.Popen(
            command, env=self.env(**extra), cwd=self.tmp, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_serving(timeout_s=90)

    def env(self, **extra: str) -> dict:
        """An environment that names this cluster and its token, and no other cluster."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_path, PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def _wait_until_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {open(self.log.name).read()[-3000:]}")
            try:
                self.get("/api/version")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not serve its Jobs API within {timeout_s} s")

    def get(self, path: str):
        """GET a dashboard endpoint with this cluster's token; the decoded JSON."""
        with open(self.token_path) as f:
            request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {f.read()}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def actors(self, class_name: str) -> list[dict]:
        """Actors of `class_name` this cluster has run, from its state API."""
        query = f"/api/v0/actors?limit=1000&filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}"
        return self.get(query)["data"]["result"]["result"]

    def nodes(self) -> list[dict]:
        """Every node this cluster has had, alive or dead, from its state API."""
        return self.get("/api/v0/nodes?limit=1000")["data"]["result"]["result"]

    def group_pids(self) -> list[int]:
        """Processes of this cluster's process group (the head and every node it started)."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) == self.process.pid:
                    pids.append(int(pid))
            except OSError:
                continue
        return pids

    def remove_node(self, node_id: str) -> int:
        """SIGKILL the node `node_id` (one this cluster started): its raylet and every process under it.

        Its worker processes die with it, as on a lost machine; returns how many processes were killed.
        """
        group, parents = set(self.group_pids()), {}
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
        raylets = []
        for pid in group:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace")
            except OSError:
                continue
            if "raylet" in args.split("\0")[0] and f"--node_id={node_id}" in args:
                raylets.append(pid)
        doomed = set(raylets)
        while True:  # every descendant of the node's raylet: its agents, and workers in sessions of their own
            more = {pid for pid, parent in parents.items() if parent in doomed} - doomed
            if not more:
                break
            doomed |= more
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(doomed)

    def run(self, *args: str, timeout_s: float = 240, cwd: str = str(REPO), **env: str):
        """Run a command against this cluster; the CompletedProcess (stdout and stderr as text)."""
        return subprocess.run(list(args), env=self.env(**env), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout_s)

    def stop(self) -> None:
        """End this head's process group (SIGTERM, then SIGKILL after a grace period) and delete its files."""
        end_process_group(self.process, grace_s=3)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def end_process_group(process: subprocess.Popen, grace_s: float = 0) -> None:
    """End the process group `process` leads (started with start_new_session): SIGTERM and up to
    `grace_s` to exit when grace_s > 0, then SIGKILL; returns once `process` has exited."""
    if grace_s > 0:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def orchestrator(*args: str) -> list[str]:
    """The `python -m orchestrator …` command line, with this interpreter."""
    return [sys.executable, "-m", "orchestrator", *args]
