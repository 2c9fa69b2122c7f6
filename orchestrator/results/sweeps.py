"""Reading sweep folders back: the trials table, the best trial, and the sweep's plots.

A sweep folder (`driver.sweep` writes it; `driver.runfolder` names its files) holds sweep.json with one entry per
trial, each trial's run folder under trials/, and best.yaml. This module
reads them on any fsspec filesystem and writes only `<sweep>/report/*.png`.
It never trains and never imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow.fs

from orchestrator import storage
from orchestrator.driver.runfolder import BEST_FILE, SWEEP_FILE
from orchestrator.errors import ReportError
from orchestrator.job.search import Domain, SearchSpec
from orchestrator.progress import duration
from orchestrator.results.reports import REPORT_DIR, pyplot, save_png, text_table
from orchestrator.track.metadata import status


@dataclass(frozen=True)
class Sweep:
    """One sweep folder as stored: sweep.json parsed."""

    url: str
    state: dict

    @property
    def name(self) -> str:
        return self.state.get("name") or self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def metric(self) -> str:
        return self.state["search"]["metric"]

    @property
    def space(self) -> dict[str, Domain]:
        """The searched keys and their domains, in the job file's order."""
        return {key: Domain(*next(iter(raw.items()))) for key, raw in self.state["search"]["space"].items()}

    @property
    def status(self) -> str:
        """finished | failed | interrupted | running (a running sweep whose driver is gone: interrupted)."""
        return status(self.state)

    def trials(self) -> list[tuple[str, dict]]:
        """(trial name, entry) for every trial, in the order they started."""
        return sorted(self.state.get("trials", {}).items(), key=lambda item: item[1].get("started_at") or 0)


def is_sweep(url: str) -> bool:
    """Whether `url` is a sweep folder (it holds sweep.json)."""
    fs, path = storage.arrow_filesystem(storage.absolute(url))
    return fs.get_file_info(f"{path}/{SWEEP_FILE}").type == pyarrow.fs.FileType.File


def open_sweep(url: str) -> Sweep:
    """The sweep folder at `url`; ReportError if it holds no sweep.json."""
    url = storage.absolute(url)
    fs, path = storage.arrow_filesystem(url)
    state = storage.read_json(fs, f"{path}/{SWEEP_FILE}")
    if state is None:
        raise ReportError(f"No sweep at {url!r}: a sweep folder holds {SWEEP_FILE} (`orchestrator tune` writes it).")
    return Sweep(url=url, state=state)


def best(sweep: Sweep) -> tuple[str, dict] | None:
    """(name, entry) of the best finished trial, as the sweep named it; None before one finished."""
    name = sweep.state.get("best")
    return (name, sweep.state["trials"][name]) if name else None


def trials_table(sweep: Sweep) -> str:
    """The `orchestrator runs SWEEP` table: each trial's searched values, status, metric, epochs, why it stopped."""
    keys = list(sweep.space)
    header = ("trial", *keys, "status", sweep.metric, "epochs", "why")
    rows = [header]
    chosen = (best(sweep) or ("",))[0]
    for name, entry in sweep.trials():
        params = entry.get("params") or {}
        rows.append((name + (" *" if name == chosen else ""), *(_value(params.get(key)) for key in keys),
                     _trial_status(entry, sweep), _value(entry.get("metric")), _value(entry.get("epochs")),
                     entry.get("why") or ""))
    return text_table(rows)


def describe(sweep: Sweep) -> str:
    """The sweep's summary: what it searched, its trials, and the best one with its best.yaml."""
    search = SearchSpec(space=sweep.space, **{k: v for k, v in sweep.state["search"].items() if k != "space"})
    counts: dict[str, int] = {}
    for _, entry in sweep.trials():
        key = _trial_status(entry, sweep)
        counts[key] = counts.get(key, 0) + 1
    done = ", ".join(f"{count} {key}" for key, count in sorted(counts.items()))
    took = (sweep.state.get("ended_at") or sweep.state.get("updated_at") or 0) - (sweep.state.get("started_at") or 0)
    lines = [f"sweep {sweep.name} ({sweep.url}): {sweep.status}; {search.algorithm} search over "
             f"{', '.join(sweep.space)}; {done or 'no trials yet'}; {duration(took if took > 0 else None)}",
             trials_table(sweep)]
    chosen = best(sweep)
    if chosen:
        name, entry = chosen
        lines.append(f"best trial {name}: {sweep.metric} {_value(entry.get('metric'))} "
                     f"({'max' if search.maximize else 'min'}) with "
                     + ", ".join(f"{key}={_value(value)}" for key, value in (entry.get("params") or {}).items()))
        lines.append(f"  run it again: orchestrator run {storage.join(sweep.url, BEST_FILE)}")
    if sweep.state.get("error"):
        lines.append(f"  error      {sweep.state['error']}")
    return "\n".join(lines)


def write_report(sweep: Sweep) -> list[str]:
    """Write `<sweep>/report/trials.png` (the metric of each trial over epochs) and
    `<sweep>/report/params.png` (each trial's metric against each searched value); returns their URLs."""
    plt = pyplot()
    trials = sweep.trials()
    if not any(entry.get("curve") for _, entry in trials):
        raise ReportError(f"Sweep {sweep.name!r} at {sweep.url!r} has no trial metrics yet: nothing to plot.")
    chosen = (best(sweep) or ("",))[0]
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, entry in trials:
        curve = entry.get("curve") or []
        if curve:
            style = {"linewidth": 2.5, "color": "black"} if name == chosen else {"linewidth": 1, "alpha": 0.7}
            ax.plot([epoch for epoch, _ in curve], [value for _, value in curve], marker="o", markersize=3,
                    label=f"{name} ({_trial_status(entry, sweep)})", **style)
    ax.set_title(f"{sweep.name}: {sweep.metric} per trial (best in black)")
    ax.set_xlabel("epoch (round, for trees)")
    ax.set_ylabel(sweep.metric)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    written = [save_png(fig, storage.join(sweep.url, REPORT_DIR, "trials.png"))]
    space = sweep.space
    fig, axes = plt.subplots(1, len(space), figsize=(4.5 * len(space), 4), squeeze=False)
    for ax, (key, domain) in zip(axes[0], space.items()):
        for name, entry in trials:
            value, metric = (entry.get("params") or {}).get(key), entry.get("metric")
            if value is None or not isinstance(metric, (int, float)) or not math.isfinite(metric):
                continue
            x = domain.values.index(value) if domain.kind == "choice" and value in domain.values else value
            finished = entry.get("status") == "finished"
            ax.scatter([x], [metric], s=60 if name == chosen else 30, marker="*" if name == chosen else "o",
                       facecolors=None if finished else "none", edgecolors="tab:blue", color="tab:blue")
        if domain.kind == "choice":
            ax.set_xticks(range(len(domain.values)), [_value(v) for v in domain.values], fontsize="small")
        elif domain.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.metric)
    axes[0, 0].set_title(f"{sweep.name}: {sweep.metric} at each trial's last epoch (hollow: did not finish)",
                         loc="left", fontsize="small")
    fig.tight_layout()
    written.append(save_png(fig, storage.join(sweep.url, REPORT_DIR, "params.png")))
    return written


def _trial_status(entry: dict, sweep: Sweep) -> str:
    """A trial's status; one still "running" in a sweep whose driver is gone is "interrupted"."""
    recorded = entry.get("status") or "pending"
    return "interrupted" if recorded == "running" and sweep.status != "running" else recorded


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
