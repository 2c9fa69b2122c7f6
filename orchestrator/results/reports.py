"""Reading run folders back after (or while) they train: the runs table, a run's report, comparing two runs.

Owns everything offline about a run folder's history: finding the runs under
a storage URL, reading `summary.json`, `run.json` and `metrics.parquet` on any
fsspec filesystem, the text the CLI prints, and the PNG plots (matplotlib,
Agg backend, an optional extra). It writes only `<run>/report/*.png` and the
comparison PNG it is asked for.

It never trains and never imports Ray; torch only to load a tree run's model for
its feature importance (through `predict`). What a run folder holds is
written by `driver.launch` and `track`. Every field beyond the basics is read with
`.get()`, so runs written before a field existed still report.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq

from orchestrator import storage
from orchestrator.driver.runfolder import HISTORY_FILE, RUN_FILE, SUMMARY_FILE
from orchestrator.errors import ReportError
from orchestrator.job.spec import TREE_MODELS
from orchestrator.progress import duration, format_phases
from orchestrator.track.metadata import status
from orchestrator.track.summary import fit_diagnosis

REPORT_DIR = "report"
IMPORTANCE_SHOWN = 25  # features in a tree run's importance plot, the largest total gain first
# The validation metrics besides the loss (train.metrics), the headline score of each task first.
VALIDATION_SCORES = ("val/auc", "val/accuracy", "val/f1", "val/log_loss", "val/r2", "val/rmse", "val/mae")


@dataclass(frozen=True)
class Run:
    """One run folder as it is stored: its files parsed, None where a file is absent."""

    url: str
    name: str
    summary: dict | None
    meta: dict | None  # run.json
    history: pa.Table | None  # metrics.parquet

    @property
    def status(self) -> str:
        """finished | failed | interrupted | running: summary.json's, else run.json's (track.metadata.status)."""
        return (self.summary or {}).get("status") or (status(self.meta) if self.meta else "unknown")

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, in step order; empty lists when it was never recorded."""
        rows = self._rows(name)
        return rows.column("step").to_pylist(), rows.column("value").to_pylist()

    def epoch_series(self, name: str) -> tuple[list[int], list[float]]:
        """(epoch, value) of an epoch-end metric (0-based epochs), in epoch order."""
        rows = self._rows(name)
        return rows.column("epoch").to_pylist(), rows.column("value").to_pylist()

    def _rows(self, name: str) -> pa.Table:
        if self.history is None:
            return pa.table({"step": [], "epoch": [], "value": []})
        return self.history.filter(pc.equal(self.history.column("name"), name)).sort_by("step")

    def names(self) -> list[str]:
        """Every metric name in the history."""
        return sorted(set(self.history.column("name").to_pylist())) if self.history is not None else []

    def score_names(self) -> list[str]:
        """The validation metrics besides the loss this run recorded, headline first (val/auc or val/r2)."""
        recorded = set(self.names())
        return [name for name in VALIDATION_SCORES if name in recorded]

    def score_name(self) -> str | None:
        """The run's headline validation score: val/auc (classification; val/accuracy in runs recorded
        before it), else val/r2."""
        return next(iter(self.score_names()), None)


def open_run(url: str) -> Run:
    """The run folder at `url` (a path or any fsspec URL); ReportError if it holds no run."""
    url = storage.absolute(url)
    fs, path = storage.arrow_filesystem(url)
    summary = storage.read_json(fs, f"{path}/{SUMMARY_FILE}")
    meta = storage.read_json(fs, f"{path}/{RUN_FILE}")
    if summary is None and meta is None:
        raise ReportError(
            f"No run at {url!r}: a run folder holds {SUMMARY_FILE} or {RUN_FILE}, and this one has neither. "
            "Name a folder under the job's storage (see `orchestrator runs STORAGE`)."
        )
    try:
        history = pq.read_table(f"{path}/{HISTORY_FILE}", filesystem=fs)
    except FileNotFoundError:
        history = None
    name = (meta or {}).get("name") or (summary or {}).get("name") or path.rstrip("/").rsplit("/", 1)[-1]
    return Run(url=url, name=name, summary=summary, meta=meta, history=history)


