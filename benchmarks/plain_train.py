"""A plain Ray Train script, as a user writes it from Ray's docs: the peer of the checkpoint benchmarks.

`train_fn` trains the benchmark MLP with `common.plain_batches` (each rank
reading every world-th row group), resumes from `ray.train.get_checkpoint()`
(model, optimizer, step; the reader skips the batches already trained) and
every `every_n_steps` reports a checkpoint through `ray.train.report` from
every rank (rank 0 attaches it), with Ray's default SYNC upload unless
`upload_mode` is "async". What the driver needs to see (pids, steps,
checkpoints reported, each step's duration) goes to a `Tracker` actor
without waiting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from benchmarks.common import BATCH, build_mlp, parquet_files, plain_batches, row_groups

STATE_FILE = "state.pt"


class Tracker:
    """Records posted by the workers, drained by the driver (a Ray actor with no CPU)."""

    def __init__(self) -> None:
        self._pending: list[dict] = []

    def post(self, record: dict) -> None:
        self._pending.append({**record, "time": record.get("time", time.time())})

    def drain(self) -> list[dict]:
        pending, self._pending = self._pending, []
        return pending


def new_tracker():
    import ray

    return ray.remote(Tracker).options(num_cpus=0).remote()


def train_fn(config: dict) -> None:
    """config: data, max_steps, every_n_steps, upload_mode ("sync" | "async"), post_every, tracker."""
    import ray.train
    import ray.train.torch
    import torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    tracker = config["tracker"]
    model = ray.train.torch.prepare_model(build_mlp())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    step = resumed = _restore(model, optimizer)
    tracker.post.remote({"kind": "worker", "rank": rank, "pid": os.getpid()})
    if rank == 0:
        tracker.post.remote({"kind": "start", "world_size": world, "resumed_step": resumed})

    durations = []
    batches = _endless_batches(config["data"], BATCH // world, rank, world, first=step)
    while step < config["max_steps"]:
        started = time.perf_counter()  # a step's duration covers its batch, as in ours
        features, labels = next(batches)
        loss = torch.nn.functional.mse_loss(model(features).squeeze(-1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step == resumed + 1 and rank == 0:
            tracker.post.remote({"kind": "first_step", "step": step, "time": time.time()})
        reported = config["every_n_steps"] and step % config["every_n_steps"] == 0
        report_s = 0.0
        if reported:
            report_started = time.perf_counter()
            _report_checkpoint(model, optimizer, step, rank, config["upload_mode"])
            report_s = time.perf_counter() - report_started
            if rank == 0:
                tracker.post.remote({"kind": "checkpoint", "step": step})
        durations.append((step, time.perf_counter() - started, bool(reported), report_s))
        if rank == 0 and step % config["post_every"] == 0:
            tracker.post.remote({"kind": "log", "step": step})
    if rank == 0:
        tracker.post.remote({"kind": "durations", "durations": durations})


def _endless_batches(data: str, batch_rows: int, rank: int, world: int, first: int):
    """This rank's batches epoch after epoch (same order each epoch), starting at overall batch `first`."""
    per_epoch = sum(rows for _, _, rows in row_groups(parquet_files(data))[rank::world]) // batch_rows
    skip = first % per_epoch
    while True:
        yield from plain_batches(data, batch_rows=batch_rows, rank=rank, world=world, skip_batches=skip)
        skip = 0


def _restore(model, optimizer) -> int:
    """The one resume rule of Ray's docs: load what `get_checkpoint` hands back, else start at 0."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, STATE_FILE), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _report_checkpoint(model, optimizer, step: int, rank: int, upload_mode: str) -> None:
    import ray.train
    import torch

    mode = ray.train.CheckpointUploadMode.ASYNC if upload_mode == "async" else ray.train.CheckpointUploadMode.SYNC
    if rank != 0:
        ray.train.report({"step": step}, checkpoint=None, checkpoint_upload_mode=mode)
        return
    directory = tempfile.mkdtemp(prefix="plain-checkpoint-")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    torch.save(state, os.path.join(directory, STATE_FILE))
    ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(directory),
                     checkpoint_upload_mode=mode)
    if mode == ray.train.CheckpointUploadMode.SYNC:
        shutil.rmtree(directory, ignore_errors=True)  # ASYNC deletes its local copy itself


def trainer(name: str, storage: str, workers: int, cpus_per_worker: float, max_failures: int, **config):
    """The TorchTrainer of this script (CheckpointConfig and the rest at Ray's defaults)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_fn,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
