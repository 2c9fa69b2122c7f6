"""One sweep trial, inside its Ray Tune actor: a whole orchestrator run with one sample of the space.

Owns what crosses from the sweep's driver to its trials (`SweepPlan`), Tune's
param space and its decoding back into job values (a choice travels as the
index of its value, so any YAML value can be one), the trial's run folder name
(stable across a restored sweep), and the trial function itself: `launch.run`
on the trial's job, reporting each epoch's cross-rank-reduced metrics to Tune
with completed epochs (rounds for trees) as ASHA's time attribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator import storage
from orchestrator.driver import launch, runfolder
from orchestrator.job import trials
from orchestrator.job.search import SearchSpec
from orchestrator.track.records import Kind
from orchestrator.train.stopping import metric_value

TIME_ATTR = "epoch"  # what trials report their progress in, for ASHA: completed epochs (rounds for trees)
# A trial's own actor (launch.run's driver) needs no CPU: its Ray Train workers reserve theirs. Tune
# refuses an empty bundle, so it reserves the memory that driver takes.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 2**20}


@dataclass(frozen=True)
class SweepPlan:
    """What each trial needs, sent to it through Tune: small and picklable."""

    base: dict  # the job mapping without `search`, its paths absolute
    search: SearchSpec
    trials_url: str  # where trial run folders go: <sweep>/trials


def param_space(search: SearchSpec) -> dict[str, Any]:
    """Tune's param space: each key's domain; a choice is sampled as the index of its value, which
    `decode` turns back, so any YAML value (a list of widths) can be a choice."""
    from ray import tune

    space = {}
    for key, domain in search.space.items():
        if domain.kind == "choice":
            indexes = list(range(len(domain.values)))
            space[key] = tune.grid_search(indexes) if search.algorithm == "grid" else tune.choice(indexes)
        elif domain.kind == "uniform":
            space[key] = tune.uniform(*domain.values)
        elif domain.kind == "loguniform":
            space[key] = tune.loguniform(*domain.values)
        else:
            space[key] = tune.randint(domain.values[0], domain.values[1] + 1)  # Tune's high is excluded
    return space


def decode(search: SearchSpec, config: dict) -> dict[str, Any]:
    """A trial's job values from its Tune config: choices looked up, numbers as plain Python numbers."""
    values = {}
    for key, domain in search.space.items():
        sampled = config[key]
        if domain.kind == "choice":
            values[key] = domain.values[int(sampled)]
        elif domain.kind == "randint":
            values[key] = int(sampled)
        else:
            values[key] = float(sampled)
    return values


def trial_name(trial) -> str:
    """A Tune trial's run folder name (and Tune's name for it)."""
    return run_name(trial.trial_id)


def run_name(trial_id: str) -> str:
    """The run folder name of the trial with Tune's `trial_id`: stable across a restore."""
    return f"trial-{trial_id}"


def run_trial(config: dict, plan: SweepPlan) -> None:
    """One trial, inside its Tune actor: the job with this sample, run to its end by `launch.run`,
    reporting each epoch's reduced metrics to Tune; a last report says the run finished."""
    from ray import tune

    context = tune.get_context()
    job = trials.trial_job(plan.base, decode(plan.search, config), name=run_name(context.get_trial_id()),
                           storage=plan.trials_url)

    reported: list[int] = []

    def on_record(record: dict) -> None:
        if record["kind"] == Kind.EPOCH and record.get("complete", True):
            reported.append(record["epoch"])
            tune.report(_result(plan.search.metric, record["epoch"] + 1, record.get("train") or {},
                                record.get("validation") or {}))

    summary = launch.run(job, on_record=on_record)
    if not reported:  # a run found complete (its trial ended as the last driver died): its epochs, again
        for epoch, train, validation in _stored_epochs(summary.run_dir):
            tune.report(_result(plan.search.metric, epoch + 1, train, validation))
    tune.report({**_result(plan.search.metric, summary.epochs_completed, summary.train, summary.validation),
                 "run_status": "finished", "stopped_early": summary.stopped_early})


def _stored_epochs(run_url: str) -> list[tuple[int, dict, dict]]:
    """(epoch, train metrics, validation metrics) of each epoch in a finished run's metrics.parquet, so a
    scheduler that lost them with a killed driver (ASHA's rungs) hears them again."""
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(run_url)
    rows = pq.read_table(f"{path}/{runfolder.HISTORY_FILE}", filesystem=fs).to_pylist()
    epochs: dict[int, tuple[int, dict, dict]] = {}
    for row in rows:
        if row["name"] == "epoch/train_loss":
            epochs.setdefault(row["step"], (row["epoch"], {}, {}))[1]["loss"] = row["value"]
    for row in rows:
        if row["name"].startswith("val/") and row["step"] in epochs:
            epochs[row["step"]][2][row["name"].split("/", 1)[1]] = row["value"]
    return [epochs[step] for step in sorted(epochs)]


def _result(metric: str, epochs: int, train: dict, validation: dict) -> dict:
    result = {TIME_ATTR: epochs, **{f"train_{k}": v for k, v in train.items() if isinstance(v, (int, float))},
              **{f"val_{k}": v for k, v in validation.items() if isinstance(v, (int, float))}}
    value = metric_value(metric, train, validation)
    if value is None or math.isnan(value):
        result.pop(metric, None)  # Tune's scheduler and searcher skip a result without the metric
    return result
