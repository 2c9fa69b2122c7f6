"""End-to-end training throughput and time to first step: the limit, two peers and ours.

Every case trains the same model (MLP 32→256→256→1, ReLU, MSE, AdamW lr 1e-3
weight decay 0.01, global batch 1024) for one epoch of the same data and
reports, from timestamps taken right after optimizer steps:

- first_step_time: wall clock (time.time()) when the first step finished; the
  parent subtracts the time it spawned the process, so time to first step
  covers interpreter start, imports, Ray start, scheduling and the first step;
- steady samples/s = (steps − 1) × 1024 / (last step time − first step time).

plain_loop       one process, default torch threads, `common.plain_batches`.
ray_data_train   ray.init(num_cpus=2) + TorchTrainer(1 worker, 1 CPU) +
                 ray.train.get_dataset_shard("train").iter_torch_batches(1024,
                 drop_last=True), the 33 columns stacked into a matrix. The
                 second CPU is left to Ray Data (2 workers of 1 CPU leave it none
                 and hang); the worker gets OMP_NUM_THREADS=1 from Ray.
torchrun_worker  run under `torchrun --standalone --nproc_per_node 2`: gloo DDP,
                 OMP_NUM_THREADS=1 (torchrun's default), each rank reading every
                 other row group with `common.plain_batches` (512 rows a step).
ours             orchestrator.driver.launch.run on a JobSpec from spec.from_dict (embedded
                 Ray with num_cpus = 2 cores), checkpoint.every_n_steps null (the
                 epoch-end checkpoint remains, after the last timed step).
"""

from __future__ import annotations

import os
import time

from benchmarks.common import (
    BATCH,
    FEATURES,
    LABEL,
    RAY_CPUS,
    WORK,
    build_mlp,
    child_main,
    plain_batches,
    ray_session_dir,
    ray_train_timeline,
    start_ray,
)
from benchmarks.plain_train import new_tracker


def _optimizer(model):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def _step(model, optimizer, features, labels) -> None:
    import torch

    loss = torch.nn.functional.mse_loss(model(features).squeeze(-1), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _train(model, batches) -> dict:
    """Train on every batch; the timestamps the figures are computed from."""
    import torch

    optimizer = _optimizer(model)
    steps, first, last = 0, None, None
    for features, labels in batches:
        _step(model, optimizer, features, labels)
        steps += 1
        last = time.time()
        first = first or last
    return {"steps": steps, "first_step_time": first, "last_step_time": last,
            "torch_threads": torch.get_num_threads()}


def _steady(result: dict, global_batch: int = BATCH) -> dict:
    span = result["last_step_time"] - result["first_step_time"]
    return {**result, "samples_per_s": round((result["steps"] - 1) * global_batch / span, 1)}


# -- the limit --------------------------------------------------------------------------

def plain_loop(data: str) -> dict:
    return _steady(_train(build_mlp(), plain_batches(data)))


# -- peer 1: plain Ray Train + Ray Data ------------------------------------------------------

def _ray_data_train_fn(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    model = ray.train.torch.prepare_model(build_mlp())
    entered = time.time()
    shard = ray.train.get_dataset_shard("train")

    def batches():
        for batch in shard.iter_torch_batches(batch_size=BATCH, drop_last=True):
            yield torch.stack([batch[name] for name in FEATURES], dim=1), batch[LABEL]

    # Ray Train V2 keeps only metrics attached to checkpoints, so the figures go to a tracker actor.
    config["tracker"].post.remote({**_train(model, batches()), "group_started_time": entered})


def ray_data_train(data: str) -> dict:
    started = time.time()
    start_ray()
    ray_up = time.time()
    session = ray_session_dir()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    tracker = new_tracker()
    trainer = TorchTrainer(
        _ray_data_train_fn,
        train_loop_config={"tracker": tracker},
        datasets={"train": ray.data.read_parquet(data)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"ray-data-train-{os.getpid()}", storage_path=str(WORK / "ray-results")),
    )
    trainer.fit()
    (result,) = ray.get(tracker.drain.remote())
    ray.shutdown()
    return _steady({**result, "ray_start_s": round(ray_up - started, 3), "ray_train": ray_train_timeline(session)})


# -- peer 2: torchrun, 2 processes --------------------------------------------------------

def torchrun_worker(data: str) -> dict | None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(build_mlp())
    result = _train(model, plain_batches(data, batch_rows=BATCH // world, rank=rank, world=world))
    # Both ranks done before either tears gloo down: a rank that left first made the other
    # abort now and then ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    return _steady(result) if rank == 0 else None


# -- ours --------------------------------------------------------------------------------

def job(data: str, name: str, workers: int, cpus_per_worker: float, **train) -> dict:
    """The benchmark job as a job-file mapping (shared with the recovery and stall benchmarks)."""
    return {
        "name": name,
        "data": {"path": data, "label": LABEL},
        "model": {"kind": "mlp", "hidden": [256, 256]},
        "loss": "mse",
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        "train": {"batch_size": BATCH, "seed": 0, **train},
        "scaling": {"workers": workers, "cpus_per_worker": cpus_per_worker},
        "checkpoint": {"every_n_steps": None, "keep": 2},
        "failure": {"max_failures": 0},
        "storage": str(WORK / "runs"),
    }


def ours(data: str, workers: int) -> dict:
    launch_called = time.time()
    from orchestrator.driver import launch
    from orchestrator.job import spec

    raw = job(data, f"e2e-{workers}w", workers, RAY_CPUS / workers, epochs=1, log_every_n_steps=256)
    records: list[dict] = []
    session = []

    def on_record(record: dict) -> None:
        session[:] = session or [d for d in [ray_session_dir()] if d]
        records.append(record)

    summary = launch.run(spec.from_dict(raw), fresh=True, on_record=on_record)
    first = next(r for r in records if r["kind"] == "first_step")
    last = max((r for r in records if r["kind"] == "log"), key=lambda r: r["step"])
    return _steady({
        "steps": last["step"],
        "first_step_time": first["time"],
        "last_step_time": last["time"],
        "torch_threads": int(RAY_CPUS / workers),  # Ray sets OMP_NUM_THREADS to the worker's CPUs
        "launch_called_time": launch_called,
        "group_started_time": next(r for r in records if r["kind"] == "start")["time"],
        "ray_train": ray_train_timeline(session[0]),
        "summary_time_to_first_step_s": summary.time_to_first_step_s,
        "summary_samples_per_s": summary.samples_per_s,
        "summary_steps": summary.steps,
        "log_samples_per_s": [r["samples_per_s"] for r in records if r["kind"] == "log"],
    })


if __name__ == "__main__":
    child_main({"plain_loop": plain_loop, "ray_data_train": ray_data_train,
                "torchrun_worker": torchrun_worker, "ours": ours})
