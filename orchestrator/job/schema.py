"""The job file's schema: one frozen dataclass per section, every field documented, units in the names.

Owns each default (written once, in its dataclass: `spec`'s section builders
read them through `fields.Fields`) and the facts every module shares about a
job: which models are trees, which losses are classification
(`CLASSIFICATION_LOSSES`), the early-stopping metrics, how `data.lanes`
resolves (`resolve_lanes`) and how many steps a run takes (`total_steps`).
Reading and validating a job file is `spec`'s; importing this module pulls in
neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.job.columns import ColumnSpec
from orchestrator.job.objectives import MONITORED_METRICS, maximize
from orchestrator.job.search import SearchSpec

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
        job = plain(dataclasses.asdict(self))
        job["search"] = plain(self.search.to_dict()) if self.search else None
        return job


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


def plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