def find_runs(storage_url: str) -> list[Run]:
    """Every run folder directly under `storage_url`, oldest first; ReportError if the folder does not exist."""
    storage_url = storage.absolute(storage_url)
    fs, path = storage.arrow_filesystem(storage_url)
    info = fs.get_file_info(path)
    if info.type != pyarrow.fs.FileType.Directory:
        raise ReportError(f"No runs at {storage_url!r}: it is not a folder. Pass the job's `storage` (default ./runs).")
    folders = [i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(path))
               if i.type == pyarrow.fs.FileType.Directory]
    markers = fs.get_file_info([f"{path}/{name}/{file}" for name in folders for file in (SUMMARY_FILE, RUN_FILE)])
    found = {m.path.rsplit("/", 2)[-2] for m in markers if m.type == pyarrow.fs.FileType.File}
    runs = [open_run(storage.join(storage_url, name)) for name in sorted(found)]
    return sorted(runs, key=lambda run: ((run.meta or {}).get("started_at") or 0, run.name))


# ---- what the runs and their metrics say ----------------------------------------


def best_validation(run: Run) -> tuple[str, float, int | None] | None:
    """(metric, best value, 0-based epoch) — early stopping's best if it ran, else the lowest validation loss."""
    stopping = (run.meta or {}).get("early_stopping") or (run.summary or {}).get("best")
    if stopping and stopping.get("best_value") is not None:
        metric = (stopping.get("metric") or (((run.meta or {}).get("job") or {}).get("early_stopping") or {})
                  .get("metric") or "val_loss")
        return metric, stopping["best_value"], stopping.get("best_epoch")
    epochs, losses = run.epoch_series("val/loss")
    if losses:
        best = min(range(len(losses)), key=losses.__getitem__)
        return "val_loss", losses[best], epochs[best]
    final = (run.summary or {}).get("validation", {}).get("loss")
    return ("val_loss", final, None) if final is not None else None


def fit_signal(run: Run) -> dict[str, Any] | None:
    """The train/validation gap and the (1-based) epoch where validation loss stopped improving.

    The summary's own `fit` when it has one; otherwise computed from the history.
    """
    fit = (run.summary or {}).get("fit")
    if fit:
        return fit
    epochs, val = run.epoch_series("val/loss")
    train = dict(zip(*run.epoch_series("epoch/train_loss")))
    return fit_diagnosis([{"epoch": epoch, "train": {"loss": train[epoch]}, "validation": {"loss": loss}}
                          for epoch, loss in zip(epochs, val) if epoch in train],
                         unit="round" if _is_trees(run) else "epoch")


def duration_s(run: Run) -> float | None:
    """Wall time of the run: the summary's, else run.json's start to end (to now while running)."""
    if (run.summary or {}).get("wall_s"):
        return run.summary["wall_s"]
    started = (run.meta or {}).get("started_at")
    if started is None:
        return None
    return ((run.meta or {}).get("ended_at") or time.time()) - started


def world_size(run: Run) -> str:
    """The worker count, or its range when an elastic run changed size ("1-2")."""
    sizes = [w["world_size"] for w in (run.meta or {}).get("world_sizes") or []]
    sizes = sizes or (run.summary or {}).get("world_sizes") or []
    if not sizes:
        size = (run.summary or {}).get("world_size")
        return str(size) if size else "-"
    return str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"


def steps(run: Run) -> int:
    """Optimizer steps taken: the summary's count, else the history's last step."""
    if (run.summary or {}).get("steps"):
        return run.summary["steps"]
    return max(run.history.column("step").to_pylist(), default=0) if run.history is not None else 0


