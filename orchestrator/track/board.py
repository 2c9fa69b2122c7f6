"""The RunBoard: a small Ray actor the driver creates and the workers post progress records to.

Rank 0 posts without waiting; the driver drains the board to print progress,
fold records into run.json and feed exporters. The board also lets an injected
fault fire exactly once per run. Record kinds are declared in `records`.
"""

from __future__ import annotations

import time

from orchestrator.track.records import Kind


class RunBoard:
    """Collects what the workers post; the driver drains it. Runs as a Ray actor."""

    def __init__(self) -> None:
        self._pending: list[dict] = []
        self._history: dict[int, dict] = {}
        self._epochs: dict[int, dict] = {}
        self._fault_claimed = False
        self._fatal: dict | None = None

    def post(self, record: dict) -> None:
        record = {**record, "time": record.get("time", time.time())}
        self._pending.append(record)
        if record["kind"] == Kind.LOG:
            self._history[record["step"]] = record  # a replayed step after a restart replaces, never repeats
        elif record["kind"] == Kind.EPOCH:
            self._epochs[record["epoch"]] = record
        elif record["kind"] == Kind.FATAL and self._fatal is None:
            self._fatal = record

    def drain(self) -> list[dict]:
        pending, self._pending = self._pending, []
        return pending

    def history(self) -> list[dict]:
        return [self._history[step] for step in sorted(self._history)]

    def epochs(self) -> list[dict]:
        return [self._epochs[epoch] for epoch in sorted(self._epochs)]

    def fatal(self) -> dict | None:
        """The first FATAL record posted in this run, if any: a group that restarts after one stops at once."""
        return self._fatal

    def claim_fault(self) -> bool:
        """True exactly once per run: lets an injected fault fire once, not after every restart."""
        claimed, self._fault_claimed = self._fault_claimed, True
        return not claimed
