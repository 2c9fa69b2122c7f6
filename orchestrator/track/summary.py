"""The run summary (`summary.json`) folded from a run's records, and the reading of a fit.

Owns `RunSummary`, `summarize` (records → summary) and `fit_diagnosis` (the
train/validation gap and where validation stopped improving). Knows no
training math and no Ray.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.track.records import Kind


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
    null_labels: int | None = None  # training rows without a label, left out (data.null_labels: drop)
    preprocessing_fit_s: float | None = None  # the statistics pass over the training rows, before the first step
    missing_values: dict[str, int] | None = None  # per feature, missing training values (null, NaN, inf), if any
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
    phases: dict[str, float] | None = None  # where the wall time went (`phases`), seconds per phase

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(name: str, run_dir: str, records: list[dict], started_at: float, unit: str = "epoch") -> RunSummary:
    """Fold the board's records of one run into its summary (status set by the caller); `unit` names
    what an EPOCH record is in the fit's reading ("round" for a tree model)."""
    summary = RunSummary(name=name, status="running", run_dir=run_dir)
    starts = [r for r in records if r["kind"] == Kind.START]
    summary.world_sizes = [r["world_size"] for r in starts]
    summary.world_size = summary.world_sizes[-1] if starts else None
    summary.restarts = max(len(starts) - 1, 0)
    summary.resumed_from_steps = [r["resumed_step"] for r in starts if r["resumed_step"] is not None]
    if starts:
        summary.null_labels = starts[-1].get("null_labels")
        fits = [r["preprocessing_fit_s"] for r in starts if r.get("preprocessing_fit_s") is not None]
        summary.preprocessing_fit_s = round(fits[0], 3) if fits else None
        summary.missing_values = starts[0].get("missing_values") or None
    first = [r["time"] for r in records if r["kind"] == Kind.FIRST_STEP]
    if first:
        summary.time_to_first_step_s = round(first[0] - started_at, 3)
    epochs = [r for r in records if r["kind"] == Kind.EPOCH]
    logs = [r for r in records if r["kind"] == Kind.LOG]
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
    progress = [r for r in records if "step" in r and r["kind"] in (Kind.LOG, Kind.EPOCH, Kind.CHECKPOINT)]
    if progress:
        summary.steps = max(r["step"] for r in progress)
        summary.samples = max(r.get("samples", 0) for r in progress)
    checkpoints = [r for r in records if r["kind"] == Kind.CHECKPOINT]
    if checkpoints:
        summary.checkpoint = max(checkpoints, key=lambda r: r["step"])["path"]
    summary.warnings = [r["message"] for r in records if r["kind"] == Kind.WARNING]
    summary.fit = fit_diagnosis(epochs, unit)
    stops = [r for r in records if r["kind"] == Kind.STOPPED_EARLY]
    summary.stopped_early = bool(stops)
    stopping = [r["stopping"] for r in epochs if r.get("stopping")]
    if stopping:
        summary.best = {key: stopping[-1][key] for key in ("best_value", "best_step", "best_epoch")}
    digests = {r["weights_sha256"] for r in records if r["kind"] == Kind.FINAL}
    if len(digests) == 1:
        summary.weights_sha256 = digests.pop()
    ended_at = time.time()
    summary.wall_s = round(ended_at - started_at, 3)
    summary.phases = phases(records, started_at, ended_at)
    return summary


PHASES = ("prepare", "ray", "worker_group", "setup", "first_step", "training", "validation", "checkpointing",
          "shutdown")


def phases(records: list[dict], started_at: float, ended_at: float) -> dict[str, float] | None:
    """Where a session's wall time went, in seconds, from the driver's and the workers' timestamps:

        prepare        reading footers (and writing demo data), checking the job, opening the run folder
        ray            starting or joining Ray, checking resources and storage
        worker_group   Ray Train's controller, placement, the worker processes and their imports
        setup          rank 0 from its train function's start to its first record: finding the checkpoint,
                       fitting the preprocessing (summary.preprocessing_fit_s), building the model, restoring
        first_step     reading the first batch and taking the first step
        training       the first step to the last, less validation and checkpointing (restarts included)
        validation     validation passes on the training thread (networks)
        checkpointing  saving and reporting checkpoints on the training thread (networks; the upload runs
                       in the background)
        shutdown       the last step's end to the summary (the group's teardown)

    A phase whose marks are missing (a session that trained nothing, a record from an older worker) is left
    out; None when no worker group started."""
    starts = [r for r in records if r["kind"] == Kind.START]
    if not starts:
        return None
    marks: dict[str, float] = {}
    for r in records:
        if r["kind"] == Kind.PHASE and r.get("phase"):
            marks.setdefault(r["phase"], r["time"])
    first_step = next((r["time"] for r in records if r["kind"] == Kind.FIRST_STEP), None)
    finals = [r for r in records if r["kind"] == Kind.FINAL]
    last = max((r["time"] for r in finals), default=None)
    lead = min(finals, key=lambda r: r["rank"]) if finals else {}
    inside = {"validation": lead.get("validation_s"), "checkpointing": lead.get("checkpoint_s")}
    bounds = {
        "prepare": (started_at, marks.get("ray", marks.get("workers"))),
        "ray": (marks.get("ray"), marks.get("workers")),
        "worker_group": (marks.get("workers"), starts[0].get("entered_at")),
        "setup": (starts[0].get("entered_at"), starts[0]["time"]),
        "first_step": (starts[0]["time"], first_step),
        "training": (first_step, last),
        "shutdown": (last, ended_at),
    }
    found = {name: b - a for name, (a, b) in bounds.items() if a is not None and b is not None}
    found.update({name: value for name, value in inside.items() if value is not None})
    if "training" in found:
        found["training"] -= sum(value for value in inside.values() if value is not None)
    return {name: round(found[name], 3) for name in PHASES if name in found}


def fill_from_history(summary: RunSummary, history) -> None:
    """Give a summary whose session trained no epoch (the run had ended, but not its driver) the last
    epoch's metrics from the run's stored history (a metrics.parquet table, track.history)."""
    if summary.epochs_completed or history is None or history.num_rows == 0:
        return
    rows = history.to_pylist()
    ends = [row for row in rows if row["name"] == "epoch/train_loss"]
    if not ends:
        return
    last = max(ends, key=lambda row: row["step"])
    summary.epochs_completed = last["epoch"] + 1
    summary.train = {"loss": last["value"]}
    summary.validation = {row["name"].split("/", 1)[1]: row["value"] for row in rows
                          if row["name"].startswith("val/") and row["step"] == last["step"]}


def fit_diagnosis(epochs: list[dict], unit: str = "epoch") -> dict[str, Any] | None:
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
        fit["reading"] = (f"overfitting: validation loss rose {rise:.0f}% after {unit} {fit['best_validation_epoch']} "
                          "while train loss kept falling")
    elif len(val) > 1 and (val[-1] < val[-2] * 0.99 or train[-1] < train[-2] * 0.99):
        fit["reading"] = f"still improving at the last {unit}: more {unit}s may help"
    else:
        fit["reading"] = f"converged: neither loss moved more than 1% in the last {unit}"
    return fit