def runs_table(runs: list[Run]) -> str:
    """The `orchestrator runs` table: name, status, steps, best validation metric, duration, world size."""
    header = ("name", "status", "steps", "best validation", "duration", "workers")
    rows = [header]
    for run in runs:
        best = best_validation(run)
        unit = "round" if _is_trees(run) else "epoch"  # a tree run records one "epoch" per boosting round
        where = f" ({unit} {best[2] + 1})" if best and best[2] is not None else ""
        shown = f"{best[0]} {_number(best[1])}{where}" if best else "-"
        rows.append((run.name, run.status, str(steps(run)), shown, duration(duration_s(run)), world_size(run)))
    return text_table(rows)


def describe(run: Run) -> str:
    """The `orchestrator report` text: outcome, final metrics, fit signal, early stopping, restarts."""
    summary, meta = run.summary or {}, run.meta or {}
    progress = (f"{steps(run)} boosting rounds" if _is_trees(run) else
                f"{steps(run)} steps, {summary.get('epochs_completed', '?')} epoch(s)")
    lines = [f"run {run.name} ({run.url}): {run.status}, {progress}, {duration(duration_s(run))}, "
             f"{world_size(run)} worker(s)"]
    phases = summary.get("phases")
    if phases:
        lines.append(f"  time       {format_phases(phases)} (its last session)")
    final = _final_metrics(run)
    if final:
        lines.append("  final      " + "  ".join(f"{k} {_number(v)}" for k, v in final.items()))
    fit = fit_signal(run)
    if fit:
        lines.append(f"  fit        train/validation gap {_number(fit['gap'])} "
                     f"(validation loss {_number(fit['validation_loss'])} - train loss {_number(fit['train_loss'])}); "
                     f"validation best at {'round' if _is_trees(run) else 'epoch'} {fit['best_validation_epoch']}")
        if fit.get("reading"):
            lines.append(f"             {fit['reading']}")
    stopping = meta.get("early_stopping")
    if stopping:
        best_at = (f"round {stopping.get('best_step')}" if _is_trees(run) else
                   f"step {stopping.get('best_step')} (epoch {(stopping.get('best_epoch') or 0) + 1})")
        stopped_at = f"{'round' if _is_trees(run) else 'step'} {stopping.get('stopped_at_step')}"
        lines.append(f"  stopped    early at {stopped_at}; best {_number(stopping.get('best_value'))} at {best_at}")
    for restart in meta.get("restarts") or []:
        lines.append(f"  restart    resumed at step {restart.get('resumed_step') or 0} with "
                     f"{restart.get('world_size')} worker(s): {restart.get('cause')}")
    error = summary.get("error") or meta.get("error")
    if error:
        lines.append(f"  error      {error}")
    return "\n".join(lines)


def compare_table(a: Run, b: Run) -> str:
    """Both runs' final metrics side by side, then the job settings that differ."""
    from orchestrator.track.exporters import flatten

    label_a, label_b = _labels(a, b)
    fields = {
        "status": (a.status, b.status), "steps": (steps(a), steps(b)),
        "epochs": ((a.summary or {}).get("epochs_completed"), (b.summary or {}).get("epochs_completed")),
        "duration": (duration(duration_s(a)), duration(duration_s(b))),
        "workers": (world_size(a), world_size(b)),
        "restarts": (len((a.meta or {}).get("restarts") or []), len((b.meta or {}).get("restarts") or [])),
    }
    final_a, final_b = _final_metrics(a), _final_metrics(b)
    for key in dict.fromkeys([*final_a, *final_b]):
        fields[key] = (final_a.get(key), final_b.get(key))
    best_a, best_b = best_validation(a), best_validation(b)
    fields["best validation"] = tuple(f"{best[0]} {_number(best[1])}" if best else None for best in (best_a, best_b))
    rows = [("", label_a, label_b)] + [(key, _cell(x), _cell(y)) for key, (x, y) in fields.items()]
    job_a = flatten((a.meta or {}).get("job") or {})
    job_b = flatten((b.meta or {}).get("job") or {})
    differ = [key for key in sorted(set(job_a) | set(job_b)) if key != "name" and job_a.get(key) != job_b.get(key)]
    text = text_table(rows)
    if differ:
        text += "\njob settings that differ:\n" + text_table(
            [(key, _cell(job_a.get(key)), _cell(job_b.get(key))) for key in differ], indent="  ")
    return text


