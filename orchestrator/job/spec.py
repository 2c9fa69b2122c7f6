"""The job file: what a user asks for, as typed, frozen dataclasses.

Owns: the YAML schema (one dataclass per section, every field documented, units
in the names), defaults (each written once, in its dataclass: a section's
builder reads them through `Fields`), `--set a.b.c=value` overrides, and
validation in two tiers (field checks per section, then cross-section checks)
that reports every problem at once in one `SpecError`. Each problem starts with
its key path (`optim.lr: must be > 0, got -1`); an unknown key gets the nearest
valid one. Also declared here for every module: which losses are classification
(`CLASSIFICATION_LOSSES`), the early-stopping metrics and which of them are
maximized, and how `data.lanes` resolves (`resolve_lanes`).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from orchestrator.errors import SpecError
from orchestrator.job.columns import ColumnSpec, read_columns
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
    schema_default,
)
from orchestrator.job.objectives import (
    CLASSIFICATION_METRICS,
    MAXIMIZED_METRICS,
    MONITORED_METRICS,
    REGRESSION_METRICS,
    maximize,
)
from orchestrator.job.search import SearchSpec, read_search

__all__ = [
    "DataSpec", "ModelSpec", "LossSpec", "OptimSpec", "ScheduleSpec", "TrainSpec", "ScalingSpec",
    "GenerateSpec", "EarlyStoppingSpec", "TrackingSpec", "FaultInjection", "CheckpointSpec", "FailureSpec", "JobSpec", "load", "from_dict", "apply_overrides",
    "read", "with_values", "resolve_lanes", "total_steps", "warmup_warning", "CLASSIFICATION_LOSSES", "EARLY_STOPPING_METRICS", "MAXIMIZED_METRICS",
]

TREE_MODELS = ("xgboost", "lightgbm")  # gradient-boosted trees (train.boosting), not torch networks
BUILTIN_MODELS = ("linear", "logistic", "mlp", "tabm", *TREE_MODELS)
TREE_LOSSES = ("mse", "l1", "bce", "cross_entropy")  # the losses both tree libraries implement exactly
# What a tree job may set in `train`; everything else there (and optim, schedule) is about gradient steps.
TREE_TRAIN_KEYS = ("seed", "log_every_n_steps")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "sigmoid")
LOSSES = ("mse", "l1", "huber", "cross_entropy", "bce")
CLASSIFICATION_LOSSES = ("cross_entropy", "bce")  # the losses whose labels are classes
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear")
PRECISIONS = ("fp32", "bf16")
MIN_LANES = 8  # data.lanes resolves to max(MIN_LANES, scaling max workers): see resolve_lanes
EARLY_STOPPING_METRICS = MONITORED_METRICS
NULL_LABELS = ("drop", "error")  # data.null_labels: what rows whose label is null do
_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "module.path:function"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # safe as a directory name
_SHORTHAND_SECTIONS = ("loss", "schedule")  # `loss: mse` means `loss: {name: mse}`


@dataclass(frozen=True)
class GenerateSpec:
    """A synthetic dataset with a known answer, written to `data.path` when it holds no files."""

    kind: str  # regression (y = x·w + b + noise) | classification (Gaussian blobs)
    rows: int = 50_000
    features: int = 8  # columns x0 … x{features-1}; the label column is y
    classes: int = 3  # classification only
    noise: float = 0.1  # standard deviation of the label noise (regression) or extra blob spread
    files: int = 4  # uneven files, each with its own row-group size
    seed: int = 0


@dataclass(frozen=True)
class DataSpec:
    """Where the rows come from, and how an epoch is cut into lanes and read."""

    path: str  # Parquet file, directory or glob; any fsspec URL
    label: str  # the target column
    features: tuple[str, ...] | None = None  # input columns; None = every column but the label
    # A fraction in (0, 1) held out deterministically, or a path/URL of separate Parquet; 0 or None: none.
    validation: float | str | None = None
    # World-size-independent streams the epoch is cut into; None resolves to
    # max(MIN_LANES, scaling max workers) after validation (resolve_lanes), so a built JobSpec holds an int.
    lanes: int | None = None
    shuffle_window_rows: int = 8192  # rows shuffled together within a lane
    # Batches a background thread reads ahead of the step; None = automatic (reader.default_prefetch).
    prefetch_batches: int | None = None
    # Training data whose decoded size is at most this is decoded once and kept in each worker's
    # memory across epochs (same batches, same order); 0 = always stream from the files.
    in_memory_mb: float = 256.0
    generate: GenerateSpec | None = None  # demo data written on the first run
    exclude: tuple[str, ...] = ()  # columns left out when `features` is omitted
    # Per-column overrides of the inferred kind and its transform (job.columns.ColumnSpec).
    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    null_labels: str = "drop"  # drop: rows whose label is null are skipped and counted | error: refuse them


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train: a network (a built-in or a user's "module.path:function") or
    gradient-boosted trees (xgboost | lightgbm)."""

    kind: str  # linear | logistic | mlp | tabm | xgboost | lightgbm | "jobs.my_model:build"
    hidden: tuple[int, ...] = (64, 64)  # hidden layer widths (mlp)
    activation: str = "relu"  # relu | gelu | tanh | silu | sigmoid
    dropout: float = 0.0  # dropout probability after each hidden layer, in [0, 1)
    outputs: int | None = None  # output width; None = inferred from the data
    # keyword arguments for a user builder; for tabm, TabM's own (k, d_block, n_blocks, dropout) and
    # numeric_embedding (periodic | none); for xgboost and lightgbm, the booster's parameters, unchanged
    options: dict = field(default_factory=dict)
    rounds: int | None = None  # boosting rounds (trees only, required there)

    @property
    def trees(self) -> bool:
        """True for gradient-boosted trees, False for a torch network."""
        return self.kind in TREE_MODELS


