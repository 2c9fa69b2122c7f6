"""The function every Ray Train worker runs: build, restore, step, validate, report.

This is the only code that runs inside workers. It reads as an outline:

    find where to start: the newest checkpoint in the run folder whose
        manifest verifies, and the fitted preprocessing (from it, or
        fitted across the ranks on a new run)                      (resume)
    build the model, optimizer, schedule and reader                 (_Worker.__init__)
    restore the checkpoint's state, or start fresh                  (_restore)
    for each global batch: forward → backward (DDP all-reduce) → step
        every train.log_every_n_steps: reduce the train loss across
            ranks, post progress, agree on the checkpoint timer     (_log)
        when the checkpoint policy says so: save and report one    (_checkpoint)
    at each epoch's end: validate (reduced across ranks), early
        stopping, and a checkpoint                                  (_end_epoch)

Ray calls stay in `train()`, `_preempted()` and `reporting.report`. Collective calls
(all-reduce, `ray.train.report`, `get_preemption_info`) are made by every
rank at the same step, on decisions every rank computes identically
(`policy.checkpoint_reason` on shared values), so no rank waits alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field

import ray.train
import ray.train.torch
import torch

from orchestrator.data.plan import Layout
from orchestrator.data.reader import (
    EndOfEpoch,
    ShardReader,
    decoded_mb,
    default_prefetch,
    validation_batches,
)
from orchestrator.data.transforms import VALUE_BOUND
from orchestrator.errors import DataError
from orchestrator.job import spec
from orchestrator.track.history import History
from orchestrator.track.records import Kind
from orchestrator.train import (
    checkpoint,
    guard,
    metrics,
    models,
    optim,
    policy,
    reporting,
    resume,
    stopping,
    upload,
)
from orchestrator.train.distributed import all_reduce_sum, reseed, weights_digest
from orchestrator.train.rehearsal import Rehearsal
from orchestrator.train.watchdog import Watchdog, posting_to

_VALIDATION_BATCH_ROWS = 8192
# How often (by rank 0's clock) a log point asks Ray Train whether the group is being preempted: the
# question is a barrier through Ray Train's synchronization actor (~1.5 ms), and notices come minutes ahead.
_PREEMPTION_CHECK_INTERVAL_S = 1.0


@dataclass
class _Progress:
    """What this rank trained since the last log point and over the current epoch."""

    step_losses: list[float] = field(default_factory=list)  # this rank's loss sum of each step
    step_lrs: list[float] = field(default_factory=list)  # the learning rate each step used
    log_started: float = field(default_factory=time.perf_counter)
    epoch_loss: float = 0.0
    epoch_rows: int = 0
    epoch_started: float = field(default_factory=time.perf_counter)


def train(config: dict) -> None:
    """Train the job in `config` on this rank.

    `config` holds the resolved job ("job", a dict), the training and validation
    DatasetIndex ("index", "validation_index"), the driver's RunBoard handle
    ("board") and, for audits of the sample order, "audit_samples" (post every
    step's row ids). A mistake in the data or the job that every rank finds
    alike, or one a rank meets alone while training, ends the run as that
    error without Ray Train's retries (train.guard).
    """
    entered_at = time.time()  # the worker group's processes have started and imported everything
    job = spec.from_dict(config["job"])
    board = config["board"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    rehearsal = None
    if job.failure.inject or config.get("audit_samples"):
        rehearsal = Rehearsal(board, rank, job.failure.inject, bool(config.get("audit_samples")))
    guard.run_once(board, rank, lambda: _Worker(job, config["index"], config["validation_index"], board, rank,
                                                 world, ray.train.torch.get_device(), rehearsal, entered_at))


class _Worker:
    """One rank's training state; methods follow the loop's outline."""

    def __init__(self, job, index, validation_index, board, rank, world, device, rehearsal=None,
                 entered_at: float | None = None):
        self.job, self.index, self.validation_index = job, index, validation_index
        self.entered_at = entered_at
        # Seconds the training thread spent validating and checkpointing (summary.json's phases).
        self.validation_s = self.checkpoint_s = 0.0
        self.board, self.rank, self.world, self.device = board, rank, world, device
        self.rehearsal = rehearsal
        self.layout = Layout.for_job(job)
        storage = ray.train.get_context().get_storage()
        self.storage_fs, self.run_path = storage.storage_filesystem, storage.experiment_fs_path

        # Where to start: a checkpoint's state (restored in run()) and the fitted preprocessing.
        self.resume_state = resume.newest_verified(self.storage_fs, self.run_path, rank, self._warn)
        started = time.perf_counter()
        self.preprocessing, fitted = resume.preprocessing(index, self.layout.holdout_fraction, self.resume_state,
                                                          self.storage_fs, self.run_path, rank, world)
        self.preprocessing_fit_s = time.perf_counter() - started if fitted else None
        label = self.preprocessing.label
        if job.data.null_labels == "error" and label.null_labels:
            raise DataError(f"{label.null_labels} training row(s) have no '{label.name}' label (data.null_labels: "
                            "error); fill them in, or set data.null_labels: drop to skip them")
        label_dtype = models.label_dtype(job.loss)
        # Small data is decoded once and kept (training and validation rows alike); see data.reader.
        self.resident = (decoded_mb(index, self.preprocessing, label_dtype)
                         + decoded_mb(validation_index, self.preprocessing, label_dtype)) <= job.data.in_memory_mb
        self.resident_validation: list | None = None
        self.summed_loss = models.summed_loss(job.loss, masked=label.null_labels > 0)
        self.loss_scale = metrics.loss_scale(job.loss, label.std if label.task == "regression" else None)

        # Identical initial weights on every rank (DDP also broadcasts rank 0's).
        torch.manual_seed(job.train.seed)
        inputs = self.preprocessing.input_description()
        self.net = models.build_model(job.model, job.loss, inputs, models.output_size(job, inputs)).to(device)
        self.optimizer = optim.build_optimizer(job.optim, self.net.parameters())
        self.parameters = list(self.net.parameters())  # walking the modules each step costs ~50 µs
        self.reader = ShardReader(
            index,
            self.layout,
            self.preprocessing,
            world_size=world,
            rank=rank,
            label_dtype=label_dtype,
            prefetch_batches=(job.data.prefetch_batches if job.data.prefetch_batches is not None
                              else default_prefetch(index.url, device.type)),
            pin_memory=device.type == "cuda",
            resident=self.resident,
        )
        first_epoch = self.reader.plan(0)
        self.batches_per_epoch, self.dropped_rows = first_epoch.batches, first_epoch.dropped
        self.scheduler = optim.build_scheduler(job.schedule, self.optimizer, self.total_steps)
        warmup = spec.warmup_warning(job, self.total_steps)
        if warmup and self.resume_state is None:
            self._warn(warmup)
        self.model = ray.train.torch.prepare_model(
            self.net,
            parallel_strategy_kwargs={
                "bucket_cap_mb": job.train.ddp_bucket_cap_mb,
                "find_unused_parameters": job.train.find_unused_parameters,
            },
        )
        if job.train.compile:
            self.model = torch.compile(self.model)

        self.uploader = upload.Uploader(self.storage_fs, self.run_path)
        self.watchdog = Watchdog(job.failure.hang_timeout_s, posting_to(board, rank))

        # Everything below is what a checkpoint restores.
        self.step, self.samples = 0, 0
        self.history = History()
        self.stopping = stopping.StoppingState()
        self.last_checkpoint_step = 0
        # The checkpoint timer: shared by every rank through the log-point all-reduce.
        self.last_checkpoint_time = time.monotonic()
        self.seconds_per_step = 0.0
        self.timer_due_step: int | None = None
        self.preempted = self.preemption_handled = False
        self.last_preemption_check = time.monotonic()

    @property
    def total_steps(self) -> int:
        return spec.total_steps(self.job.train, self.batches_per_epoch)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Restore, train to the end, and post this rank's final weights digest."""
        resumed_step = self._restore()
        self._post(kind=Kind.START, world_size=self.world, resumed_step=resumed_step, entered_at=self.entered_at,
                   null_labels=self.preprocessing.label.null_labels, preprocessing_fit_s=self.preprocessing_fit_s,
                   missing_values=self.preprocessing.missing_counts())
        self.board.post.remote({"kind": Kind.WORKER, "rank": self.rank, "pid": os.getpid()})
        if not self.job.train.compile:  # else from the first step on: compiling it takes as long as it takes
            self.watchdog.start()
        try:
            finished = self._train_to_the_end(first_step=(resumed_step or 0) + 1)
        finally:
            self.watchdog.close()
            self.reader.close()
            self.uploader.close()  # the worker may be torn down once this function returns
        if finished:
            # Every rank posts a digest of its weights: DDP keeps replicas identical,
            # and the driver refuses to call a run finished if they are not.
            self.board.post.remote({"kind": Kind.FINAL, "rank": self.rank, "step": self.step,
                                    "weights_sha256": weights_digest(self.net.state_dict()),
                                    "validation_s": self.validation_s, "checkpoint_s": self.checkpoint_s})

    def _train_to_the_end(self, first_step: int) -> bool:
        """Step until the last step; False if stopped by a non-finite gradient (the driver reports it)."""
        progress = _Progress()
        while self.step < self.total_steps and self.stopping.stopped_at_step is None:
            self.watchdog.beat("reading the next batch", self.step + 1)
            try:
                batch = self.reader.next_batch()
            except EndOfEpoch:
                if progress.epoch_rows:
                    self._end_epoch(progress)
                progress = _Progress()
                continue
            if self.rehearsal is not None:  # its hang rehearses a stuck read: before the step's beat
                self.rehearsal.before_step(self.step, self.reader.state().epoch, batch)
            self.watchdog.beat("training a step (forward, backward, gradient all-reduce)", self.step + 1)
            if not self._train_step(batch, progress):
                return False  # every rank saw the same non-finite gradient
            if self.step == first_step:
                self._post(kind=Kind.FIRST_STEP)
                self.watchdog.start()
            if len(progress.step_losses) >= self.job.train.log_every_n_steps:
                self._log(progress)
            # On an epoch's last step the epoch-end checkpoint follows at once and
            # holds everything (epoch metrics, early-stopping state).
            epoch_end_follows = (self.reader.state().batch == self.batches_per_epoch
                                 or self.step == self.total_steps)
            if not epoch_end_follows and self._checkpoint_reason() is not None:
                self._checkpoint({"step": self.step})
        if progress.epoch_rows:  # stopped by max_steps, or on an epoch's last batch
            self._end_epoch(progress)
        return True

    def _train_step(self, batch, progress: _Progress) -> bool:
        """One optimizer step on this rank's part of a global batch; False if gradients are not finite."""
        reseed(self.job.train.seed, self.step, self.rank, self.device)
        # Each rank's loss is its row sum × world / global batch; DDP's mean over
        # ranks then gives the mean over the global batch whatever each rank's share.
        scale = self.world / self.job.train.batch_size
        parts = (batch.numeric, batch.codes, batch.labels)
        accum = self.job.train.grad_accum_steps
        micro_batches = list(zip(*(t.tensor_split(accum) for t in parts))) if accum > 1 else [parts]
        loss_sum = None
        for i, (numeric, codes, labels) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # Only the last micro-batch all-reduces; the others accumulate locally.
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, self._autocast():
                outputs = self.model(numeric.to(self.device, non_blocking=True),
                                     codes.to(self.device, non_blocking=True))
                loss = self.summed_loss(outputs.float(), labels.to(self.device, non_blocking=True))
                (loss * scale).backward()
            loss_sum = loss.detach().double() if loss_sum is None else loss_sum + loss.detach()
        parameters = [p for p in self.parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if not torch.isfinite(norm):  # gradients are all-reduced, so every rank agrees here
            self._report_non_finite(batch, loss_sum)
            return False
        if self.job.train.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(parameters, self.job.train.grad_clip, norm)
        progress.step_lrs.append(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.samples += self.job.train.batch_size
        progress.step_losses.append(float(loss_sum))
        progress.epoch_loss += progress.step_losses[-1]
        progress.epoch_rows += len(batch)
        return True

    def _log(self, progress: _Progress) -> None:
        """Reduce each step's train loss since the last log point across ranks; record and post them.

        The same all-reduce carries rank 0's checkpoint-timer figures, so every
        rank projects the same timer step, and rank 0's time since it last asked
        Ray Train whether the group is being preempted, so every rank asks again
        together once that is due.
        """
        self.watchdog.beat("reducing the train loss across ranks", self.step)
        elapsed = time.perf_counter() - progress.log_started
        tick = time.monotonic()
        clocks = [tick - self.last_checkpoint_time, elapsed / len(progress.step_losses),
                  tick - self.last_preemption_check]
        *loss_sums, since_checkpoint, per_step, since_preemption_check = all_reduce_sum(
            [*progress.step_losses, *(clocks if self.rank == 0 else [0.0] * len(clocks))], self.device)
        self.seconds_per_step = per_step
        self.timer_due_step = policy.timer_due_step(self.job.checkpoint, self.step, since_checkpoint, per_step)
        if since_preemption_check >= _PREEMPTION_CHECK_INTERVAL_S and not self.preemption_handled:
            self.last_preemption_check = tick
            self.preempted = self.preempted or self._preempted()
        batch, now = self.job.train.batch_size, time.time()
        epoch, first = self._epoch_in_progress(), self.step - len(loss_sums) + 1
        rows = []
        for offset, (loss_sum, lr) in enumerate(zip(loss_sums, progress.step_lrs)):
            rows += self.history.add(first + offset, epoch, {"train/loss": self._mean_loss(loss_sum), "train/lr": lr}, now)
        rate = len(loss_sums) * batch / max(elapsed, 1e-9)
        rows += self.history.add(self.step, epoch, {"train/samples_per_s": rate}, now)
        self._post(kind=Kind.LOG, step=self.step, epoch=epoch, samples=self.samples, rows=rows,
                   loss=self._mean_loss(sum(loss_sums)) / len(loss_sums), lr=progress.step_lrs[-1],
                   samples_per_s=round(rate, 1), steps_per_epoch=self.batches_per_epoch,
                   total_steps=self.total_steps)
        progress.step_losses, progress.step_lrs, progress.log_started = [], [], time.perf_counter()

    def _mean_loss(self, loss_sum: float) -> float:
        """A step's loss summed over its global batch → the mean, in the label's units."""
        return loss_sum * self.loss_scale / self.job.train.batch_size

    def _epoch_in_progress(self) -> int:
        cursor = self.reader.state()  # after an epoch's last batch the cursor is already at the next one
        return cursor.epoch - 1 if cursor.batch == 0 else cursor.epoch

    def _end_epoch(self, progress: _Progress) -> None:
        """Validate, record the epoch's metrics, maybe stop early, report a checkpoint (all ranks together)."""
        if progress.step_losses:
            self._log(progress)  # every step's loss is recorded before the epoch's row
        cursor, epoch = self.reader.state(), self._epoch_in_progress()
        complete = cursor.batch in (0, self.batches_per_epoch)
        self.watchdog.beat("reducing the epoch's metrics across ranks", self.step)
        # Rank 0's time since the newest checkpoint travels in the same all-reduce: every rank decides alike.
        since_checkpoint = time.monotonic() - self.last_checkpoint_time if self.rank == 0 else 0.0
        loss, rows, since_checkpoint = all_reduce_sum([progress.epoch_loss, progress.epoch_rows, since_checkpoint],
                                                      self.device)
        rate = rows / max(time.perf_counter() - progress.epoch_started, 1e-9)  # training only, not validation
        train_metrics = {"loss": loss / max(rows, 1) * self.loss_scale}
        started = time.perf_counter()
        validation = self._validate()
        self.validation_s += time.perf_counter() - started
        values = {"epoch/train_loss": train_metrics["loss"], "epoch/samples_per_s": rate}
        values.update({f"val/{name}": value for name, value in validation.items()})
        history_rows = self.history.add(self.step, epoch, values, time.time())
        verdict = None
        if self.job.early_stopping:
            value = stopping.metric_value(self.job.early_stopping.metric, train_metrics, validation)
            verdict = stopping.update(self.job.early_stopping, self.stopping, value, self.step, epoch)
        self._post(kind=Kind.EPOCH, epoch=epoch, complete=complete, step=self.step, samples=self.samples,
                   train=train_metrics, validation=validation, samples_per_s=round(rate, 1),
                   dropped_rows=self.dropped_rows, rows=history_rows,
                   stopping=self.stopping.to_dict() if verdict else None)
        metrics = {"step": self.step, "epoch": epoch, "train_loss": train_metrics["loss"]}
        metrics.update({f"val_{k}": v for k, v in validation.items()})
        last = self.step == self.total_steps or bool(verdict and verdict.stop)
        improved = bool(verdict and verdict.improved)
        if self._checkpoint_reason(epoch_end=True, last=last, since_checkpoint=since_checkpoint) is not None:
            self._checkpoint(metrics, best=improved)
        elif improved and self.rank == 0:  # coalesced: early stopping's best copy is still kept
            reporting.upload_best(self.uploader, self._save_state(), self.step, self._post)
        if verdict and verdict.stop:
            self._post(kind=Kind.STOPPED_EARLY, step=self.step, epoch=epoch, **self.stopping.to_dict())

    def _validate(self) -> dict[str, float]:
        """Validation metrics over every labelled validation row, reduced across all ranks."""
        source = self.validation_index or (self.index if self.layout.holdout_fraction else None)
        if source is None:
            return {}
        label = self.preprocessing.label
        accumulator = metrics.Accumulator(
            self.job.loss, classes=len(label.classes) if label.task == "classification" else None,
            target_scale=(label.mean, label.std) if label.task == "regression" else None)
        masked_loss = models.summed_loss(self.job.loss, masked=True)
        batches = self.resident_validation or validation_batches(
            source,
            self.preprocessing,
            world_size=self.world,
            rank=self.rank,
            batch_rows=_VALIDATION_BATCH_ROWS,
            holdout_fraction=None if self.validation_index else self.layout.holdout_fraction,
            label_dtype=models.label_dtype(self.job.loss),
        )
        if self.resident and self.resident_validation is None:
            batches = self.resident_validation = list(batches)
        self.net.eval()
        with torch.no_grad(), self._autocast():
            for batch in batches:
                self.watchdog.beat("validating", self.step)
                keep = models.labelled(batch.labels)  # rows without a label (or an unseen class) do not count
                outputs = self.net(batch.numeric[keep].to(self.device), batch.codes[keep].to(self.device))
                labels = batch.labels[keep].to(self.device)
                accumulator.add(outputs, masked_loss(outputs.float(), labels), labels)
        self.net.train()
        self.watchdog.beat("reducing the validation metrics across ranks", self.step)
        return accumulator.result(self.device)

    # -- resume -------------------------------------------------------------

    def _restore(self) -> int | None:
        """Continue from the checkpoint chosen at construction (resume.newest_verified): its step, or None."""
        state, self.resume_state = self.resume_state, None
        if state is None:
            return None
        self.history = History(state.history)
        self.stopping = stopping.StoppingState(**state.stopping) if state.stopping else stopping.StoppingState()
        self.net.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.reader.restore(state.cursor)
        self.step, self.samples = state.step, state.samples
        self.last_checkpoint_step = state.step
        return state.step

    # -- checkpoints --------------------------------------------------------

    def _checkpoint_reason(self, epoch_end: bool = False, last: bool = False,
                           since_checkpoint: float = 0.0) -> str | None:
        """The checkpoint policy's verdict on the current step (the same on every rank)."""
        return policy.checkpoint_reason(self.job.checkpoint, policy.Moment(
            step=self.step, last_checkpoint_step=self.last_checkpoint_step, epoch_end=epoch_end, last=last,
            seconds_since_checkpoint=since_checkpoint,
            preempted=self.preempted, timer_due_step=self.timer_due_step))

    def _preempted(self) -> bool:
        """True when Ray Train signals that a node of this group is about to be reclaimed; `_log` stops
        asking once it has (`preemption_handled`).

        `get_preemption_info` is a barrier: every rank calls it at the same log point (`_log`).
        """
        info = ray.train.get_preemption_info()
        if info is None:
            return False
        self.preemption_handled = True
        self._post(kind=Kind.WARNING, message=f"nodes {info.preempted_node_ids} are being preempted "
                   f"(ranks {info.preempted_ranks}); taking a checkpoint now at step {self.step}")
        return True

    def _checkpoint(self, metrics: dict, best: bool = False) -> None:
        """Checkpoint the current state: rank 0 saves it, every rank reports it to Ray Train."""
        started = time.perf_counter()
        self.watchdog.beat("checkpointing (saving, reporting, waiting for the previous upload)", self.step)
        self.last_checkpoint_step, self.last_checkpoint_time = self.step, time.monotonic()
        self.timer_due_step = policy.timer_due_step(self.job.checkpoint, self.step, 0.0, self.seconds_per_step)
        self.preempted = False
        directory = self._save_state() if self.rank == 0 else None
        reporting.report(metrics, directory, step=self.step, samples=self.samples, uploader=self.uploader,
                         post=self._post, best=best)
        self.checkpoint_s += time.perf_counter() - started

    def _save_state(self) -> str:
        """Write everything needed to continue exactly from here into a new local directory."""
        directory = tempfile.mkdtemp(prefix="orchestrator-checkpoint-")
        checkpoint.save(checkpoint.TrainState(
            model=self.net.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            cursor=self.reader.state(),
            step=self.step,
            samples=self.samples,
            world_size=self.world,
            job=self.job.to_dict(),
            history=self.history.table(),
            preprocessing=self.preprocessing.to_json(),
            stopping=self.stopping.to_dict(),
        ), directory)
        return directory

    # -- helpers ------------------------------------------------------------

    def _autocast(self):
        if self.job.train.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _report_non_finite(self, batch, loss_sum: torch.Tensor) -> None:
        """Post why this step's gradient norm is not finite: the inputs (a numeric input column past
        the bound of scaled values, on any rank) or the optimization. A collective: every rank is here."""
        names = self.preprocessing.input_description().numeric_names
        largest = batch.numeric.abs().amax(dim=0).tolist() if batch.numeric.numel() else []
        extreme = [(value, names[i]) for i, value in enumerate(largest) if not value <= VALUE_BOUND]
        ranks_with_extreme_inputs, = all_reduce_sum([float(bool(extreme))], self.device)
        where = f"training stopped at step {self.step + 1} (epoch {self.reader.state().epoch}): the gradient norm is "
        if extreme:
            value, name = max(extreme)
            self._post(kind=Kind.FATAL, message=(
                f"{where}not finite, and the inputs are the cause: numeric input '{name}' reaches {value:.3g} "
                f"in rank {self.rank}'s part of the batch, beyond what a scaled column holds (±{VALUE_BOUND:g}). "
                f"Scale it (data.columns: {{{name.split('__')[0]}: standard}}, or robust/log1p for a long tail). "
                "No checkpoint was written with these weights."))
        elif self.rank == 0 and not ranks_with_extreme_inputs:
            weights = max((float(p.detach().abs().max()) for p in self.net.parameters() if p.numel()), default=0.0)
            self._post(kind=Kind.FATAL, message=(
                f"{where}not finite, and the optimization is the cause: every input of the step is finite and "
                f"scaled (within ±{VALUE_BOUND:g}), while the loss sum is {float(loss_sum):g} and the largest "
                f"weight {weights:.3g}. Lower optim.lr (now {self.job.optim.lr:g}) or set train.grad_clip. "
                "No checkpoint was written with these weights."))

    def _warn(self, message: str) -> None:
        self._post(kind=Kind.WARNING, message=message)


    def _post(self, **record) -> None:
        if self.rank == 0 or record["kind"] == Kind.FATAL:
            self.board.post.remote(record)