def _final_metrics(run: Run) -> dict[str, float]:
    summary = run.summary or {}
    final = {f"train_{k}": v for k, v in (summary.get("train") or {}).items()}
    final.update({f"val_{k}": v for k, v in (summary.get("validation") or {}).items()})
    if not final:
        for name in ("epoch/train_loss", "val/loss", *VALIDATION_SCORES):
            _, values = run.series(name)
            if values:
                final[name.replace("epoch/", "").replace("/", "_")] = values[-1]
    return final


# ---- plots ----------------------------------------------------------------------


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display); ReportError when not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "Plots need matplotlib, which is not installed: `pip install matplotlib` "
            "(or `pip install -e \".[plots]\"` in a checkout of the orchestrator)."
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def report_figures(run: Run) -> dict[str, Any]:
    """The report's figures by file name: `loss.png` (train vs validation loss over steps) and
    `metrics.png` (learning rate, each validation metric, samples/s), each with the early-stopping point
    and restarts marked. Every plotted line carries the metric name it shows as its label."""
    if run.history is None:
        raise ReportError(f"Run {run.name!r} at {run.url!r} has no {HISTORY_FILE} yet: nothing to plot.")
    plt = pyplot()
    figures = {}
    fig, ax = plt.subplots(figsize=(9, 5))
    _plot(ax, run, "train/loss", label="train/loss", linewidth=1, alpha=0.7)
    _plot(ax, run, "epoch/train_loss", label="epoch/train_loss", marker="o", linestyle="--")
    _plot(ax, run, "val/loss", label="val/loss", marker="o")
    _finish(ax, run, f"{run.name}: train vs validation loss", "loss")
    fig.tight_layout()
    figures["loss.png"] = fig
    panels = [[name] for name in ("train/lr", *run.score_names())]
    panels.append(["train/samples_per_s", "epoch/samples_per_s"])
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), sharex=True, squeeze=False)
    for ax, names in zip(axes[:, 0], panels):
        for name in names:
            _plot(ax, run, name, label=name, marker="o" if not name.startswith("train/") else None)
        _finish(ax, run, None, names[0].split("/")[-1])
    axes[0, 0].set_title(f"{run.name}: metrics")
    fig.tight_layout()
    figures["metrics.png"] = fig
    importance = feature_importance(run)
    if importance:
        top = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:IMPORTANCE_SHOWN][::-1]
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(top) + 1.5))
        ax.barh([name for name, _ in top], [gain for _, gain in top])
        ax.set_title(f"{run.name}: feature importance (total gain of each feature's splits)")
        ax.set_xlabel("total gain")
        fig.tight_layout()
        figures["importance.png"] = fig
    return figures


def feature_importance(run: Run) -> dict[str, float] | None:
    """A tree run's total gain per feature column (as the tree model reads them), from its final
    model; None for a network or a run without a model file yet."""
    job = (run.meta or {}).get("job") or {}
    if (job.get("model") or {}).get("kind") not in TREE_MODELS:
        return None
    from orchestrator.data.matrix import tree_features
    from orchestrator.errors import CheckpointError
    from orchestrator.results import predict
    from orchestrator.train import boosters

    try:
        trained = predict.load(run.url)
    except CheckpointError:
        return None
    library = boosters.library(trained.job.model.kind)
    return library.importance(library.load(trained.state), tree_features(trained.preprocessing))


