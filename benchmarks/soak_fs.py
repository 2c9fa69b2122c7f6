"""A local filesystem whose checkpoint writes fail now and then: the soak's transient storage fault.

Registered as the fsspec protocol `soakflaky` by the soak's driver. Ray Train
hands the run's filesystem to the workers pickled, and pickling an fsspec
filesystem keeps its class by name, so the workers (PYTHONPATH holds the repo)
write through this class too. Only writes under a checkpoint directory
(`step-…/`) fail, each with probability `failure_rate`, drawn per process: a
failure is transient, the next attempt draws again. Each failure appends a
line to the file named by SOAK_FAULT_LOG (the workers inherit it from the
process that started Ray), so the soak can count them.
"""

from __future__ import annotations

import os
import random

from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "soakflaky"


class FlakyLocalFileSystem(LocalFileSystem):
    """LocalFileSystem whose opens for writing under `step-*/` raise OSError with probability `failure_rate`."""

    protocol = PROTOCOL
    root_marker = "/"

    def __init__(self, failure_rate: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.failure_rate = failure_rate
        self.failures = 0
        self._draws = random.Random()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode and "/step-" in str(path) and self._draws.random() < self.failure_rate:
            self.failures += 1
            if os.environ.get("SOAK_FAULT_LOG"):
                with open(os.environ["SOAK_FAULT_LOG"], "a") as log:
                    log.write(f"{path}\n")
            raise OSError(f"503 Slow Down (injected by the soak) writing {path}")
        return super()._open(path, mode, **kwargs)


def register() -> None:
    """Make `soakflaky://` known to fsspec in this process."""
    import fsspec

    fsspec.register_implementation(PROTOCOL, FlakyLocalFileSystem, clobber=True)