@dataclass(frozen=True)
class LossSpec:
    """The training objective."""

    name: str  # mse | l1 | huber | cross_entropy | bce
    huber_delta: float = 1.0  # where huber switches from quadratic to linear (> 0)
    label_smoothing: float = 0.0  # cross_entropy label smoothing, in [0, 1)


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer and its hyperparameters."""

    name: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3  # peak learning rate (> 0)
    weight_decay: float = 0.0  # >= 0
    momentum: float = 0.0  # sgd only, in [0, 1)
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw moment decay rates, each in [0, 1)
    nesterov: bool = False  # sgd only; needs momentum > 0


@dataclass(frozen=True)
class ScheduleSpec:
    """How the learning rate changes over optimizer steps."""

    name: str = "constant"  # constant | cosine | step | linear
    warmup_steps: int = 0  # linear warmup from 0 to lr, in optimizer steps
    step_size: int | None = None  # optimizer steps between decays; required for `step`
    gamma: float = 0.1  # multiplicative decay per step_size (step schedule, > 0)
    min_lr_ratio: float = 0.0  # floor for cosine/linear as a fraction of lr, in [0, 1]


@dataclass(frozen=True)
class TrainSpec:
    """The optimization loop: how long, how big, how precise."""

    batch_size: int | None = None  # global batch: rows per optimizer step across all workers (networks: required)
    epochs: int | None = None  # passes over the data; with max_steps, the first reached stops
    max_steps: int | None = None  # optimizer steps in total
    seed: int = 0  # seeds data order, initialization and dropout
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    precision: str = "fp32"  # fp32 | bf16 (autocast; fine on CPU too)
    compile: bool = False  # torch.compile the model
    log_every_n_steps: int = 50  # how often metrics are reported
    ddp_bucket_cap_mb: float = 25.0  # DDP gradient bucket size
    find_unused_parameters: bool = False  # DDP flag for models with unused branches


@dataclass(frozen=True)
class ScalingSpec:
    """How many workers, and what each one gets."""

    workers: int | tuple[int, int] = 1  # a fixed count, or (min, max) for an elastic group
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    use_gpu: bool = False  # one GPU per worker

    @property
    def min_workers(self) -> int:
        """The fewest workers the run may continue with."""
        return self.workers[0] if isinstance(self.workers, tuple) else self.workers

    @property
    def max_workers(self) -> int:
        """The most workers the run may grow to."""
        return self.workers[1] if isinstance(self.workers, tuple) else self.workers

    @property
    def elastic(self) -> bool:
        """True when the worker group may change size during the run."""
        return self.min_workers < self.max_workers


@dataclass(frozen=True)
class FaultInjection:
    """A rehearsal of recovery, once per run: worker `rank` calls os._exit after step `exit_at_step`,
    or its training thread blocks for good after step `hang_at_step` (alive, still answering Ray)."""

    exit_at_step: int | None = None  # optimizer step (or boosting round) after which the worker dies
    rank: int = 0  # which worker fails
    hang_at_step: int | None = None  # ... after which its training thread hangs


@dataclass(frozen=True)
class CheckpointSpec:
    """When checkpoints are taken and how many Ray Train keeps."""

    every_n_steps: int | None = 200  # None = no step-based checkpoints
    # Also a checkpoint about every this many seconds: at each log point the ranks agree on the time since
    # the last checkpoint and the time a step takes, and checkpoint at the step where it falls due
    # (train.policy.timer_due_step). None = no time-based checkpoints.
    every_n_seconds: float | None = None
    keep: int = 3  # newest checkpoints kept
    # An epoch end checkpoints only if the newest checkpoint is at least this old (the run's last step,
    # an early stop and a due step or timer checkpoint always do): short epochs share one checkpoint.
    epoch_min_interval_s: float = 10.0


@dataclass(frozen=True)
class FailureSpec:
    """How many worker-group failures the run survives."""

    max_failures: int = 3  # restarts from the newest checkpoint; -1 = unlimited
    # A worker that answers none of Ray Train's health checks for this long (stopped, frozen) is treated
    # as dead: the group restarts from the newest checkpoint. Ray Train's own default is 600 s.
    hang_timeout_s: float = 60.0
    inject: FaultInjection | None = None  # a deliberate failure, to test recovery


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop when a validation metric has not improved for `patience` epochs (all ranks together)."""

    metric: str = "val_loss"  # one of EARLY_STOPPING_METRICS: val_loss | val_accuracy | val_r2 | train_loss
    patience: int = 3  # epochs without an improvement of more than min_delta
    min_delta: float = 0.0  # smallest change that counts as an improvement
    mode: str | None = None  # min | max; None = max for accuracy and r2, min for losses
    export: str = "best"  # which checkpoint becomes model.pt: best | last

    @property
    def maximize(self) -> bool:
        """True when a larger metric is better: `mode` if set, else whether `metric` is in MAXIMIZED_METRICS."""
        return maximize(self.metric, self.mode)


