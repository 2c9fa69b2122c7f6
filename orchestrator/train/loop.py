"""The function every Ray Train worker runs: build, restore, step, validate, report.

This is the only code that runs inside workers. It reads as an outline:

    build the model, optimizer, schedule and reader                 (_Worker.__init__)
    restore: continue from the newest checkpoint in the run folder
             whose manifest verifies, else start fresh              (_restore)
    for each global batch: forward → backward (DDP all-reduce) → step
        every train.log_every_n_steps: reduce the train loss across
            ranks, post progress, agree on the checkpoint timer     (_log)
        when the checkpoint policy says so: save and report one    (_checkpoint)
    at each epoch's end: validate (reduced across ranks), early
        stopping, and a checkpoint                                  (_end_epoch)

Ray calls stay in `train()`, `_preempted()` and `_report()`. Collective calls
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
import torch.distributed as dist

from orchestrator.data.plan import Layout
from orchestrator.data.reader import (
    EndOfEpoch,
    ShardReader,
    default_prefetch,
    validation_batches,
)
from orchestrator.errors import CheckpointError
from orchestrator.job import spec
from orchestrator.track.history import History
from orchestrator.track.records import Kind
from orchestrator.train import checkpoint, models, optim, policy, stopping
from orchestrator.train.distributed import all_reduce_sum, reseed, weights_digest

_VALIDATION_BATCH_ROWS = 8192


@dataclass
class _Progress:
    """What this rank trained since the last log point and over the current epoch."""

    step_losses: list[float] = field(default_factory=list)  # this rank's loss sum of each step
    step_lrs: list[float] = field(default_factory=list)  # the learning rate each step used
    log_started: float = field(default_factory=time.perf_counter)
    epoch_loss: float = 0.0
    epoch_rows: int = 0
    epoch_started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Rehearsal:
    """Test and rehearsal hooks, called before a step only when a job asks for one.

    `fault` makes rank `fault.rank` call os._exit once (failure.inject); with
    `audit_samples` every rank posts the row ids it trains on at each step.
    """

    board: object
    rank: int
    fault: spec.FaultInjection | None
    audit_samples: bool

    def before_step(self, step: int, epoch: int, batch) -> None:
        if self.audit_samples:
            self.board.post.remote({"kind": Kind.SAMPLES, "rank": self.rank, "step": step + 1,
                                    "epoch": epoch, "ids": batch.ids.tolist()})
        fault = self.fault
        if fault and self.rank == fault.rank and step + 1 == fault.exit_at_step:
            if ray.get(self.board.claim_fault.remote()):
                os._exit(1)  # a rehearsal of a dead worker: no cleanup, like a real crash


def train(config: dict) -> None:
    """Train the job in `config` on this rank.

    `config` holds the resolved job ("job", a dict), the training and validation
    DatasetIndex ("index", "validation_index"), the model's output size
    ("outputs"), the driver's RunBoard handle ("board") and, for audits of the
    sample order, "audit_samples" (post every step's row ids).
    """
    job = spec.from_dict(config["job"])
    board = config["board"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    rehearsal = None
    if job.failure.inject or config.get("audit_samples"):
        rehearsal = _Rehearsal(board, rank, job.failure.inject, bool(config.get("audit_samples")))
    worker = _Worker(job, config["index"], config["validation_index"], config["outputs"], board, rank, world,
                     ray.train.torch.get_device(), rehearsal)
    worker.run()


class _Worker:
    """One rank's training state; methods follow the loop's outline."""

    def __init__(self, job, index, validation_index, outputs, board, rank, world, device, rehearsal=None):
        self.job, self.index, self.validation_index = job, index, validation_index
        self.board, self.rank, self.world, self.device = board, rank, world, device
        self.rehearsal = rehearsal
        self.layout = Layout.for_job(job)
        self.summed_loss = models.summed_loss(job.loss)

        # Identical initial weights on every rank (DDP also broadcasts rank 0's).
        torch.manual_seed(job.train.seed)
        self.net = models.build_model(job.model, len(index.features), outputs).to(device)
        self.optimizer = optim.build_optimizer(job.optim, self.net.parameters())
        self.reader = ShardReader(
            index,
            self.layout,
            world_size=world,
            rank=rank,
            label_dtype=models.label_dtype(job.loss),
            prefetch_batches=(job.data.prefetch_batches if job.data.prefetch_batches is not None
                              else default_prefetch(index.url, device.type)),
            pin_memory=device.type == "cuda",
        )
        first_epoch = self.reader.plan(0)
        self.batches_per_epoch, self.dropped_rows = first_epoch.batches, first_epoch.dropped
        self.scheduler = optim.build_scheduler(job.schedule, self.optimizer, self.total_steps)
        self.model = ray.train.torch.prepare_model(
            self.net,
            parallel_strategy_kwargs={
                "bucket_cap_mb": job.train.ddp_bucket_cap_mb,
                "find_unused_parameters": job.train.find_unused_parameters,
            },
        )
        if job.train.compile:
            self.model = torch.compile(self.model)

        storage = ray.train.get_context().get_storage()
        self.storage_fs, self.run_path = storage.storage_filesystem, storage.experiment_fs_path
        self.uploader = checkpoint.Uploader(self.storage_fs, self.run_path)

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

    @property
    def total_steps(self) -> int:
        limits = [self.job.train.max_steps] if self.job.train.max_steps else []
        if self.job.train.epochs:
            limits.append(self.job.train.epochs * self.batches_per_epoch)
        return min(limits)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Restore, train to the end, and post this rank's final weights digest."""
        resumed_step = self._restore()
        self._post(kind=Kind.START, world_size=self.world, resumed_step=resumed_step)
        self.board.post.remote({"kind": Kind.WORKER, "rank": self.rank, "pid": os.getpid()})
        try:
            finished = self._train_to_the_end(first_step=(resumed_step or 0) + 1)
        finally:
            self.reader.close()
            self.uploader.close()  # the worker may be torn down once this function returns
        if finished:
            # Every rank posts a digest of its weights: DDP keeps replicas identical,
            # and the driver refuses to call a run finished if they are not.
            self.board.post.remote({"kind": Kind.FINAL, "rank": self.rank, "step": self.step,
                                    "weights_sha256": weights_digest(self.net.state_dict())})

    def _train_to_the_end(self, first_step: int) -> bool:
        """Step until the last step; False if stopped by a non-finite gradient (the driver reports it)."""
        progress = _Progress()
        while self.step < self.total_steps and self.stopping.stopped_at_step is None:
            try:
                batch = self.reader.next_batch()
            except EndOfEpoch:
                if progress.epoch_rows:
                    self._end_epoch(progress)
                progress = _Progress()
                continue
            if self.rehearsal is not None:
                self.rehearsal.before_step(self.step, self.reader.state().epoch, batch)
            if not self._train_step(batch, progress):
                return False  # every rank saw the same non-finite gradient
            if self.step == first_step:
                self._post(kind=Kind.FIRST_STEP)
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
        micro_batches = list(zip(*(t.tensor_split(self.job.train.grad_accum_steps) for t in
                                   (batch.features, batch.labels))))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (features, labels) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # Only the last micro-batch all-reduces; the others accumulate locally.
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, self._autocast():
                outputs = self.model(features.to(self.device, non_blocking=True))
                loss = self.summed_loss(outputs.float(), labels.to(self.device, non_blocking=True))
                (loss * scale).backward()
            loss_sum += loss.detach()
        parameters = [p for p in self.net.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if not torch.isfinite(norm):  # gradients are all-reduced, so every rank agrees here
            self._post(kind=Kind.FATAL, message=self._non_finite_message(loss_sum))
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
        rank projects the same timer step; and every rank asks Ray Train here
        whether the group is being preempted.
        """
        elapsed = time.perf_counter() - progress.log_started
        timer = [time.monotonic() - self.last_checkpoint_time, elapsed / len(progress.step_losses)]
        *loss_sums, since_checkpoint, per_step = all_reduce_sum(
            [*progress.step_losses, *(timer if self.rank == 0 else [0.0, 0.0])], self.device)
        self.seconds_per_step = per_step
        self.timer_due_step = policy.timer_due_step(self.job.checkpoint, self.step, since_checkpoint, per_step)
        self.preempted = self.preempted or self._preempted()
        batch, now = self.job.train.batch_size, time.time()
        epoch, first = self._epoch_in_progress(), self.step - len(loss_sums) + 1
        rows = []
        for offset, (loss_sum, lr) in enumerate(zip(loss_sums, progress.step_lrs)):
            rows += self.history.add(first + offset, epoch, {"train/loss": loss_sum / batch, "train/lr": lr}, now)
        rate = len(loss_sums) * batch / max(elapsed, 1e-9)
        rows += self.history.add(self.step, epoch, {"train/samples_per_s": rate}, now)
        self._post(kind=Kind.LOG, step=self.step, epoch=epoch, samples=self.samples, rows=rows,
                   loss=sum(loss_sums) / (batch * len(loss_sums)), lr=progress.step_lrs[-1],
                   samples_per_s=round(rate, 1), steps_per_epoch=self.batches_per_epoch,
                   total_steps=self.total_steps)
        progress.step_losses, progress.step_lrs, progress.log_started = [], [], time.perf_counter()

    def _epoch_in_progress(self) -> int:
        cursor = self.reader.state()  # after an epoch's last batch the cursor is already at the next one
        return cursor.epoch - 1 if cursor.batch == 0 else cursor.epoch

    def _end_epoch(self, progress: _Progress) -> None:
        """Validate, record the epoch's metrics, maybe stop early, report a checkpoint (all ranks together)."""
        if progress.step_losses:
            self._log(progress)  # every step's loss is recorded before the epoch's row
        cursor, epoch = self.reader.state(), self._epoch_in_progress()
        complete = cursor.batch in (0, self.batches_per_epoch)
        loss, rows = all_reduce_sum([progress.epoch_loss, progress.epoch_rows], self.device)
        rate = rows / max(time.perf_counter() - progress.epoch_started, 1e-9)  # training only, not validation
        train_metrics = {"loss": loss / max(rows, 1)}
        validation = self._validate()
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
        if self._checkpoint_reason(epoch_end=True) is not None:
            self._checkpoint(metrics, best=bool(verdict and verdict.improved))
        if verdict and verdict.stop:
            self._post(kind=Kind.STOPPED_EARLY, step=self.step, epoch=epoch, **self.stopping.to_dict())

    def _validate(self) -> dict[str, float]:
        """Validation metrics over every validation row, reduced across all ranks."""
        source = self.validation_index or (self.index if self.layout.holdout_fraction else None)
        if source is None:
            return {}
        self.net.eval()
        totals = torch.zeros(6, dtype=torch.float64)
        with torch.no_grad(), self._autocast():
            for batch in validation_batches(
                source,
                world_size=self.world,
                rank=self.rank,
                batch_rows=_VALIDATION_BATCH_ROWS,
                holdout_fraction=None if self.validation_index else self.layout.holdout_fraction,
                label_dtype=models.label_dtype(self.job.loss),
            ):
                outputs = self.net(batch.features.to(self.device))
                totals += models.evaluation_totals(self.job.loss, outputs, batch.labels)
        self.net.train()
        return models.evaluation_metrics(self.job.loss, all_reduce_sum(totals.tolist(), self.device))

    # -- resume -------------------------------------------------------------

    def _restore(self) -> int | None:
        """If the run folder holds a complete checkpoint, continue from the newest; else start fresh.

        The resume rule: continue from the newest checkpoint in the run folder
        whose manifest verifies. Every checkpoint Ray Train hands back
        (`ray.train.get_checkpoint()`) is among them, but Ray registers a
        report only when its controller next polls the workers, so a worker
        that dies right after reporting would send the group back one
        checkpoint; and an upload cut short leaves a directory Ray may list.
        Rank 0 chooses and every rank loads its choice, so all ranks continue
        from the same step, at the exact next batch.
        """
        chosen, state = self._newest_verified() if self.rank == 0 else (None, None)
        if self.world > 1:
            shared = [chosen]
            dist.broadcast_object_list(shared, src=0)
            chosen = shared[0]
        if chosen is None:
            return None
        if state is None:
            with checkpoint.local_copy(self.storage_fs, f"{self.run_path}/{chosen}") as directory:
                state = checkpoint.load(directory)
        self.history = History(state.history)
        self.stopping = stopping.StoppingState(**state.stopping) if state.stopping else stopping.StoppingState()
        self.net.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.reader.restore(state.cursor)
        self.step, self.samples = state.step, state.samples
        self.last_checkpoint_step = state.step
        return state.step

    def _newest_verified(self) -> tuple[str | None, checkpoint.TrainState | None]:
        for name in checkpoint.newest_first(self.storage_fs, self.run_path):
            try:
                with checkpoint.local_copy(self.storage_fs, f"{self.run_path}/{name}") as directory:
                    return name, checkpoint.load(directory)
            except CheckpointError as error:
                self._post(kind=Kind.WARNING, message=f"skipping checkpoint {name}: {error}; trying an older one")
        return None, None

    # -- checkpoints --------------------------------------------------------

    def _checkpoint_reason(self, epoch_end: bool = False) -> str | None:
        """The checkpoint policy's verdict on the current step (the same on every rank)."""
        return policy.checkpoint_reason(self.job.checkpoint, policy.Moment(
            step=self.step, last_checkpoint_step=self.last_checkpoint_step, epoch_end=epoch_end,
            preempted=self.preempted, timer_due_step=self.timer_due_step))

    def _preempted(self) -> bool:
        """True once when Ray Train signals that a node of this group is about to be reclaimed.

        `get_preemption_info` is a barrier: every rank calls it at every log point.
        """
        info = ray.train.get_preemption_info()
        if info is None or self.preemption_handled:
            return False
        self.preemption_handled = True
        self._post(kind=Kind.WARNING, message=f"nodes {info.preempted_node_ids} are being preempted "
                   f"(ranks {info.preempted_ranks}); taking a checkpoint now at step {self.step}")
        return True

    def _checkpoint(self, metrics: dict, best: bool = False) -> None:
        """Checkpoint the current state: rank 0 saves it, every rank reports it to Ray Train."""
        self.last_checkpoint_step, self.last_checkpoint_time = self.step, time.monotonic()
        self.timer_due_step = policy.timer_due_step(self.job.checkpoint, self.step, 0.0, self.seconds_per_step)
        self.preempted = False
        directory = self._save_state() if self.rank == 0 else None
        self._report(metrics, directory, best)

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
            stopping=self.stopping.to_dict(),
        ), directory)
        return directory

    def _report(self, metrics: dict, directory: str | None, best: bool) -> None:
        """Upload rank 0's `directory` with our uploader and report it through Ray Train.

        With `best`, rank 0 also uploads it as best-<step>, a copy Ray Train's
        retention never deletes, for early stopping's export of the best model.
        """
        # ASYNC on every rank: a SYNC report waits for the controller's next poll.
        if directory is None:
            ray.train.report(metrics, checkpoint=None, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
            return
        step, samples, name = self.step, self.samples, checkpoint.dir_name(self.step)
        uploaded = self.uploader.submit(
            directory, name, keep_local=best,
            on_done=lambda: self._post(kind=Kind.CHECKPOINT, step=step, samples=samples, path=name),
        )
        if best:
            best_name = checkpoint.best_dir_name(step)

            def keep_only_this_best() -> None:
                checkpoint.remove_bests_except(self.storage_fs, self.run_path, best_name)
                self._post(kind=Kind.BEST, step=step, path=best_name)

            self.uploader.submit(directory, best_name, on_done=keep_only_this_best)

        def registered(_local: ray.train.Checkpoint, _name: str) -> ray.train.Checkpoint:
            return ray.train.Checkpoint(uploaded.result(), self.storage_fs)

        # Our uploader makes the checkpoint durable at once. Ray Train registers it
        # when its controller next polls; its single upload thread only waits for ours.
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=name,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            checkpoint_upload_fn=registered,
            delete_local_checkpoint_after_upload=False,
        )

    # -- helpers ------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.job.train.precision == "bf16"
        )

    def _non_finite_message(self, loss_sum: torch.Tensor) -> str:
        return (
            f"training stopped at step {self.step + 1} (epoch {self.reader.state().epoch}): the "
            f"gradient norm is not finite (this rank's loss sum: {float(loss_sum):g}). No checkpoint "
            f"was written with these weights. Lower optim.lr (now {self.job.optim.lr:g}), set "
            "train.grad_clip, or check the data for extreme values."
        )

    def _post(self, **record) -> None:
        if self.rank == 0 or record["kind"] == Kind.FATAL:
            self.board.post.remote(record)

