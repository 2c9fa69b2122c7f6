"""The function every worker of a tree model's group runs: read, boost, validate, report.

Run by Ray Train's XGBoostTrainer or LightGBMTrainer (their backends connect
the group: XGBoost's collective all-reduces histograms, LightGBM runs
data-parallel). It reads as an outline:

    find where to start: the newest verified checkpoint (rank 0 chooses,
        Ray Train's broadcast shares the choice), and the fitted
        preprocessing, fitted along the same merge tree as for networks
        with the nodes shared through the run folder            (resume)
    read on every rank the validation rows and the train probe  (_Booster.__init__)
    hand the library this rank's contiguous share of the training row
        groups (rows with a label): XGBoost bins them a row group at a
        time through its iterator, LightGBM from one matrix     (_shard_batches)
    boost the remaining rounds; after each round                (_after_round)
        add the round's margins to the validation and probe margins
        measure train (probe) and validation metrics, record the round
        early stopping, with patience in rounds
        a checkpoint when the policy says so (every_n_steps rounds, the last)
    at the end: with early stopping's export: best, the booster cut at its
        best round, as the best copy

Every rank holds every validation row and the same probe, and so computes
the same metrics and takes the same decisions with no communication: no rank
ever waits alone in `ray.train.report`. The train metrics are measured on the
probe: every training row when there are at most PROBE_ROWS of them, else
PROBE_ROWS rows from row groups spread evenly over the data.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Iterator

import numpy as np
import pyarrow as pa
import ray.train
import torch

from orchestrator.data import plan as planning
from orchestrator.data.index import DatasetIndex
from orchestrator.data.matrix import TreeMatrix, tree_features, tree_matrix
from orchestrator.data.reader import RowGroupSource
from orchestrator.data.transforms import LabelStats
from orchestrator.errors import DataError
from orchestrator.job import spec
from orchestrator.track.history import History
from orchestrator.track.records import Kind
from orchestrator.train import (
    boosters,
    checkpoint,
    guard,
    metrics,
    models,
    policy,
    reporting,
    resume,
    stopping,
    upload,
)
from orchestrator.train.rehearsal import Rehearsal
from orchestrator.train.watchdog import Watchdog, posting_to

PROBE_ROWS = 65_536  # training rows the train metrics are measured on, at most


def train(config: dict) -> None:
    """Train the tree model of the job in `config` on this rank (the same config as `loop.train`).

    A mistake in the data or the job ends the run as that error without Ray
    Train's retries (train.guard).
    """
    entered_at = time.time()  # the worker group's processes have started and imported everything
    job = spec.from_dict(config["job"])
    board = config["board"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    guard.run_once(board, rank, lambda: _Booster(job, config["index"], config["validation_index"], board,
                                                  rank, world, entered_at))


def probe_rows(index: DatasetIndex, holdout_fraction: float, limit: int = PROBE_ROWS) -> list[tuple[int, np.ndarray]]:
    """(position, local rows) of the train probe: every training row when there are at most `limit`,
    else about `limit` rows — the first training rows of row groups spread evenly over the data."""
    rows = [planning.train_rows(rg.first_row, rg.num_rows, holdout_fraction) for rg in index.row_groups]
    total = sum(len(r) for r in rows)
    if total <= limit:
        return list(enumerate(rows))
    groups = len(rows)
    picked = np.unique(np.linspace(0, groups - 1, num=min(groups, max(1, limit // 512))).astype(int))
    each = -(-limit // len(picked))
    return [(int(p), rows[p][:each]) for p in picked]


def _memory_mb(field: str) -> float | None:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def measure(margins: np.ndarray, labels: np.ndarray, label: LabelStats, loss: spec.LossSpec) -> dict[str, float]:
    """The metrics (train.metrics, in the names networks report) of a booster's `margins` on rows
    with `labels` (as `TreeMatrix` holds them, every row labelled)."""
    outputs = boosters.network_outputs(margins, label)
    targets = boosters.network_labels(labels, label, loss.name)
    regression = label.task == "regression"
    accumulator = metrics.Accumulator(loss, classes=None if regression else len(label.classes),
                                      target_scale=(label.mean, label.std) if regression else None)
    if len(targets):
        accumulator.add(outputs, models.summed_loss(loss)(outputs, targets), targets)
    return accumulator.result(torch.device("cpu"))


def read_matrix(source: RowGroupSource, pre, parts: list[tuple[int, np.ndarray | None]], width: int) -> TreeMatrix:
    """The tree matrix of the given (row group, local rows or None for all) parts, filled in place
    (one copy of the data), keeping only the rows with a label (a class training had)."""
    counts = [source.index.row_groups[p].num_rows if rows is None else len(rows) for p, rows in parts]
    features = np.empty((sum(counts), width), np.float32)
    labels, at = [], 0
    for (position, rows), count in zip(parts, counts):
        labels.append(tree_matrix(pre, source.table(position, rows), out=features[at:at + count]).labels)
        at += count
        pa.default_memory_pool().release_unused()  # the row group's Arrow buffers, back to the OS now
    label_dtype = np.int64 if pre.label.task == "classification" else np.float32
    labels = np.concatenate(labels) if labels else np.zeros(0, label_dtype)
    keep = labels >= 0 if labels.dtype.kind == "i" else ~np.isnan(labels)
    if not keep.all():  # rows without a label (null_labels: drop) or with a class training never had
        features, labels = features[keep], labels[keep]
    return TreeMatrix(features, labels)


def _read(index: DatasetIndex, pre, parts: list[tuple[int, np.ndarray | None]], width: int) -> TreeMatrix:
    """`read_matrix` of `parts` of `index`, through a reader opened and closed for it."""
    source = RowGroupSource(index, None)
    try:
        return read_matrix(source, pre, parts, width)
    finally:
        source.close()


class _Booster:
    """One rank's tree training state; methods follow the module outline."""

    def __init__(self, job, index, validation_index, board, rank, world, entered_at: float | None = None):
        self.job, self.board, self.rank, self.world = job, board, rank, world
        self.entered_at = entered_at
        self.library = boosters.library(job.model.kind)
        self.rss_before_data_mb = _memory_mb("VmRSS")  # code loaded, no data read yet
        storage = ray.train.get_context().get_storage()
        self.fs, self.run_path = storage.storage_filesystem, storage.experiment_fs_path
        collectives = resume.ray_train_collectives(self.fs, self.run_path, rank, world)
        holdout = job.data.validation if isinstance(job.data.validation, float) else 0.0

        self.state = resume.newest_verified(self.fs, self.run_path, rank, self._warn, load=checkpoint.load_trees,
                                            collectives=collectives)
        started = time.perf_counter()
        self.preprocessing, fitted = resume.preprocessing(index, holdout, self.state, self.fs, self.run_path,
                                                          rank, world, collectives)
        self.preprocessing_fit_s = time.perf_counter() - started if fitted else None
        label = self.preprocessing.label
        if job.data.null_labels == "error" and label.null_labels:
            raise DataError(f"{label.null_labels} training row(s) have no '{label.name}' label (data.null_labels: "
                            "error); fill them in, or set data.null_labels: drop to skip them")
        classes = len(label.classes) if label.task == "classification" else None
        if job.loss.name == "bce" and classes != 2:
            raise DataError(f"loss.name: bce needs a label with two classes, but '{label.name}' has {classes} "
                            "in the training rows; use cross_entropy")
        self.objective = self.library.objective(job.loss.name, classes)
        self.features = tree_features(self.preprocessing)

        width = len(self.features.names)
        self.index = index
        self.shard = [(p, planning.train_rows(index.row_groups[p].first_row, index.row_groups[p].num_rows, holdout)
                       if holdout else None) for p in planning.contiguous_share(len(index.row_groups), world, rank)]
        self.probe = _read(index, self.preprocessing, probe_rows(index, holdout), width)
        self.validation = None  # no validation rows: train metrics only
        if validation_index is not None:
            self.validation = _read(validation_index, self.preprocessing,
                                    [(p, None) for p in range(len(validation_index.row_groups))], width)
        elif holdout:
            self.validation = _read(index, self.preprocessing, [
                (p, planning.holdout_rows(rg.first_row, rg.num_rows, holdout)) for p, rg in enumerate(index.row_groups)
            ], width)
        # For throughput: the training rows a round reads, over all ranks.
        self.rows = sum(rg.num_rows - planning.holdout_count(rg.num_rows, holdout) for rg in index.row_groups)
        threads = max(1, int(job.scaling.cpus_per_worker))
        self.params = self.library.params(job.model.options, self.objective, threads, job.train.seed,
                                          job.scaling.use_gpu, world)
        sampled = [key for key in job.model.options if key in boosters.SAMPLING_OPTIONS]
        if sampled and self.state is None:
            self._warn(f"model.options {', '.join(sampled)}: {job.model.kind} restarts its sampler when training "
                       "continues from a checkpoint, so a run that resumes will grow equivalent, not identical, "
                       "trees after the restart")

        self.history = History(self.state.history) if self.state else History()
        self.stopping = stopping.StoppingState(**self.state.stopping) if self.state and self.state.stopping \
            else stopping.StoppingState()
        self.rounds_done = self.state.rounds if self.state else 0
        self.last_checkpoint_round = self.rounds_done
        self.last_checkpoint_time = time.monotonic()
        self.margins: dict[str, np.ndarray] = {}
        self.round_started = time.perf_counter()
        self.uploader = upload.Uploader(self.fs, self.run_path)
        self.rehearsal = Rehearsal(board, rank, job.failure.inject, False) if job.failure.inject else None
        self.watchdog = Watchdog(job.failure.hang_timeout_s, posting_to(board, rank))

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Boost the remaining rounds, then post this rank's digest of the final trees."""
        resumed = self.rounds_done if self.state else None
        self._post(kind=Kind.START, world_size=self.world, resumed_step=resumed, entered_at=self.entered_at,
                   null_labels=self.preprocessing.label.null_labels, preprocessing_fit_s=self.preprocessing_fit_s,
                   missing_values=self.preprocessing.missing_counts())
        self.board.post.remote({"kind": Kind.WORKER, "rank": self.rank, "pid": os.getpid()})
        start, self.state = (self.state.model if self.state else None), None
        left = self.job.model.rounds - self.rounds_done
        self.watchdog.start()
        try:
            if left > 0 and self.stopping.stopped_at_step is None:
                matrix = self.library.train_matrix(self._shard_batches, self.features, self.params)
                self.first_round = self.rounds_done
                self.round_started = time.perf_counter()
                booster = self.library.train(self.params, matrix, left, start, self._after_round)
            else:
                booster = self.library.load(start)
        finally:
            self.watchdog.close()
            self.uploader.close()  # the worker may be torn down once this function returns
        self.board.post.remote({"kind": Kind.FINAL, "rank": self.rank, "step": self.rounds_done,
                                "weights_sha256": self.library.digest(booster), "peak_rss_mb": _memory_mb("VmHWM"),
                                "rss_before_data_mb": self.rss_before_data_mb})

    def _shard_batches(self) -> Iterator[TreeMatrix]:
        """A pass over this rank's training rows with a label: a matrix per row group when the library
        streams them (boosters.XGBoost.streams), else one matrix."""
        source, width = RowGroupSource(self.index, None), len(self.features.names)
        try:
            if not self.library.streams:
                yield read_matrix(source, self.preprocessing, self.shard, width)
                return
            for part in self.shard:
                self.watchdog.beat("reading its training rows", self.rounds_done)
                yield read_matrix(source, self.preprocessing, [part], width)
        finally:
            source.close()

    def _after_round(self, booster, round_index: int) -> bool:
        """Measure, record and maybe checkpoint round `round_index`; True to stop boosting now."""
        seconds = time.perf_counter() - self.round_started
        self.rounds_done = round_index + 1
        self.watchdog.beat("measuring and checkpointing a round", self.rounds_done)
        if self.rehearsal is not None:  # failure.inject: the rank dies once the round is trained
            self.rehearsal.maybe_fail(self.rounds_done)
        if round_index == self.first_round:
            self._post(kind=Kind.FIRST_STEP)
        train_metrics = self._measure(booster, round_index, "probe", self.probe)
        validation = self._measure(booster, round_index, "validation", self.validation) if self.validation else {}
        rate = self.rows / max(seconds, 1e-9)
        values = {"epoch/train_loss": train_metrics["loss"], "epoch/samples_per_s": rate}
        values.update({f"val/{name}": value for name, value in validation.items()})
        rows = self.history.add(self.rounds_done, round_index, values, time.time())
        verdict = None
        if self.job.early_stopping:
            value = stopping.metric_value(self.job.early_stopping.metric, train_metrics, validation)
            verdict = stopping.update(self.job.early_stopping, self.stopping, value, self.rounds_done, round_index)
        stop = bool(verdict and verdict.stop)
        self._post(kind=Kind.EPOCH, epoch=round_index, complete=True, step=self.rounds_done,
                   samples=self.rows * self.rounds_done, train=train_metrics, validation=validation,
                   samples_per_s=round(rate, 1), dropped_rows=0, rows=rows,
                   stopping=self.stopping.to_dict() if verdict else None)
        last = stop or self.rounds_done == self.job.model.rounds
        reported = {"step": self.rounds_done, "epoch": round_index, "train_loss": train_metrics["loss"],
                    **{f"val_{k}": v for k, v in validation.items()}}
        if self._checkpoint_due(last):
            self._checkpoint(booster, reported)
        if last:
            self._export_best(booster)
        if stop:
            self._post(kind=Kind.STOPPED_EARLY, step=self.rounds_done, epoch=round_index, **self.stopping.to_dict())
        self.round_started = time.perf_counter()
        self.watchdog.beat("boosting a round", self.rounds_done + 1)
        return stop

    def _measure(self, booster, round_index: int, name: str, data: TreeMatrix) -> dict[str, float]:
        """The metrics (train.metrics, as for networks) of the margins after `round_index` on `data`."""
        if name not in self.margins:  # the first round of this group: every tree so far, once
            self.margins[name] = self.library.margins(booster, data.features).astype(np.float64)
        else:
            self.margins[name] += self.library.round_margins(booster, data.features, round_index)
        return measure(self.margins[name], data.labels, self.preprocessing.label, self.job.loss)

    # -- checkpoints --------------------------------------------------------

    def _checkpoint_due(self, last: bool) -> bool:
        """The checkpoint policy's verdict on this round: the same on every rank."""
        timer_due = None
        if self.job.checkpoint.every_n_seconds:  # rank 0's clock decides; Ray Train's broadcast shares it
            elapsed = time.monotonic() - self.last_checkpoint_time
            due = elapsed >= self.job.checkpoint.every_n_seconds if self.rank == 0 else None
            timer_due = self.rounds_done if ray.train.collective.broadcast_from_rank_zero(due) else None
        return policy.checkpoint_reason(self.job.checkpoint, policy.Moment(
            step=self.rounds_done, last_checkpoint_step=self.last_checkpoint_round, epoch_end=last,
            timer_due_step=timer_due)) is not None

    def _save(self, booster, rounds: int, directory: str | None = None) -> str:
        """Write the booster (its first `rounds` rounds) and the run's state into a new local directory."""
        directory = directory or tempfile.mkdtemp(prefix="orchestrator-checkpoint-")
        model = booster if rounds == self.rounds_done else self._cut(booster, rounds)
        checkpoint.save_trees(checkpoint.TreeState(
            model=self.library.to_bytes(model), model_file=self.library.model_file, rounds=rounds,
            world_size=self.world, job=self.job.to_dict(), history=self.history.table(),
            preprocessing=self.preprocessing.to_json(), stopping=self.stopping.to_dict()), directory)
        return directory

    def _cut(self, booster, rounds: int):
        """The booster's first `rounds` rounds, as its own booster."""
        if self.library.model_file == boosters.XGBoost.model_file:
            return booster[:rounds]
        return self.library.load(booster.model_to_string(num_iteration=rounds).encode())

    def _checkpoint(self, booster, reported: dict) -> None:
        """Rank 0 saves the booster and state; every rank reports to Ray Train."""
        self.last_checkpoint_round, self.last_checkpoint_time = self.rounds_done, time.monotonic()
        directory = self._save(booster, self.rounds_done) if self.rank == 0 else None
        reporting.report(reported, directory, step=self.rounds_done, samples=self.rows * self.rounds_done,
                         uploader=self.uploader, post=self._post)

    def _export_best(self, booster) -> None:
        """With early stopping's export: best, rank 0 uploads the booster cut at its best round as the best copy."""
        spec = self.job.early_stopping
        best = self.stopping.best_step
        if self.rank != 0 or not spec or spec.export != "best" or best is None:
            return
        reporting.upload_best(self.uploader, self._save(booster, best), best, self._post)

    # -- helpers ------------------------------------------------------------


    def _warn(self, message: str) -> None:
        self._post(kind=Kind.WARNING, message=message)

    def _post(self, **record) -> None:
        if self.rank == 0 or record["kind"] == Kind.FATAL:
            self.board.post.remote(record)
