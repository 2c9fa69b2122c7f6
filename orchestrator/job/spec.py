"""The job file: reading, overriding and validating it into a `JobSpec`.

Owns one builder per section (each reads its fields and their defaults, as the
dataclasses of `schema` declare them, through `Fields`) and validation in two
tiers, field checks per section then the cross-section `rules`, that reports
every problem at once in one `SpecError`. Each problem starts with its key path
(`optim.lr: must be > 0, got -1`); an unknown key gets the nearest valid one.
`--set` overrides are applied first (`overrides`). The schema's dataclasses and
shared facts are re-exported here, so `spec.JobSpec` names the job as a caller
knows it.

Leaves to others: whether the data exists and has the named columns
(`data.source`), building models, losses and optimizers (`models`, `loop`),
reading typed values out of a mapping and phrasing each problem (`fields`), and
anything about Ray or torch. Importing this module pulls in neither, so
`orchestrator validate jobs/x.yaml` is instant.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import yaml

from orchestrator.errors import SpecError
from orchestrator.job import overrides as overrides_
from orchestrator.job import rules
from orchestrator.job.columns import read_columns
from orchestrator.job.fields import (
    REQUIRED,
    Bad,
    Fields,
    Report,
    as_float,
    as_int,
    as_list,
    as_str,
    choice,
    describe,
    ranged,
)
from orchestrator.job.objectives import MAXIMIZED_METRICS
from orchestrator.job.overrides import apply_overrides, with_values
from orchestrator.job.schema import (
    ACTIVATIONS,
    BUILTIN_MODELS,
    CLASSIFICATION_LOSSES,
    EARLY_STOPPING_METRICS,
    LOSSES,
    NULL_LABELS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TREE_MODELS,
    CheckpointSpec,
    DataSpec,
    EarlyStoppingSpec,
    FailureSpec,
    FaultInjection,
    GenerateSpec,
    JobSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    ScalingSpec,
    ScheduleSpec,
    TrackingSpec,
    TrainSpec,
    resolve_lanes,
    total_steps,
    warmup_warning,
)
from orchestrator.job.search import SearchSpec, read_search

__all__ = [
    "DataSpec", "ModelSpec", "LossSpec", "OptimSpec", "ScheduleSpec", "TrainSpec", "ScalingSpec",
    "GenerateSpec", "EarlyStoppingSpec", "TrackingSpec", "FaultInjection", "CheckpointSpec", "FailureSpec",
    "JobSpec", "load", "from_dict", "apply_overrides", "read", "with_values", "resolve_lanes", "total_steps",
    "warmup_warning", "CLASSIFICATION_LOSSES", "EARLY_STOPPING_METRICS", "MAXIMIZED_METRICS", "TREE_MODELS",
]

_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "module.path:function"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # safe as a directory name


# ---- one builder per section; `_build` reports unknown keys after each -------------

def _as_validation(value: Any) -> float | str | None:
    if isinstance(value, str) and value.strip():
        try:
            float(value)
        except ValueError:
            return value  # a path or URL of separate validation Parquet
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Bad(f"expected a fraction in [0, 1) (0: no validation) or a path/URL of Parquet, got {describe(value)}")
    fraction = as_float(value)
    return None if fraction == 0 else ranged(fraction, above=0, below=1)


def _data(f: Fields) -> DataSpec:
    spec = DataSpec(
        path=f.str("path", why="a Parquet file, directory or glob; any fsspec URL"),
        label=f.str("label", why="the target column"),
        features=f.str_list("features"),
        validation=f.value("validation", convert=_as_validation),
        lanes=f.int("lanes", min=1),
        shuffle_window_rows=f.int("shuffle_window_rows", min=1),
        prefetch_batches=f.int("prefetch_batches", min=0),
        in_memory_mb=f.float("in_memory_mb", min=0),
        generate=_generate(f.section("generate", empty_when_absent=False, schema=GenerateSpec)),
        exclude=f.str_list("exclude"),
        columns=read_columns(f),
        null_labels=f.choice("null_labels", allowed=NULL_LABELS, noun="null-label policy"),
    )
    if spec.features and spec.exclude:
        f.add("exclude", "applies only when data.features is omitted (it leaves columns out of 'every column "
                         "but the label'); drop it, or drop those columns from data.features")
    if spec.features == ():
        f.add("features", "must name at least one column (omit it to use every column except the label)")
    elif spec.features and spec.label in spec.features:
        f.add("features", f"must not include the label column '{spec.label}'")
    return spec


def _generate(f: Fields | None) -> GenerateSpec | None:
    if f is None:
        return None
    spec = GenerateSpec(
        kind=f.choice("kind", allowed=("regression", "classification", "mixed"), noun="synthetic dataset"),
        rows=f.int("rows", min=1),
        features=f.int("features", min=1),
        classes=f.int("classes", min=2),
        noise=f.float("noise", min=0),
        files=f.int("files", min=1),
        seed=f.int("seed", min=0),
    )
    f.finish()
    return spec


def _as_kind(value: Any) -> str:
    if isinstance(value, str) and _BUILDER.fullmatch(value):
        return value
    return choice(value, BUILTIN_MODELS, "model", extra=", or a builder 'module.path:function'")


def _as_options(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise Bad(f"expected a mapping of builder keyword arguments, got {describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise Bad(f"keys must be strings, got {describe(key)}")
    return copy.deepcopy(dict(value))


def _model(f: Fields) -> ModelSpec:
    return ModelSpec(
        kind=f.value("kind", convert=_as_kind, why=f"{', '.join(BUILTIN_MODELS)} or 'module.path:function'"),
        hidden=f.int_list("hidden", min=1),
        activation=f.choice("activation", allowed=ACTIVATIONS, noun="activation"),
        dropout=f.float("dropout", min=0, below=1),
        outputs=f.int("outputs", min=1),
        options=f.value("options", convert=_as_options),
        rounds=f.int("rounds", min=1),
    )


def _loss(f: Fields) -> LossSpec:
    return LossSpec(
        name=f.choice("name", allowed=LOSSES, noun="loss"),
        huber_delta=f.float("huber_delta", above=0),
        label_smoothing=f.float("label_smoothing", min=0, below=1),
    )


def _as_betas(value: Any) -> tuple[float, float]:
    betas = as_list(value, lambda x: ranged(as_float(x), min=0, below=1), "two numbers")
    if len(betas) != 2:
        raise Bad(f"expected two numbers [beta1, beta2], got {len(betas)}")
    return betas


def _optim(f: Fields) -> OptimSpec:
    spec = OptimSpec(
        name=f.choice("name", allowed=OPTIMIZERS, noun="optimizer"),
        lr=f.float("lr", above=0),
        weight_decay=f.float("weight_decay", min=0),
        momentum=f.float("momentum", min=0, below=1),
        betas=f.value("betas", convert=_as_betas),
        nesterov=f.bool("nesterov"),
    )
    if not f.report.ok("optim.name", "optim.momentum"):
        return spec
    if spec.name != "sgd" and spec.momentum:
        f.add("momentum", f"only sgd uses momentum, not {spec.name}: set optim.name: sgd or drop momentum")
    elif spec.nesterov and not (spec.name == "sgd" and spec.momentum):
        f.add("nesterov", "needs optim.name: sgd with a momentum > 0")
    return spec


def _schedule(f: Fields) -> ScheduleSpec:
    spec = ScheduleSpec(
        name=f.choice("name", allowed=SCHEDULES, noun="schedule"),
        warmup_steps=f.int("warmup_steps", min=0),
        step_size=f.int("step_size", min=1),
        gamma=f.float("gamma", above=0),
        min_lr_ratio=f.float("min_lr_ratio", min=0, max=1),
    )
    if spec.name == "step" and spec.step_size is None and f.report.ok("schedule.step_size"):
        f.add("step_size", "required when schedule.name is 'step' (optimizer steps between decays)")
    return spec


def _train(f: Fields) -> TrainSpec:
    return TrainSpec(
        batch_size=f.int("batch_size", why="the global batch size across all workers", min=1),
        epochs=f.int("epochs", min=1),
        max_steps=f.int("max_steps", min=1),
        seed=f.int("seed", min=0),
        grad_clip=f.float("grad_clip", above=0),
        grad_accum_steps=f.int("grad_accum_steps", min=1),
        precision=f.choice("precision", allowed=PRECISIONS, noun="precision"),
        compile=f.bool("compile"),
        log_every_n_steps=f.int("log_every_n_steps", min=1),
        ddp_bucket_cap_mb=f.float("ddp_bucket_cap_mb", above=0),
        find_unused_parameters=f.bool("find_unused_parameters"),
    )


def _as_workers(value: Any) -> int | tuple[int, int]:
    if not isinstance(value, (list, tuple)):
        return ranged(as_int(value), min=1)
    low, high = as_list(value, as_int, "integers") if len(value) == 2 else (0, -1)
    if not 1 <= low <= high:
        raise Bad(f"expected a count >= 1 or a [min, max] pair with 1 <= min <= max, got {describe(value)}")
    return (low, high)


def _scaling(f: Fields) -> ScalingSpec:
    return ScalingSpec(
        workers=f.value("workers", convert=_as_workers),
        cpus_per_worker=f.float("cpus_per_worker", above=0),
        use_gpu=f.bool("use_gpu"),
    )


def _checkpoint(f: Fields) -> CheckpointSpec:
    return CheckpointSpec(
        every_n_steps=f.int("every_n_steps", nullable=True, min=1),
        every_n_seconds=f.float("every_n_seconds", above=0),
        keep=f.int("keep", min=1),
        epoch_min_interval_s=f.float("epoch_min_interval_s", min=0),
    )


def _failure(f: Fields) -> FailureSpec:
    max_failures = f.int("max_failures", min=-1)
    hang_timeout_s = f.float("hang_timeout_s", above=0)
    inject, rehearsal = f.section("inject", empty_when_absent=False, schema=FaultInjection), None
    if inject is not None:
        rehearsal = FaultInjection(
            exit_at_step=inject.int("exit_at_step", nullable=True, min=1),
            rank=inject.int("rank", min=0),
            hang_at_step=inject.int("hang_at_step", nullable=True, min=1),
        )
        if (rehearsal.exit_at_step is None) == (rehearsal.hang_at_step is None):
            inject.report.add(inject.path, "give exactly one of exit_at_step (the rank exits) and hang_at_step (its "
                               "training thread hangs): the step after which that rank fails")
        inject.finish()
    return FailureSpec(max_failures=max_failures, inject=rehearsal, hang_timeout_s=hang_timeout_s)


def _early_stopping(f: Fields) -> EarlyStoppingSpec | None:
    if not f.raw:
        return None
    return EarlyStoppingSpec(
        metric=f.choice("metric", allowed=EARLY_STOPPING_METRICS, noun="metric"),
        patience=f.int("patience", min=1),
        min_delta=f.float("min_delta", min=0),
        mode=f.value("mode", convert=lambda v: choice(v, ("min", "max"), "mode")),
        export=f.choice("export", allowed=("best", "last"), noun="export"),
    )


def _tracking(f: Fields) -> TrackingSpec:
    return TrackingSpec(
        tensorboard=f.bool("tensorboard"),
        mlflow=f.bool("mlflow"),
        mlflow_tracking_uri=f.value("mlflow_tracking_uri", convert=as_str),
        mlflow_experiment=f.value("mlflow_experiment", convert=as_str),
        mlflow_parent_run_id=f.value("mlflow_parent_run_id", convert=as_str),
    )


# section → (builder, the dataclass whose defaults it reads, required, what it needs when missing,
# accepts the `section: name` shorthand)
_SECTIONS: dict[str, tuple[Callable[[Fields], Any], type, bool, str, bool]] = {
    "data": (_data, DataSpec, True, "where the Parquet data is and which column is the label", False),
    "model": (_model, ModelSpec, True, "at least model.kind", False),
    "loss": (_loss, LossSpec, True, "a loss name such as mse", True),
    "optim": (_optim, OptimSpec, False, "", False),
    "schedule": (_schedule, ScheduleSpec, False, "", True),
    "train": (_train, TrainSpec, True, "at least train.batch_size and train.epochs or train.max_steps", False),
    "scaling": (_scaling, ScalingSpec, False, "", False),
    "checkpoint": (_checkpoint, CheckpointSpec, False, "", False),
    "failure": (_failure, FailureSpec, False, "", False),
    "early_stopping": (_early_stopping, EarlyStoppingSpec, False, "", False),
    "tracking": (_tracking, TrackingSpec, False, "", False),
    "search": (read_search, SearchSpec, False, "", False),
}


def _as_name(value: Any) -> str:
    if not isinstance(value, str) or not _RUN_NAME.fullmatch(value):
        raise Bad("must start with a letter or digit and hold only letters, digits, '.', '_' and '-' "
                   f"(it becomes a directory name), got {describe(value)}")
    return value


def _build(raw: Mapping, report: Report, default_name: str | None) -> JobSpec | None:
    """The JobSpec with data.lanes resolved, or None with every problem in `report`."""
    top = Fields(raw, "", report, JobSpec)
    name = top.value("name", REQUIRED if default_name is None else default_name, _as_name,
                     why="the run's name; it becomes a directory name")
    if "name" not in raw and default_name is not None and not _RUN_NAME.fullmatch(default_name):
        top.add("name", f"required: the file name '{default_name}' cannot stand in, as a run name must start "
                        "with a letter or digit and hold only letters, digits, '.', '_' and '-'")
    model = raw.get("model")
    trees = isinstance(model, Mapping) and model.get("kind") in TREE_MODELS
    parts = {}
    for key, (build, schema, required, why, shorthand) in _SECTIONS.items():
        required = required and not (trees and key == "train")  # a tree job trains in rounds, not batches
        section = top.section(key, required=required, why=why, shorthand=shorthand, schema=schema)
        parts[key] = build(section) if section is not None else None
        if section is not None:
            section.finish()
    storage = top.str("storage")
    top.finish()
    if trees:
        rules.check_tree_job(raw, parts, report)
    rules.check_across(parts, report)
    if report.problems:
        return None
    spec = JobSpec(name=name, storage=storage, **parts)
    lanes = resolve_lanes(spec.data.lanes, spec.scaling.max_workers)
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, lanes=lanes))


# ---- public API --------------------------------------------------------------------

def _not_a_mapping(got: str) -> str:
    return f"job file: expected a mapping of sections ({', '.join(['name', *_SECTIONS, 'storage'])}), got {got}"


def from_dict(raw: Mapping, overrides: Sequence[str] = (), source: str | None = None,
              default_name: str | None = None) -> JobSpec:
    """A validated JobSpec from a job file's mapping plus overrides, with data.lanes resolved.
    Raises one SpecError (carrying `source`) that lists every problem found."""
    if not isinstance(raw, Mapping):
        raise SpecError([_not_a_mapping(describe(raw))], source)
    raw, problems = overrides_.apply(raw, overrides)
    if problems:
        raise SpecError(problems, source)
    report = Report()
    spec = _build(raw, report, default_name)
    if spec is None:
        raise SpecError(report.problems, source)
    return spec


def read(path: str | os.PathLike) -> dict:
    """The job file at `path` as a mapping, unvalidated. A missing file, a YAML syntax error or a
    file that is not a mapping of sections is a SpecError naming the file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        what = " (that is a directory)" if path.is_dir() else ""
        raise SpecError([f"no job file at {source}{what}"], source)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([f"YAML syntax error{where}: {exc.problem or exc.context}"], source) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError([f"cannot read the job file: {exc}"], source) from None
    if not isinstance(raw, Mapping):
        got = "an empty file" if raw is None else describe(raw)
        raise SpecError([_not_a_mapping(got)], source)
    return dict(raw)


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> JobSpec:
    """Read, override and validate the job file at `path`; the run name defaults to the
    file's stem. Every mistake (missing file, YAML syntax, schema) is a SpecError."""
    return from_dict(read(path), overrides, source=str(path), default_name=Path(path).stem)
