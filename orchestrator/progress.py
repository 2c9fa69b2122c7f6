"""What a person watching `orchestrator run` sees while it trains.

Owns the live display on the driver: on a terminal, a progress bar of the
epoch with step, loss, samples/s and ETA, rewritten in place; elsewhere (CI,
`ray job logs`) a plain line every PLAIN_PROGRESS_INTERVAL_S. A tree model
prints a line every train.log_every_n_steps boosting rounds. Epoch ends,
restarts (with their cause), resumes, early stopping and warnings are one
permanent line each. It only formats records; it knows nothing of training.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from orchestrator import settings
from orchestrator.job.spec import JobSpec
from orchestrator.track.metadata import restart_cause
from orchestrator.track.summary import PHASES


class ProgressPrinter:
    """Called with every progress record (track.records lists their kinds) in the order they arrive."""

    def __init__(self, job: JobSpec, verbose: bool = False, out: TextIO = sys.stdout):
        self.job, self.verbose, self.out = job, verbose, out
        self.tty = out.isatty()
        self.starts, self.null_labels = 0, 0
        self.failed: dict = {}  # what a failed group said (FAILURE causes, STALL records) until the next starts
        self.bar_shown = False
        self.last_plain = 0.0

    def __call__(self, record: dict) -> None:
        handler = getattr(self, f"_on_{record['kind']}", None)
        if handler:
            handler(record)

    def _line(self, text: str, stream: TextIO | None = None) -> None:
        if self.bar_shown:
            self.out.write("\r\033[K")
            self.bar_shown = False
        print(text, file=stream or self.out, flush=True)

    def _on_phase(self, r: dict) -> None:
        self._line(r["message"])

    def _on_resume(self, r: dict) -> None:
        self._line(f"resuming {self.job.name} from its checkpoint at step {r['step']} ({r['checkpoint']})")

    def _on_already_complete(self, r: dict) -> None:
        self._line(f"{self.job.name} is already complete ({r['step']} steps); pass --fresh to train it again")

    def _on_warning(self, r: dict) -> None:
        self._line(f"warning: {r['message']}", sys.stderr if not self.tty else None)

    def _on_failure(self, r: dict) -> None:
        self.failed["causes"] = r["causes"]

    def _on_stall(self, r: dict) -> None:
        self.failed.setdefault("stalls", []).append(r)
        if self.verbose:
            self._line(f"rank {r['rank']} made no progress for {r['idle_s']:g} s while {r['doing']}; its "
                       f"threads:\n{r['stack']}", sys.stderr)

    def _on_start(self, r: dict) -> None:
        self.starts += 1
        self.null_labels = r.get("null_labels") or 0
        if r.get("preprocessing_fit_s") is not None:
            self._line(f"preprocessing fitted on the training rows in {duration(r['preprocessing_fit_s'])}")
            missing = r.get("missing_values") or {}
            if missing:
                self._line("missing values in the training rows (null, NaN or inf; filled as each column's kind "
                           "says): " + ", ".join(f"{name} {count:,}" for name, count in missing.items()))
        if self.starts == 1:
            return
        resumed = r["resumed_step"]
        where = f"from step {resumed}" if resumed is not None else "from the start"
        cause = restart_cause(self.failed.get("causes"), self.failed.get("stalls", ())) or "the worker group restarted"
        self._line(f"{cause}; resuming {where} with {r['world_size']} worker(s)")
        self.failed = {}

    def _on_epoch(self, r: dict) -> None:
        metrics = format_metrics("train", r["train"]) + format_metrics("val", r["validation"])
        skipped = f"  ({self.null_labels:,} rows without a label skipped)" if self.null_labels else ""
        if self.job.model.trees:  # an EPOCH record per boosting round: a line every log_every_n_steps rounds
            rounds, every = self.job.model.rounds, self.job.train.log_every_n_steps
            stopping = r.get("stopping") or {}
            if r["step"] % every and r["step"] != rounds and stopping.get("stopped_at_step") is None:
                return
            self._line(f"round {r['step']}/{rounds}  {metrics}{r['samples_per_s']:,.0f} rows/s{skipped}")
            return
        total = f"/{self.job.train.epochs}" if self.job.train.epochs else ""
        partial = "" if r["complete"] else " (partial)"
        self._line(f"epoch {r['epoch'] + 1}{total}{partial}  step {r['step']}  {metrics}"
                   f"{r['samples_per_s']:,.0f} samples/s{skipped}")

    def _on_stopped_early(self, r: dict) -> None:
        spec = self.job.early_stopping
        if self.job.model.trees:
            self._line(f"early stopping after round {r['step']}: {spec.metric} has not improved for "
                       f"{spec.patience} round(s); best {r['best_value']:.4g} at round {r['best_step']}")
            return
        self._line(f"early stopping after epoch {r['epoch'] + 1} (step {r['step']}): "
                   f"{spec.metric} has not improved for {spec.patience} epoch(s); best {r['best_value']:.4g} "
                   f"at epoch {r['best_epoch'] + 1} (step {r['best_step']})")

    def _on_log(self, r: dict) -> None:
        steps_per_s = r["samples_per_s"] / self.job.train.batch_size
        eta = (r["total_steps"] - r["step"]) / steps_per_s if steps_per_s > 0 else 0.0
        status = (f"step {r['step']}/{r['total_steps']}  loss {r['loss']:.4g}  "
                  f"{r['samples_per_s']:,.0f} samples/s  ETA {duration(eta)}")
        if self.tty and not self.verbose:
            done = (r["step"] - r["epoch"] * r["steps_per_epoch"]) / max(r["steps_per_epoch"], 1)
            filled = int(20 * min(max(done, 0.0), 1.0))
            total = f"/{self.job.train.epochs}" if self.job.train.epochs else ""
            self.out.write(f"\r\033[Kepoch {r['epoch'] + 1}{total} [{'#' * filled}{'.' * (20 - filled)}] {status}")
            self.out.flush()
            self.bar_shown = True
        elif self.verbose or time.monotonic() - self.last_plain >= settings.PLAIN_PROGRESS_INTERVAL_S.get_float():
            self.last_plain = time.monotonic()
            self._line(f"  {status}  lr {r['lr']:.3g}")


class SweepPrinter:
    """Called with every event of `orchestrator tune` (driver.sweep): one line per phase, trial start,
    epoch result and trial end."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out

    def __call__(self, event: dict) -> None:
        if event["kind"] == "phase":
            line = event["message"]
        elif event["kind"] == "result":
            value = event.get("value")
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
            line = f"  {event['trial']}  epoch {event.get('epoch')}  {event['metric']} {shown}"
        elif event.get("status") == "running":
            params = "  ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                               for key, value in (event.get("params") or {}).items())
            line = f"{event['trial']} started: {params}"
        else:
            line = f"{event['trial']} {event['status']}: {event.get('why') or ''}"
        print(line, file=self.out, flush=True)


def format_phases(phases: dict[str, float]) -> str:
    """'prepare 0.4s  ray 3.1s  worker_group 6.2s …' for a summary's phases, in the order they happen
    (track.summary.PHASES; summary.json stores them sorted by name)."""
    return "  ".join(f"{name} {duration(phases[name])}" for name in PHASES if name in phases)


def format_metrics(prefix: str, metrics: dict) -> str:
    """'val loss 0.01  val r2 0.99  ' for a metrics dict."""
    return "".join(f"{prefix} {name} {value:.4g}  " for name, value in metrics.items())


def duration(seconds: float | None) -> str:
    """A duration as a person reads it: '42.0s', '1m15s', '2h05m'; '-' for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
