"""Sweeps: `orchestrator tune` against a hand-written Ray Tune + Ray Train V2 script that follows Ray's
"Hyperparameter Tuning with Ray Tune" guide (a Tune function trial per run that builds and fits a
TorchTrainer, TuneReportCallback passing rank 0's reports to Tune).

Both search the same space on the same generated table with the same budget: TRIALS trials of random
search (seeded), ASHA on val_loss at epoch ends (grace 1, reduction factor 3, EPOCHS epochs), 2 trials
at once, each 1 worker of 0.9 CPU (the hand-written trial driver takes Ray's suggested small CPU share,
0.1; ours reserves memory instead), the same MLP, optimizer, batch size and validation rows (the last
VALIDATION_SHARE of the rows in file order for the hand-written script, a held-out fraction for ours).

Each case is a child process with its own embedded Ray (with its dashboard: Ray Train frees a
stopped trial's workers through its state API). Measured: wall seconds from before Ray starts to the
end of the sweep, the best val_loss of a trial that trained all its epochs, trials ASHA stopped early.
"""

from __future__ import annotations

import math
import pathlib
import time

from benchmarks.common import WORK, child_main

ROWS = {"full": 40_000, "quick": 4_000}
FEATURES = 12
TRIALS = 8
EPOCHS = 6
BATCH = 256
VALIDATION_SHARE = 0.2
SPACE = {"lr": (1.0e-4, 3.0e-2), "hidden": ([32], [64, 64], [128, 128])}
CPUS_PER_WORKER = 0.9


def ensure(size: str) -> pathlib.Path:
    """The table (2-class Gaussian blobs with noise, in 4 files) under .work/, written once."""
    from orchestrator.data import synthetic
    from orchestrator.job.spec import GenerateSpec

    directory = WORK / f"sweeps-{size}"
    if not directory.exists():
        synthetic.write(GenerateSpec(kind="classification", rows=ROWS[size], features=FEATURES, classes=2,
                                     noise=1.0, files=4, seed=5), str(directory))
    return directory


def ours(data: str, size: str) -> dict:
    from orchestrator.driver import sweep
    from orchestrator.results import sweeps

    started = time.perf_counter()
    job = {
        "name": f"sweep-{size}", "storage": str(WORK / "runs"),
        "data": {"path": data, "label": "y", "validation": VALIDATION_SHARE},
        "model": {"kind": "mlp", "hidden": [64, 64]}, "loss": "bce",
        "optim": {"name": "adam", "lr": 0.001},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "seed": 0},
        "scaling": {"workers": 1, "cpus_per_worker": CPUS_PER_WORKER},
        "search": {"metric": "val_loss", "trials": TRIALS, "max_concurrent": 2, "scheduler": "asha",
                   "grace_period": 1, "reduction_factor": 3, "seed": 0,
                   "space": {"optim.lr": {"loguniform": list(SPACE["lr"])},
                             "model.hidden": {"choice": list(SPACE["hidden"])}}},
    }
    url = sweep.tune(job, fresh=True)
    wall = time.perf_counter() - started
    entries = [entry for _, entry in sweeps.open_sweep(url).trials()]
    finished = [e["metric"] for e in entries if e.get("status") == "finished"]
    return {"wall_s": wall, "best_val_loss": min(finished), "trials": len(entries),
            "stopped_early": sum(e.get("status") == "pruned" for e in entries),
            "failed": sum(e.get("status") == "failed" for e in entries)}


def handwritten(data: str, size: str) -> dict:
    """The sweep as a Ray user writes it from Ray's docs (Train V2 + Tune), timed the same way."""
    import ray
    import ray.train
    import ray.train.torch
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from orchestrator.driver.cluster import free_port

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_port=free_port(), log_to_driver=False)
    storage = str(WORK / "runs" / f"handwritten-{size}-{time.time_ns()}")

    def train_driver_fn(config: dict) -> None:
        trainer = ray.train.torch.TorchTrainer(
            train_fn_per_worker, train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": CPUS_PER_WORKER}),
            run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}",
                                           storage_path=storage, callbacks=[TuneReportCallback()]),
        )
        trainer.fit()

    tuner = tune.Tuner(
        tune.with_resources(train_driver_fn, {"CPU": 1 - CPUS_PER_WORKER}),
        param_space={"lr": tune.loguniform(*SPACE["lr"]), "hidden": tune.choice(list(SPACE["hidden"])),
                     "data": data},
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", num_samples=TRIALS, max_concurrent_trials=2,
            # seeded as ours; given the limit itself, since Tune applies max_concurrent_trials to Searchers only
            search_alg=BasicVariantGenerator(random_state=0, max_concurrent=2),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=EPOCHS, grace_period=1, reduction_factor=3),
        ),
        run_config=tune.RunConfig(storage_path=storage, name="tune", verbose=0),
    )
    results = tuner.fit()
    wall = time.perf_counter() - started
    finished = [r.metrics["val_loss"] for r in results if r.metrics and r.metrics.get("epoch") == EPOCHS]
    stopped = sum(1 for r in results if r.metrics and r.metrics.get("epoch", EPOCHS) < EPOCHS and r.error is None)
    ray.shutdown()
    return {"wall_s": wall, "best_val_loss": min(finished), "trials": len(results), "stopped_early": stopped,
            "failed": sum(1 for r in results if r.error is not None)}


def train_fn_per_worker(config: dict) -> None:
    """Read the table, hold out its last rows, train the MLP, report val_loss at every epoch end."""
    import numpy as np
    import pyarrow.parquet as pq
    import ray.train
    import ray.train.torch
    import torch

    table = pq.read_table(config["data"])
    x = np.stack([table.column(f"x{i}").to_numpy() for i in range(FEATURES)], axis=1).astype(np.float32)
    y = table.column("y").to_numpy().astype(np.float32)
    cut = len(y) - math.floor(len(y) * VALIDATION_SHARE)
    mean, std = x[:cut].mean(axis=0), x[:cut].std(axis=0) + 1e-6
    x = (x - mean) / std
    train_x, train_y = torch.from_numpy(x[:cut]), torch.from_numpy(y[:cut])
    valid_x, valid_y = torch.from_numpy(x[cut:]), torch.from_numpy(y[cut:])
    layers, width = [], FEATURES
    for hidden in config["hidden"]:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    model = ray.train.torch.prepare_model(torch.nn.Sequential(*layers, torch.nn.Linear(width, 1)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order) - BATCH + 1, BATCH):
            rows = order[start:start + BATCH]
            optimizer.zero_grad()
            loss_fn(model(train_x[rows]).squeeze(-1), train_y[rows]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(valid_x).squeeze(-1), valid_y))
        ray.train.report({"val_loss": val_loss, "epoch": epoch + 1})


if __name__ == "__main__":
    child_main({"ours": ours, "handwritten": handwritten})