@dataclass(frozen=True)
class TrackingSpec:
    """Where metrics go besides the run folder (nothing else by default)."""

    tensorboard: bool = False  # event files under <run folder>/tensorboard
    mlflow: bool = False  # log params and metrics to MLflow (pip install mlflow)
    mlflow_tracking_uri: str | None = None  # None = MLFLOW_TRACKING_URI or MLflow's default
    mlflow_experiment: str | None = None  # None = the job's name
    mlflow_parent_run_id: str | None = None  # nest this run's MLflow run under that run (a sweep sets it)


@dataclass(frozen=True)
class JobSpec:
    """One validated job file. Build it with `load` or `from_dict`, not by hand."""

    name: str  # run name; becomes a directory under storage
    data: DataSpec
    model: ModelSpec
    loss: LossSpec
    optim: OptimSpec
    schedule: ScheduleSpec
    train: TrainSpec
    scaling: ScalingSpec
    checkpoint: CheckpointSpec
    failure: FailureSpec
    storage: str = "./runs"  # path or fsspec URL where runs are written
    early_stopping: EarlyStoppingSpec | None = None  # absent = train to the end
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    search: SearchSpec | None = None  # a sweep's space (`orchestrator tune`); `run` trains the job as written

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain dicts, lists and scalars; `from_dict(spec.to_dict()) == spec`."""
        plain = _plain(dataclasses.asdict(self))
        plain["search"] = _plain(self.search.to_dict()) if self.search else None
        return plain


def total_steps(train: TrainSpec, batches_per_epoch: int) -> int:
    """The optimizer steps a network's run takes: train.max_steps or epochs × batches, the first reached."""
    limits = [train.max_steps] if train.max_steps else []
    if train.epochs:
        limits.append(train.epochs * batches_per_epoch)
    return min(limits)


