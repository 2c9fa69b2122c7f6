"""What a run records about itself: metric history, run metadata, early stopping."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator.driver import launch
from orchestrator.job import spec
from orchestrator.train import checkpoint
from tests.conftest import regression_job


def history(run_dir) -> pa.Table:
    return pq.read_table(pathlib.Path(run_dir) / "metrics.parquet")


def test_after_a_worker_dies_the_history_has_every_step_exactly_once(regression_data, tmp_path):
    raw = regression_job(regression_data[0], str(tmp_path),
                         failure={"max_failures": 2, "inject": {"exit_at_step": 33, "rank": 1}})
    job = spec.from_dict(raw)
    summary = launch.run(job)
    assert summary.restarts == 1

    table = history(summary.run_dir)
    steps = table.filter(pa.compute.equal(table["name"], "train/loss"))["step"].to_pylist()
    assert steps == list(range(1, summary.steps + 1))
    keys = list(zip(table["step"].to_pylist(), table["name"].to_pylist()))
    assert len(keys) == len(set(keys))
    epoch_rows = table.filter(pa.compute.equal(table["name"], "val/loss"))
    per_epoch = launch.prepare(job).batches_per_epoch
    assert epoch_rows["step"].to_pylist() == [per_epoch, 2 * per_epoch, 3 * per_epoch]

    run = json.loads((pathlib.Path(summary.run_dir) / "run.json").read_text())
    assert run["status"] == "finished" and run["job"]["name"] == "test-run"
    assert [w["world_size"] for w in run["world_sizes"]] == [2, 2]
    assert len(run["restarts"]) == 1
    # The first epoch's end (step 28) fell within checkpoint.epoch_min_interval_s of the step-20 checkpoint
    # and was coalesced: the restarted group replayed it, and its row above is still there once.
    assert run["restarts"][0]["resumed_step"] == 20
    assert "rank 1" in run["restarts"][0]["cause"]
    assert set(run["versions"]) >= {"torch", "ray", "pyarrow", "python", "orchestrator"}


def write_line(path: pathlib.Path, slope: float, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rows).astype(np.float32)
    pq.write_table(pa.table({"x": x, "y": slope * x}), path, row_group_size=1000)


def test_early_stopping_stops_patience_epochs_after_validation_turns_and_exports_the_best(tmp_path):
    # The model learns y = 2x from w ≈ 0 slowly; validation data follows y = x, so its
    # loss falls while w approaches 1 and rises once w passes it.
    write_line(tmp_path / "train.parquet", 2.0, 4096, seed=0)
    write_line(tmp_path / "val.parquet", 1.0, 2048, seed=1)
    raw = {
        "name": "stop",
        "data": {"path": str(tmp_path / "train.parquet"), "label": "y", "validation": str(tmp_path / "val.parquet")},
        "model": {"kind": "linear"},
        "loss": "mse",
        "optim": {"name": "sgd", "lr": 0.004},
        "train": {"epochs": 40, "batch_size": 256, "seed": 1},
        "scaling": {"workers": 2},
        "checkpoint": {"every_n_steps": None, "keep": 2},
        "early_stopping": {"metric": "val_loss", "patience": 2},
        "storage": str(tmp_path / "runs"),
    }
    summary = launch.run(spec.from_dict(raw))

    table = history(summary.run_dir)
    val = table.filter(pa.compute.equal(table["name"], "val/loss"))
    curve = val["value"].to_pylist()
    best = int(np.argmin(curve))
    assert 0 < best < len(curve) - 1, "the crafted data must make validation turn upward"
    assert len(curve) == best + 1 + 2  # stopped `patience` epochs after the best one
    assert summary.stopped_early and summary.best["best_epoch"] == best
    assert summary.steps == (best + 3) * 16  # 4,096 rows // 256 per epoch; every rank stopped here

    run_dir = pathlib.Path(summary.run_dir)
    best_dir = run_dir / checkpoint.best_dir_name(val["step"].to_pylist()[best])
    exported = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in torch.load(best_dir / "model.pt", weights_only=True).items())
    assert "overfitting" in summary.fit["reading"] and summary.fit["best_validation_epoch"] == best + 1
