"""The job file's rules that span sections, checked once every section parsed on its own.

Owns what a tree job may not set (anything about batches, optimizers and
schedules) and what it must (`model.rounds`, a loss both tree libraries
implement), and the rules between sections of every job: a batch size that
fills every worker and lane, a monitored metric the job reports, a fault
injected into a rank that exists. Each rule runs only when the fields it reads
are valid, and adds its problem to the `Report` under the key to change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from orchestrator.job.fields import Report, schema_default
from orchestrator.job.objectives import CLASSIFICATION_METRICS, REGRESSION_METRICS
from orchestrator.job.schema import (
    CLASSIFICATION_LOSSES,
    TREE_LOSSES,
    TREE_MODELS,
    TREE_TRAIN_KEYS,
    DataSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    ScheduleSpec,
    TrainSpec,
    plain,
    resolve_lanes,
)

_NETWORK_ONLY = {
    "optim": "the optimizer", "schedule": "the learning-rate schedule",
    "model.hidden": "layer widths", "model.activation": "the activation", "model.dropout": "dropout",
    "model.outputs": "the output width",
}


def _set_keys(raw: Any, schema: type) -> list[str]:
    """The keys of section `raw` set to something other than `schema`'s default (a resolved job
    file holds every key, at its default where the user set nothing)."""
    if not isinstance(raw, Mapping):
        return [] if raw is None else [""]
    declared = {f.name for f in dataclasses.fields(schema)}
    return [key for key in raw if key not in declared or plain(raw[key]) != plain(schema_default(schema, key))]


def check_tree_job(raw: Mapping, p: dict[str, Any], r: Report) -> None:
    """A tree job (model.kind xgboost | lightgbm) sets model.rounds and nothing about gradient steps."""
    model, loss = p["model"], p["loss"]
    kind = raw["model"]["kind"]
    why = (f"model.kind {kind} grows one tree per boosting round on each worker's whole shard, with no "
           "batches, optimizer or learning-rate schedule")
    given = {"optim": bool(_set_keys(raw.get("optim"), OptimSpec)),
             "schedule": bool(_set_keys(raw.get("schedule"), ScheduleSpec)),
             **{f"model.{key}": True for key in _set_keys(raw["model"], ModelSpec)}}
    for key, what in _NETWORK_ONLY.items():
        if given.get(key):
            r.add(key, f"{what} of a network: {why}; set the booster's own parameters in model.options")
    for name in _set_keys(raw.get("train"), TrainSpec):
        if name not in TREE_TRAIN_KEYS:
            r.add(f"train.{name}", f"not used by tree models: {why}. model.rounds sets how long it trains; "
                                   f"train allows only {', '.join(TREE_TRAIN_KEYS)} here")
    if model and model.rounds is None and r.ok("model.rounds"):
        r.add("model.rounds", f"required for model.kind {kind}: how many boosting rounds to train")
    if loss and r.ok("loss.name") and loss.name not in TREE_LOSSES:
        r.add("loss.name", f"'{loss.name}' has no exact counterpart in both tree libraries; "
                           f"tree models train with {', '.join(TREE_LOSSES)}")
    if "label_smoothing" in _set_keys(raw.get("loss"), LossSpec):
        r.add("loss.label_smoothing", "not available for tree models")


def check_across(p: dict[str, Any], r: Report) -> None:
    """Rules that span sections; each runs only when the fields it reads are valid."""
    data, model, loss, train, scaling, failure = (
        p[key] for key in ("data", "model", "loss", "train", "scaling", "failure"))
    trees = model is not None and r.ok("model.kind") and model.trees
    if model and not trees and r.ok("model.rounds") and model.rounds is not None:
        r.add("model.rounds", f"boosting rounds are for tree models ({', '.join(TREE_MODELS)}); "
                              f"model.kind {model.kind} is a network, which trains for train.epochs or train.max_steps")
    if trees:
        train = None  # its batch and step rules are about networks
    elif train and r.ok("train.batch_size") and train.batch_size is None:
        r.add("train.batch_size", "required (the global batch size across all workers)")
    if train and r.ok("train.epochs", "train.max_steps") and train.epochs is None and train.max_steps is None:
        r.add("train.epochs", "required: set train.epochs, train.max_steps or both (the first reached stops)")
    if model and loss and r.ok("model.kind", "loss.name"):
        if model.kind == "logistic" and loss.name not in CLASSIFICATION_LOSSES:
            r.add("loss.name", f"model.kind 'logistic' needs loss {' or '.join(sorted(CLASSIFICATION_LOSSES))}, "
                               f"got '{loss.name}'")
        if loss.name == "cross_entropy" and model.outputs == 1 and r.ok("model.outputs"):
            r.add("model.outputs", "loss cross_entropy needs one output per class (>= 2), got 1; "
                                   "use loss bce for a single output")
    if not scaling or not r.ok("scaling.workers"):
        return
    most = scaling.max_workers
    if data and r.ok("data.lanes"):
        lanes = resolve_lanes(data.lanes, most)
        if most > lanes:
            r.add("data.lanes", f"{lanes} lanes cannot feed {most} workers (scaling.workers); "
                                f"raise data.lanes to at least {most}")
        elif train and r.ok("train.batch_size") and train.batch_size < lanes:
            r.add("train.batch_size", f"{train.batch_size} is smaller than data.lanes ({lanes}), so a lane "
                                      f"would add no row to a step: raise it to at least {lanes}")
        elif train and r.ok("train.batch_size", "train.grad_accum_steps") and \
                train.batch_size < most * train.grad_accum_steps:
            r.add("train.batch_size", f"{train.batch_size} rows cannot fill {most} workers x "
                                      f"{train.grad_accum_steps} accumulation steps: raise it to at least "
                                      f"{most * train.grad_accum_steps} or lower train.grad_accum_steps")
    for key, section in (("early_stopping", p["early_stopping"]), ("search", p["search"])):
        if section is not None:
            _check_metric(f"{key}.metric", section.metric, data, loss, r)
    if failure and failure.inject and r.ok("failure.inject.rank") and failure.inject.rank >= most:
        r.add("failure.inject.rank", f"{failure.inject.rank} is not a worker rank: scaling.workers allows "
                                     f"at most {most} workers (ranks 0..{most - 1})")


def _check_metric(key: str, metric: str, data: DataSpec | None, loss: LossSpec | None, r: Report) -> None:
    """A monitored `metric` (at `key`) must be one the job reports: validation data for val_ metrics,
    and a metric of the loss's task."""
    if data and r.ok(key, "data.validation") and metric.startswith("val_") and data.validation is None:
        r.add(key, f"'{metric}' needs validation data: set data.validation (a fraction to hold out, or a path)")
    if loss and r.ok(key, "loss.name"):
        classification = loss.name in CLASSIFICATION_LOSSES
        other_task = REGRESSION_METRICS if classification else CLASSIFICATION_METRICS
        if metric in other_task:
            mine = CLASSIFICATION_METRICS if classification else REGRESSION_METRICS
            r.add(key, f"'{metric}' is not computed for loss '{loss.name}' "
                       f"(this task reports val_loss, {', '.join(mine)})")