def warmup_warning(job: JobSpec, steps: int) -> str | None:
    """What to tell a user whose warmup is not shorter than the run's `steps`; None when it is."""
    warmup = job.schedule.warmup_steps
    if warmup < steps:
        return None
    return (f"schedule.warmup_steps ({warmup}) is not below the run's {steps} steps: the learning rate never "
            f"reaches optim.lr ({job.optim.lr:g}); lower the warmup or train longer")


def resolve_lanes(data_lanes: int | None, max_workers: int) -> int:
    """data.lanes as a built JobSpec holds it: `data_lanes` when set, else max(MIN_LANES, max_workers)."""
    return data_lanes if data_lanes is not None else max(MIN_LANES, max_workers)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


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
    return [key for key in raw if key not in declared or _plain(raw[key]) != _plain(schema_default(schema, key))]


def _check_tree_job(raw: Mapping, p: dict[str, Any], r: Report) -> None:
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


def _check_across(p: dict[str, Any], r: Report) -> None:
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
        _check_tree_job(raw, parts, report)
    _check_across(parts, report)
    if report.problems:
        return None
    spec = JobSpec(name=name, storage=storage, **parts)
    lanes = resolve_lanes(spec.data.lanes, spec.scaling.max_workers)
    return dataclasses.replace(spec, data=dataclasses.replace(spec.data, lanes=lanes))


# ---- public API --------------------------------------------------------------------

def _apply(raw: Mapping, overrides: Sequence[str]) -> tuple[dict, list[str]]:
    result, problems = copy.deepcopy(dict(raw)), []
    for item in overrides:
        try:
            _set(result, item)
        except Bad as bad:
            problems.append(f"--set {item!r}: {bad.message}")
    return result, problems


def _set(root: dict, item: str) -> None:
    key, eq, text = item.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not eq or not all(parts):
        raise Bad("expected key.path=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Bad(f"the value is not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    _set_value(root, parts, value)


def _set_value(root: dict, parts: list[str], value: Any) -> None:
    node = root
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif depth == 0 and part in _SHORTHAND_SECTIONS and isinstance(child, str):
            child = {"name": child}  # `loss: mse` with `--set loss.huber_delta=2`
        elif isinstance(child, Mapping):
            child = dict(child)
        else:
            raise Bad(f"'{'.'.join(parts[:depth + 1])}' is {describe(child)}, not a mapping, "
                       f"so it cannot hold '{parts[depth + 1]}'")
        node[part] = node = child
    node[parts[-1]] = value


def with_values(raw: Mapping, values: Mapping[str, Any]) -> dict:
    """A deep copy of `raw` with each dotted key of `values` set to its value (as `--set` would,
    without parsing text); `raw` is untouched. Raises SpecError when a key runs through a value that
    is not a mapping."""
    result, problems = copy.deepcopy(dict(raw)), []
    for key, value in values.items():
        try:
            _set_value(result, [part.strip() for part in key.split(".")], copy.deepcopy(value))
        except Bad as bad:
            problems.append(f"{key}: {bad.message}")
    if problems:
        raise SpecError(problems)
    return result


def apply_overrides(raw: Mapping, overrides: Sequence[str]) -> dict:
    """A deep copy of `raw` with each `a.b.c=value` override set (value parsed as YAML),
    creating mappings on the way; `raw` is untouched. Raises one SpecError naming every
    malformed override. Keys are not checked here: `from_dict` reports unknown ones."""
    result, problems = _apply(raw, overrides)
    if problems:
        raise SpecError(problems)
    return result


def _not_a_mapping(got: str) -> str:
    return f"job file: expected a mapping of sections ({', '.join(['name', *_SECTIONS, 'storage'])}), got {got}"


def from_dict(raw: Mapping, overrides: Sequence[str] = (), source: str | None = None,
              default_name: str | None = None) -> JobSpec:
    """A validated JobSpec from a job file's mapping plus overrides, with data.lanes resolved.
    Raises one SpecError (carrying `source`) that lists every problem found."""
    if not isinstance(raw, Mapping):
        raise SpecError([_not_a_mapping(describe(raw))], source)
    raw, problems = _apply(raw, overrides)
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
