"""Every setting read from the environment, declared once: a name, a default, a unit.

Nothing else in the package calls `os.getenv`. Each setting is read when it is
used (not at import), so a test or a Ray runtime env can change it. A value its
reader cannot use is a `SettingError` (exit code 2) naming the variable, its
value and what is allowed; the unit comes from the end of the name (`_S`
seconds, `_MB` megabytes, `_THREADS` threads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from orchestrator.errors import SettingError

_UNITS = {"_S": "seconds", "_MB": "megabytes", "_THREADS": "threads"}  # name ending → what the number counts


@dataclass(frozen=True)
class Setting:
    """One environment variable with its default; `get()` returns it as a string, `get_float()`
    and `get_int()` as a number."""

    name: str
    default: str
    doc: str

    def get(self) -> str:
        """The variable's value, or the default when it is not set."""
        return os.environ.get(self.name, self.default)

    def get_float(self) -> float:
        """The value as a number (inf and nan included); SettingError when it is not one."""
        raw = self.get()
        try:
            return float(raw)
        except ValueError:
            raise self._error(raw, "a number") from None

    def get_int(self) -> int:
        """The value as a whole number: a finite number, truncated toward zero ("2.5" → 2);
        SettingError otherwise."""
        raw = self.get()
        try:
            return int(float(raw))
        except (ValueError, OverflowError):  # not a number; nan; inf
            raise self._error(raw, "a finite number") from None

    def _error(self, raw: str, allowed: str) -> SettingError:
        """What is wrong, in one line: the variable, its value, what is allowed (with the unit its name ends with)."""
        unit = next((f" of {unit}" for end, unit in _UNITS.items() if self.name.endswith(end)), "")
        return SettingError(f"environment variable {self.name}={raw!r}: expected {allowed}{unit} "
                            f"(unset it for the default, {self.default})")


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
CONTROLLER_POLL_INTERVAL_S = Setting(
    "ORCHESTRATOR_CONTROLLER_POLL_INTERVAL_S",
    "0.1",
    "Ray Train controller's poll of its workers (unless RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is set): it takes one "
    "reported result per poll and sees a finished or dead group at its next poll; raise it for very large groups.",
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
STATE_DIR = Setting(
    "ORCHESTRATOR_STATE_DIR", "~/.cache/orchestrator", "Where `orchestrator up` keeps the state file of the local Ray it started."
)
CONNECT_TIMEOUT_S = Setting(
    "ORCHESTRATOR_CONNECT_TIMEOUT_S", "10", "How long joining a Ray cluster may wait for its address to answer."
)