def compare_figure(a: Run, b: Run):
    """Both runs' train and validation loss (and validation accuracy or R²) over steps on one figure."""
    plt = pyplot()
    score = a.score_name() if a.score_name() == b.score_name() else None
    fig, axes = plt.subplots(1, 2 if score else 1, figsize=(14 if score else 9, 5), squeeze=False)
    # A tree run counts boosting rounds, a network optimizer steps: side by side, each runs from 0 to 1.
    mixed = _is_trees(a) != _is_trees(b)
    xlabel = "share of the run (rounds for trees, steps for networks)" if mixed else "step"
    for run, label, color in zip((a, b), _labels(a, b), ("tab:blue", "tab:orange")):
        scale = 1 / max(steps(run), 1) if mixed else 1
        train = "epoch/train_loss" if _is_trees(run) else "train/loss"
        _plot(axes[0, 0], run, train, label=f"{label} {train}", color=color, linewidth=1, alpha=0.6, scale=scale)
        _plot(axes[0, 0], run, "val/loss", label=f"{label} val/loss", color=color, linestyle="--", scale=scale,
              marker=None if _is_trees(run) else "o")
        if score:
            _plot(axes[0, 1], run, score, label=f"{label} {score}", color=color, scale=scale,
                  marker=None if _is_trees(run) else "o")
    axes[0, 0].set_title("loss")
    axes[0, 0].set_xlabel(xlabel)
    axes[0, 0].legend(fontsize="small")
    if score:
        axes[0, 1].set_title(score)
        axes[0, 1].set_xlabel(xlabel)
        axes[0, 1].legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_report(run: Run) -> list[str]:
    """Write the report's PNGs into `<run>/report/`; returns their URLs."""
    written = []
    for name, fig in report_figures(run).items():
        written.append(save_png(fig, storage.join(run.url, REPORT_DIR, name)))
    return written


def save_png(fig, url: str) -> str:
    """Render `fig` as PNG to `url` (any fsspec URL), creating its folder; closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    url = storage.absolute(url)
    fs, path = storage.arrow_filesystem(url)
    if "/" in path.rstrip("/"):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(buffer.getvalue())
    return url


def _plot(ax, run: Run, name: str, label: str, scale: float = 1.0, **style) -> None:
    steps_, values = run.series(name)
    if steps_:
        ax.plot([step * scale for step in steps_], values, label=label, **style)


def _is_trees(run: Run) -> bool:
    return ((run.meta or {}).get("job") or {}).get("model", {}).get("kind") in TREE_MODELS


def _finish(ax, run: Run, title: str | None, ylabel: str) -> None:
    """Mark restarts and the early-stopping point, then label, scale and add the legend."""
    meta = run.meta or {}
    values = [v for line in ax.lines for v in line.get_ydata() if math.isfinite(v)]
    for i, restart in enumerate(meta.get("restarts") or []):
        ax.axvline(restart.get("resumed_step") or 0, color="gray", linestyle=":", linewidth=1,
                   label="restart" if i == 0 else None)
    stopping = meta.get("early_stopping")
    if stopping and stopping.get("best_step") is not None:
        ax.axvline(stopping["best_step"], color="tab:green", linestyle="--", linewidth=1, label="best (early stopping)")
    if stopping and stopping.get("stopped_at_step") is not None:
        ax.axvline(stopping["stopped_at_step"], color="tab:red", linestyle="--", linewidth=1, label="stopped early")
    if ylabel == "loss" and values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")  # losses often fall by orders of magnitude; a linear axis hides the end
    if title:
        ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ax.lines:
        ax.legend(fontsize="small")


# ---- formatting -----------------------------------------------------------------


def _labels(a: Run, b: Run) -> tuple[str, str]:
    return (a.name, b.name) if a.name != b.name else (f"{a.name} (A)", f"{b.name} (B)")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _cell(value: Any) -> str:
    return _number(value) if not isinstance(value, (list, tuple)) else str(list(value))


def text_table(rows: list[tuple], indent: str = "") -> str:
    """Rows as left-aligned columns, the first row being the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)
