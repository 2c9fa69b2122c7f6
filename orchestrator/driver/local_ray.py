"""A warm local Ray that outlives runs: `orchestrator up` starts it, `run` and `tune` join it, `down` stops it.

Owns the one local Ray head this machine's user asked for: started with
`ray start --head --block` in a process group of its own, listening on
loopback only, on free ports, with its own temp dir and its own auth token
(a file only this user can read); described by a state file
(`ORCHESTRATOR_STATE_DIR/local-ray.json`); stopped by signalling exactly that
process group — never `ray stop`, never by process name. A state file whose
process is gone (a reboot, a kill) is removed when read.

A run joins it when it names no cluster (no `--address`, no RAY_ADDRESS), so
it skips starting Ray (seconds) and finds Ray's own processes warm.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from orchestrator import settings
from orchestrator.driver import cluster
from orchestrator.errors import LaunchError

_STATE_FILE = "local-ray.json"
NODE_IP = "127.0.0.1"  # the head's node address: loopback only, so a driver joining it names it too
_PORTS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
          "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


@dataclass(frozen=True)
class LocalRay:
    """The head `up` started: the `ray start` process (leader of its process group) and how to join it."""

    pid: int
    gcs_address: str  # 127.0.0.1:port
    dashboard_url: str
    token_path: str
    temp_dir: str  # ours alone: Ray's session files, the token, the head's log
    cpus: int
    started_at: float

    def client_env(self) -> dict[str, str]:
        """The environment a process needs to join it (its address and token, by file: never the token)."""
        return {"RAY_ADDRESS": self.gcs_address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}


def prepare_to_join(local: LocalRay) -> None:
    """Set this process's environment to join `local` (its address and token file). Ray reads its auth
    settings when first imported; if it already was, it is made to read them again."""
    if "ray._raylet" in sys.modules and sys.modules["ray"].is_initialized():
        return  # connected already (an earlier run of this process): connect reuses that connection
    os.environ.update(local.client_env())
    if "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def state_file() -> pathlib.Path:
    return pathlib.Path(settings.STATE_DIR.get()).expanduser() / _STATE_FILE


def running() -> LocalRay | None:
    """The head `up` started, if its process still runs; a stale state file is removed."""
    path = state_file()
    try:
        local = LocalRay(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _is_our_head(local):
        return local
    path.unlink(missing_ok=True)
    shutil.rmtree(local.temp_dir, ignore_errors=True)
    return None


def _is_our_head(local: LocalRay) -> bool:
    try:
        command = pathlib.Path(f"/proc/{local.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--temp-dir={local.temp_dir}/ray".encode() in command


def start(cpus: int, timeout_s: float = 120) -> LocalRay:
    """Start the head with `cpus` CPUs and wait until it accepts drivers; LaunchError if one runs already
    or it does not come up (its log's tail in the message)."""
    if (local := running()) is not None:
        raise LaunchError(f"a local Ray started by `orchestrator up` already runs at {local.gcs_address} "
                          f"({local.cpus} CPUs); `orchestrator down` stops it")
    temp_dir = tempfile.mkdtemp(prefix="orc-up-")
    token_path = os.path.join(temp_dir, "auth_token")
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as token:
        token.write(secrets.token_hex(32))
    ports = dict(zip(_PORTS, cluster.free_ports(len(_PORTS))))
    # Ray's own CLI, run by this interpreter: wherever pip put the `ray` script (a venv, ~/.local/bin).
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               f"--num-cpus={cpus}", f"--node-ip-address={NODE_IP}", f"--dashboard-host={NODE_IP}",
               f"--temp-dir={temp_dir}/ray", "--disable-usage-stats",
               *(f"--{name}={port}" for name, port in ports.items())]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)
    # On SIGTERM a head first drains its node for Ray Serve's traffic, up to 30 s by default; `down`
    # took 30.5 s for it. A local head for training runs has no traffic to drain.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    # Workers import user model modules (jobs/…) from where `up` was run, as an embedded Ray's do.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    log_path = os.path.join(temp_dir, "head.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    local = LocalRay(pid=process.pid, gcs_address=f"{NODE_IP}:{ports['port']}",
                     dashboard_url=f"http://{NODE_IP}:{ports['dashboard-port']}", token_path=token_path,
                     temp_dir=temp_dir, cpus=cpus, started_at=time.time())
    try:
        _wait_until_ready(local, process, log_path, timeout_s)
    except BaseException:
        _stop_group(local.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(local), indent=1))
    return local


def _wait_until_ready(local: LocalRay, process: subprocess.Popen, log_path: str, timeout_s: float) -> None:
    """Until the head's log says it started (its GCS, raylet and dashboard answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"`ray start --head` exited with code {process.returncode}: "
                              f"{pathlib.Path(log_path).read_text()[-2000:]}")
        if "Ray runtime started" in pathlib.Path(log_path).read_text():
            return
        time.sleep(0.2)
    raise LaunchError(f"the local Ray did not start within {timeout_s:g} s; its log: {log_path}")


def stop(timeout_s: float = 30) -> LocalRay | None:
    """Stop the head `up` started, and everything in its process group; None if none runs."""
    local = running()
    if local is None:
        return None
    _stop_group(local.pid, timeout_s)
    state_file().unlink(missing_ok=True)
    shutil.rmtree(local.temp_dir, ignore_errors=True)
    return local


def _stop_group(pgid: int, timeout_s: float = 30) -> None:
    """SIGTERM the process group `pgid` (ray start's --block stops its own processes on it), then SIGKILL
    what is left of it after `timeout_s`."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid and _state(int(pid)) != "Z":
                return True
        except OSError:
            continue
    return False


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
