"""End to end on a real local Ray cluster: 2 worker processes, gloo DDP, real Parquet."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from orchestrator import cli
from orchestrator.data import source, synthetic
from orchestrator.data.plan import Layout
from orchestrator.data.reader import ShardReader, fit_in_process
from orchestrator.driver import launch
from orchestrator.errors import LaunchError, TrainingError
from orchestrator.job import spec
from orchestrator.train import models
from orchestrator.train.distributed import weights_digest
from tests.conftest import learned_linear, regression_job


def test_two_workers_recover_the_ground_truth_and_the_summary_matches_what_was_printed(
    regression_data, tmp_path, capsys
):
    data_dir, generate = regression_data
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(regression_job(data_dir, str(tmp_path / "runs"))))

    assert cli.main(["run", str(job_file), "--name", "truth"]) == 0

    printed = capsys.readouterr().out.strip().splitlines()
    run_dir = pathlib.Path(printed[-1])
    assert run_dir == tmp_path / "runs" / "truth"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["validation"]["loss"] < 0.01  # noise variance is 0.0025
    assert summary["validation"]["r2"] > 0.99
    assert any(f"{summary['steps']} steps" in line and "2 worker(s)" in line for line in printed)
    assert any(f"val loss {summary['validation']['loss']:.4g}" in line for line in printed)
    # The wall time split into phases (Ray was already up here: none for starting it), each second once.
    assert list(summary["phases"]) == sorted(["prepare", "worker_group", "setup", "first_step", "training",
                                              "validation", "checkpointing", "shutdown"])
    assert sum(summary["phases"].values()) == pytest.approx(summary["wall_s"], abs=0.01)

    weights = torch.load(run_dir / "model.pt", weights_only=True)
    w, b = learned_linear(run_dir)
    truth, bias = synthetic.truth(generate)
    assert np.allclose(w, truth, atol=0.02)
    assert abs(b - bias) < 0.02
    assert summary["weights_sha256"] == weights_digest(weights)


def test_one_ddp_step_on_two_shards_equals_one_step_on_their_union(regression_data, tmp_path):
    data_dir, _ = regression_data
    raw = regression_job(
        data_dir,
        str(tmp_path),
        data={"path": data_dir, "label": "y"},
        optim={"name": "sgd", "lr": 0.1},
        train={"max_steps": 1, "batch_size": 256, "seed": 3},
        checkpoint={"every_n_steps": None},
    )
    summary = launch.run(spec.from_dict(raw))

    # Every rank posted the digest of its final weights, and they all agreed.
    ddp_weights = torch.load(pathlib.Path(summary.run_dir) / "model.pt", weights_only=True)
    assert summary.weights_sha256 == weights_digest(ddp_weights)

    # The same step in one process on the whole global batch (the union of both shards).
    index = source.scan(data_dir, "y")
    pre = fit_in_process(index, 0.0)
    reader = ShardReader(index, Layout(seed=3, batch_size=256, lanes=8, window_rows=8192), pre, world_size=1, rank=0)
    batch = reader.next_batch()
    reader.close()
    torch.manual_seed(3)
    job = spec.from_dict(raw)
    model = models.build_model(job.model, job.loss, pre.input_description(), 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(model(batch.numeric, batch.codes).squeeze(-1), batch.labels).backward()
    optimizer.step()
    for name, value in model.state_dict().items():
        assert torch.allclose(ddp_weights[name], value, atol=1e-6), name


def test_a_worker_that_dies_mid_run_is_replaced_and_training_resumes_from_a_checkpoint(regression_data, tmp_path):
    data_dir, generate = regression_data
    raw = regression_job(data_dir, str(tmp_path), failure={"max_failures": 2, "inject": {"exit_at_step": 33, "rank": 1}})
    job = spec.from_dict(raw)
    summary = launch.run(job)

    assert summary.status == "finished"
    assert summary.restarts == 1
    # A checkpoint was taken at step 20; the first epoch's end (step 28) came well within
    # checkpoint.epoch_min_interval_s of it and was coalesced, so the death at step 33 resumes from 20.
    assert summary.resumed_from_steps == [20]
    assert summary.steps == 3 * launch.prepare(job).batches_per_epoch  # every step, none lost
    w, _ = learned_linear(pathlib.Path(summary.run_dir))
    assert np.allclose(w, synthetic.truth(generate)[0], atol=0.05)


def test_a_non_finite_loss_from_the_optimization_stops_the_run_naming_the_step_and_the_cause(
    regression_data, tmp_path
):
    data_dir, _ = regression_data
    raw = regression_job(data_dir, str(tmp_path), optim={"name": "sgd", "lr": 1e30})
    with pytest.raises(TrainingError, match=r"training stopped at step \d+ .*not finite, and the optimization "
                                            r"is the cause.*optim.lr"):
        launch.run(spec.from_dict(raw))
    summary = json.loads((tmp_path / "test-run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["model"] is None


def test_a_non_finite_loss_from_an_unscaled_input_names_the_column_not_the_optimizer(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=2048)
    huge = np.where(rng.random(2048) < 0.01, 1e36, rng.normal(size=2048))  # a few readings off the scale
    pq.write_table(pa.table({"x": x, "huge": huge, "y": 2 * x}), tmp_path / "data.parquet", row_group_size=512)
    raw = regression_job(str(tmp_path / "data.parquet"), str(tmp_path), optim={"name": "sgd", "lr": 0.01})
    raw["data"]["columns"] = {"huge": {"transform": "none"}}
    with pytest.raises(TrainingError, match=r"not finite, and the inputs are the cause: numeric input 'huge' "
                                            r"reaches 1e\+36 .*data.columns: \{huge: standard\}") as raised:
        launch.run(spec.from_dict(raw))
    assert "optim.lr" not in str(raised.value)


def test_more_workers_than_the_cluster_can_place_is_refused_before_training(regression_data, tmp_path):
    data_dir, _ = regression_data
    raw = regression_job(data_dir, str(tmp_path), scaling={"workers": 3, "cpus_per_worker": 1})
    with pytest.raises(LaunchError, match=r"3 CPUs \(scaling.workers 3 × scaling.cpus_per_worker 1\).* has 2"):
        launch.run(spec.from_dict(raw))


def test_a_user_model_module_trains_a_classifier_with_accuracy_reduced_over_ranks(tmp_path):
    data_dir = tmp_path / "blobs"
    synthetic.write(spec.GenerateSpec(kind="classification", rows=6000, features=6, classes=3, files=2), str(data_dir))
    raw = {
        "name": "blobs",
        "data": {"path": str(data_dir), "label": "y", "validation": 0.2},
        "model": {"kind": "jobs.my_model:build", "options": {"width": 16, "depth": 1}},
        "loss": "cross_entropy",
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"epochs": 3, "batch_size": 128},
        "scaling": {"workers": 2},
        "storage": str(tmp_path / "runs"),
    }
    summary = launch.run(spec.from_dict(raw))
    assert summary.validation["accuracy"] > 0.9
    assert set(summary.validation) == {"loss", "accuracy", "log_loss", "auc", "f1"}
