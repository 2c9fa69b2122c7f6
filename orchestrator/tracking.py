"""Progress, metrics history and the run summary.

Owns what a run tells the outside world while and after it trains: the
`RunBoard` (a small actor the driver creates; rank 0 posts progress records
to it without waiting, the driver drains them to print progress), the
metrics history kept once per step however often the group restarts, and
`summary.json`. Knows no training math.

The driver itself adds "resume" (checkpoint, step) before training continues
an earlier run, and "already_complete" (step, run_dir) for a finished one.

Records are plain dicts with a "kind":
    start       a worker group began (world_size, resumed_step or None)
    worker      a rank is running (rank, pid)
    samples     with audit_samples: the row ids a rank trains on at a step (rank, step, epoch, ids)
    first_step  the first optimizer step of a group finished (time)
    log         periodic train metrics (step, epoch, loss, lr, samples_per_s)
    epoch       an epoch ended (train and validation metrics)
    checkpoint  a checkpoint is complete in storage (step, path: its directory name)
    warning     something the user should know that did not stop training (message)
    fatal       training must stop and not be retried (message)
    final       a rank finished (rank, step, weights_sha256: replicas must agree)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs


class RunBoard:
    """Collects what the workers post; the driver drains it. Runs as a Ray actor."""

    def __init__(self) -> None:
        self._pending: list[dict] = []
        self._history: dict[int, dict] = {}
        self._epochs: dict[int, dict] = {}
        self._fault_claimed = False

    def post(self, record: dict) -> None:
        record = {**record, "time": record.get("time", time.time())}
        self._pending.append(record)
        if record["kind"] == "log":
            self._history[record["step"]] = record  # a replayed step after a restart replaces, never repeats
        elif record["kind"] == "epoch":
            self._epochs[record["epoch"]] = record

    def drain(self) -> list[dict]:
        pending, self._pending = self._pending, []
        return pending

    def history(self) -> list[dict]:
        return [self._history[step] for step in sorted(self._history)]

    def epochs(self) -> list[dict]:
        return [self._epochs[epoch] for epoch in sorted(self._epochs)]

    def claim_fault(self) -> bool:
        """True exactly once per run: lets an injected fault fire once, not after every restart."""
        claimed, self._fault_claimed = self._fault_claimed, True
        return not claimed


@dataclass
class RunSummary:
    """What `summary.json` holds and the CLI prints."""

    name: str
    status: str  # "finished" | "failed"
    run_dir: str
    steps: int = 0
    epochs_completed: int = 0
    samples: int = 0
    train: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    samples_per_s: float | None = None
    world_size: int | None = None
    world_sizes: list[int] = field(default_factory=list)
    restarts: int = 0
    resumed_from_steps: list[int] = field(default_factory=list)
    dropped_rows_per_epoch: int | None = None
    wall_s: float = 0.0
    time_to_first_step_s: float | None = None
    checkpoint: str | None = None
    model: str | None = None
    weights_sha256: str | None = None  # the digest every rank's final weights agreed on
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(name: str, run_dir: str, records: list[dict], started_at: float) -> RunSummary:
    """Fold the board's records of one run into its summary (status set by the caller)."""
    summary = RunSummary(name=name, status="running", run_dir=run_dir)
    starts = [r for r in records if r["kind"] == "start"]
    summary.world_sizes = [r["world_size"] for r in starts]
    summary.world_size = summary.world_sizes[-1] if starts else None
    summary.restarts = max(len(starts) - 1, 0)
    summary.resumed_from_steps = [r["resumed_step"] for r in starts if r["resumed_step"] is not None]
    first = [r["time"] for r in records if r["kind"] == "first_step"]
    if first:
        summary.time_to_first_step_s = round(first[0] - started_at, 3)
    epochs = [r for r in records if r["kind"] == "epoch"]
    logs = [r for r in records if r["kind"] == "log"]
    if epochs:
        last = epochs[-1]
        summary.epochs_completed = last["epoch"] + 1 if last.get("complete", True) else last["epoch"]
        summary.train = dict(last.get("train", {}))
        summary.validation = dict(last.get("validation", {}))
        summary.dropped_rows_per_epoch = last.get("dropped_rows")
    rates = [r["samples_per_s"] for r in logs + epochs if r.get("samples_per_s")]
    if rates:
        summary.samples_per_s = round(sum(rates) / len(rates), 1)
    progress = [r for r in records if "step" in r and r["kind"] in ("log", "epoch", "checkpoint")]
    if progress:
        summary.steps = max(r["step"] for r in progress)
        summary.samples = max(r.get("samples", 0) for r in progress)
    checkpoints = [r for r in records if r["kind"] == "checkpoint"]
    if checkpoints:
        summary.checkpoint = max(checkpoints, key=lambda r: r["step"])["path"]
    summary.warnings = [r["message"] for r in records if r["kind"] == "warning"]
    digests = {r["weights_sha256"] for r in records if r["kind"] == "final"}
    if len(digests) == 1:
        summary.weights_sha256 = digests.pop()
    summary.wall_s = round(time.time() - started_at, 3)
    return summary


def write_json(filesystem: pyarrow.fs.FileSystem, path: str, payload: dict) -> None:
    """Write `payload` as indented JSON to `path` on `filesystem`."""
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True).encode())
