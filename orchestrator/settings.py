"""Every setting read from the environment, declared once: a name, a default, a unit.

Nothing else in the package calls `os.getenv`. Each setting is read when it is
used (not at import), so a test or a Ray runtime env can change it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """One environment variable with its default; `get()` returns it typed."""

    name: str
    default: str
    doc: str

    def get(self) -> str:
        return os.environ.get(self.name, self.default)

    def get_float(self) -> float:
        raw = self.get()
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{self.name}={raw!r} is not a number") from None

    def get_int(self) -> int:
        return int(self.get_float())


RAY_ADDRESS = Setting(
    "RAY_ADDRESS", "", "Ray cluster to join (ray://, host:port or 'auto'); empty starts an embedded local Ray."
)
PROGRESS_POLL_INTERVAL_S = Setting(
    "ORCHESTRATOR_PROGRESS_POLL_INTERVAL_S", "0.5", "How often the driver collects progress from the workers."
)
FOOTER_READ_THREADS = Setting(
    "ORCHESTRATOR_FOOTER_READ_THREADS", "16", "Threads that read Parquet footers in parallel on the driver."
)
REMOTE_BLOCK_SIZE_MB = Setting(
    "ORCHESTRATOR_REMOTE_BLOCK_SIZE_MB", "8", "Read-ahead block size for Parquet files on remote filesystems."
)
PLACEMENT_TIMEOUT_S = Setting(
    "ORCHESTRATOR_PLACEMENT_TIMEOUT_S", "60", "How long a worker group may wait for resources before the run fails."
)
CONTROLLER_POLL_INTERVAL_S = Setting(
    "ORCHESTRATOR_CONTROLLER_POLL_INTERVAL_S",
    "0.5",
    "Ray Train controller's poll of its workers (unless RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is set).",
)
RAY_API_SERVER_ADDRESS = Setting(
    "RAY_API_SERVER_ADDRESS", "", "Ray Jobs API (dashboard) URL for submit/status/logs/stop when --address is not given."
)
SUBMIT_CONNECT_TIMEOUT_S = Setting(
    "ORCHESTRATOR_SUBMIT_CONNECT_TIMEOUT_S", "10", "How long `orchestrator submit` waits to reach the Jobs API."
)
SUBMIT_PENDING_TIMEOUT_S = Setting(
    "ORCHESTRATOR_SUBMIT_PENDING_TIMEOUT_S",
    "600",
    "How long a submitted job may stay PENDING (uploading, installing its runtime env) before it is stopped.",
)
ALLOW_LOCAL_STORAGE = Setting(
    "ORCHESTRATOR_ALLOW_LOCAL_STORAGE",
    "0",
    "1 declares that a plain storage path is shared by every node (an NFS mount), so multi-node runs may use it.",
)
PLAIN_PROGRESS_INTERVAL_S = Setting(
    "ORCHESTRATOR_PLAIN_PROGRESS_INTERVAL_S", "30", "How often a run not on a terminal prints a progress line."
)
CONNECT_TIMEOUT_S = Setting(
    "ORCHESTRATOR_CONNECT_TIMEOUT_S", "10", "How long joining a Ray cluster may wait for its address to answer."
)
