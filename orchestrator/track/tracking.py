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
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs

# metrics.parquet: one row per (step, name). Names: train/loss and train/lr at every
# step; train/samples_per_s at log points; epoch/train_loss, epoch/samples_per_s and
# val/loss, val/accuracy or val/r2 at each epoch's last step.
HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("epoch", pa.int64()), ("name", pa.string()), ("value", pa.float64()), ("time", pa.float64())]
)


class History:
    """The run's metric rows, one per (step, name), kept by each rank and saved in every checkpoint.

    Restored from the checkpoint a run resumes from, so replayed steps are
    recorded once and no step is ever missing, whatever failed.
    """

    def __init__(self, table: pa.Table | None = None):
        self._columns: dict[str, list] = {name: [] for name in HISTORY_SCHEMA.names}
        if table is not None:
            for name in HISTORY_SCHEMA.names:
                self._columns[name] = table.column(name).to_pylist()

    def add(self, step: int, epoch: int, values: dict[str, float], at: float) -> list[dict]:
        """Append one row per value; returns the rows (for exporters and the driver)."""
        rows = [{"step": step, "epoch": epoch, "name": name, "value": float(value), "time": at}
                for name, value in values.items()]
        for row in rows:
            for name in HISTORY_SCHEMA.names:
                self._columns[name].append(row[name])
        return rows

    def table(self) -> pa.Table:
        return pa.table(self._columns, schema=HISTORY_SCHEMA)


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
    samples_per_s: float | None = None  # steady-state training throughput (median of log intervals)
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
    stopped_early: bool = False
    best: dict[str, Any] | None = None  # early stopping: metric, best_value, best_step, best_epoch
    fit: dict[str, Any] | None = None  # train/validation gap and where validation stopped improving
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
    # Steady-state training throughput: the median over log intervals (epoch ends, which
    # include checkpoint reports, when the run logged too rarely to have intervals).
    rates = sorted(r["samples_per_s"] for r in (logs or epochs) if r.get("samples_per_s"))
    if rates:
        summary.samples_per_s = rates[len(rates) // 2]
    progress = [r for r in records if "step" in r and r["kind"] in ("log", "epoch", "checkpoint")]
    if progress:
        summary.steps = max(r["step"] for r in progress)
        summary.samples = max(r.get("samples", 0) for r in progress)
    checkpoints = [r for r in records if r["kind"] == "checkpoint"]
    if checkpoints:
        summary.checkpoint = max(checkpoints, key=lambda r: r["step"])["path"]
    summary.warnings = [r["message"] for r in records if r["kind"] == "warning"]
    summary.fit = fit_diagnosis(epochs)
    stops = [r for r in records if r["kind"] == "stopped_early"]
    summary.stopped_early = bool(stops)
    stopping = [r["stopping"] for r in epochs if r.get("stopping")]
    if stopping:
        summary.best = {key: stopping[-1][key] for key in ("best_value", "best_step", "best_epoch")}
    digests = {r["weights_sha256"] for r in records if r["kind"] == "final"}
    if len(digests) == 1:
        summary.weights_sha256 = digests.pop()
    summary.wall_s = round(time.time() - started_at, 3)
    return summary


def fit_diagnosis(epochs: list[dict]) -> dict[str, Any] | None:
    """The train/validation gap at the end and the epoch where validation stopped improving.

    A plain reading of the curves, not a verdict: overfitting when validation
    loss rose after its best epoch while train loss kept falling; still
    improving when the last epoch lowered validation (or train) loss by over 1%.
    """
    complete = [r for r in epochs if r.get("validation", {}).get("loss") is not None]
    if not complete:
        return None
    val = [r["validation"]["loss"] for r in complete]
    train = [r["train"]["loss"] for r in complete]
    best = min(range(len(val)), key=val.__getitem__)
    fit = {
        "train_loss": train[-1],
        "validation_loss": val[-1],
        "gap": val[-1] - train[-1],
        "best_validation_epoch": complete[best]["epoch"] + 1,
    }
    if best < len(val) - 1 and val[-1] > val[best] * 1.01 and train[-1] < train[best]:
        rise = 100 * (val[-1] / val[best] - 1)
        fit["reading"] = (f"overfitting: validation loss rose {rise:.0f}% after epoch {fit['best_validation_epoch']} "
                          "while train loss kept falling")
    elif len(val) > 1 and (val[-1] < val[-2] * 0.99 or train[-1] < train[-2] * 0.99):
        fit["reading"] = "still improving at the last epoch: more epochs may help"
    else:
        fit["reading"] = "converged: neither loss moved more than 1% in the last epoch"
    return fit


def run_metadata(job: dict, previous: dict | None) -> dict:
    """run.json at the start of a driver session, continuing `previous` when the run resumes."""
    meta = previous or {"started_at": time.time(), "world_sizes": [], "restarts": [], "trackers": {}, "sessions": 0}
    meta.update(name=job["name"], job=job, status="running", versions=_versions(), git_commit=_git_commit())
    meta["sessions"] = meta.get("sessions", 0) + 1
    return meta


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    from orchestrator import __version__

    return {"orchestrator": __version__, "python": platform.python_version(),
            **{package: version(package) for package in ("torch", "ray", "pyarrow", "fsspec")}}


def _git_commit() -> str | None:
    """The commit of the working directory's git checkout, if there is one (best effort)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def record_in_metadata(meta: dict, record: dict, pending_cause: list[str]) -> None:
    """Fold a progress record into run.json's world sizes, restarts and early stopping."""
    if record["kind"] == "failure":
        pending_cause[:] = ["; ".join(f"rank {rank}: {cause}" for rank, cause in sorted(record["causes"].items()))]
    elif record["kind"] == "start":
        resumed = record["resumed_step"]
        meta["world_sizes"].append({"step": resumed or 0, "world_size": record["world_size"], "time": record["time"]})
        if pending_cause or (resumed is not None and len(meta["world_sizes"]) > 1):
            meta["restarts"].append({"time": record["time"], "cause": pending_cause[0] if pending_cause else
                                     "the driver restarted", "resumed_step": resumed,
                                     "world_size": record["world_size"]})
            pending_cause.clear()
    elif record["kind"] == "stopped_early":
        meta["early_stopping"] = {key: record[key] for key in ("best_value", "best_step", "best_epoch",
                                                                "stopped_at_step")}


class Relay:
    """On the driver: passes each record on, folds it into run.json, and feeds exporters new rows.

    Exporters see every metric's steps only increase: rows replayed after a
    restart are dropped here. An exporter that raises is dropped with a
    warning; tracking never stops training.
    """

    def __init__(self, meta: dict, exporters: list, on_record: Callable[[dict], None]):
        self.meta, self.exporters, self.on_record = meta, list(exporters), on_record
        self._last_step: dict[str, int] = {}
        self._pending_cause: list[str] = []

    def __call__(self, record: dict) -> None:
        record_in_metadata(self.meta, record, self._pending_cause)
        rows = [r for r in record.get("rows") or () if r["step"] > self._last_step.get(r["name"], -1)]
        for row in rows:
            self._last_step[row["name"]] = row["step"]
        if rows:
            self._each_exporter(lambda exporter: exporter.log(rows))
        self.on_record(record)

    def close(self) -> None:
        self._each_exporter(lambda exporter: exporter.close())

    def _each_exporter(self, call: Callable) -> None:
        for exporter in list(self.exporters):
            try:
                call(exporter)
            except Exception as error:  # an outage of a tracker must not stop training
                self.exporters.remove(exporter)
                self.on_record({"kind": "warning", "time": time.time(),
                                "message": f"{type(exporter).__name__} stopped exporting: {error}"})


def write_json(filesystem: pyarrow.fs.FileSystem, path: str, payload: dict) -> None:
    """Write `payload` as indented JSON to `path` on `filesystem`."""
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(filesystem: pyarrow.fs.FileSystem, path: str) -> dict | None:
    """The JSON object at `path`, or None if there is no such file."""
    try:
        with filesystem.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
