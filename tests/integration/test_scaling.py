"""The mathematics stays the same when the world size or the step's shape changes."""

from __future__ import annotations

import pathlib
from collections import defaultdict

import pytest
import torch

from orchestrator.data.preprocess import Preprocessing
from orchestrator.driver import launch
from orchestrator.errors import TrainingError
from orchestrator.job import spec
from orchestrator.train import models
from tests.conftest import regression_job


def weights_of(summary) -> dict[str, torch.Tensor]:
    return torch.load(pathlib.Path(summary.run_dir) / "model.pt", weights_only=True)


def mlp_job(data_dir: str, storage: str, **train) -> dict:
    return regression_job(
        data_dir,
        storage,
        model={"kind": "mlp", "hidden": [16]},
        optim={"name": "sgd", "lr": 0.05},
        train={"epochs": 3, "batch_size": 256, "seed": 4, "log_every_n_steps": 5, **train},
        checkpoint={"every_n_steps": 10, "keep": 3},
    )


def test_four_micro_batches_of_256_equal_one_batch_of_1024_with_two_workers(regression_data, tmp_path):
    data_dir = regression_data[0]
    whole = mlp_job(data_dir, str(tmp_path / "whole"), batch_size=1024, max_steps=6)
    micro = mlp_job(data_dir, str(tmp_path / "micro"), batch_size=1024, max_steps=6, grad_accum_steps=4)
    a = weights_of(launch.run(spec.from_dict(whole)))
    b = weights_of(launch.run(spec.from_dict(micro)))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


class AttemptSamples:
    """Row ids per step from the latest attempt that trained it (replays replace, never add)."""

    def __init__(self):
        self.attempt = 0
        self.by_step: dict[int, tuple[int, dict[int, list[int]], int]] = {}

    def __call__(self, record: dict) -> None:
        if record["kind"] == "start":
            self.attempt += 1
        elif record["kind"] == "samples":
            attempt, ranks, _ = self.by_step.get(record["step"], (self.attempt, {}, record["epoch"]))
            if attempt != self.attempt:
                ranks = {}
            ranks[record["rank"]] = record["ids"]
            self.by_step[record["step"]] = (self.attempt, ranks, record["epoch"])

    def per_epoch(self) -> dict[int, list[int]]:
        epochs = defaultdict(list)
        for _, ranks, epoch in self.by_step.values():
            for ids in ranks.values():
                epochs[epoch] += ids
        return epochs


def test_a_mid_epoch_checkpoint_resumes_on_two_workers_and_back_on_one_with_the_same_mathematics(
    regression_data, tmp_path
):
    data_dir = regression_data[0]
    reference = weights_of(launch.run(spec.from_dict(mlp_job(data_dir, str(tmp_path / "reference")))))

    samples = AttemptSamples()
    raw = mlp_job(data_dir, str(tmp_path / "elastic"))
    world_sizes = []
    # 1 worker until it dies at step 13 (checkpoint at 10, mid-epoch 0); then 2 workers until
    # one dies at step 47 (checkpoint at 40, mid-epoch 1); then 1 worker to the end.
    for workers, exit_at in [(1, 13), (2, 47), (1, None)]:
        raw["scaling"] = {"workers": workers}
        raw["failure"] = {"max_failures": 0, **({"inject": {"exit_at_step": exit_at}} if exit_at else {})}
        if exit_at:
            with pytest.raises(TrainingError):
                launch.run(spec.from_dict(raw), on_record=samples, audit_samples=True)
        else:
            summary = launch.run(spec.from_dict(raw), on_record=samples, audit_samples=True)
        world_sizes.append(workers)

    assert summary.status == "finished" and summary.resumed_from_steps == [40]
    epochs = samples.per_epoch()
    batches = launch.prepare(spec.from_dict(raw)).batches_per_epoch
    for epoch in range(3):
        ids = epochs[epoch]
        assert len(ids) == len(set(ids)) == batches * 256, f"epoch {epoch}"
    final = weights_of(summary)
    for name in reference:  # the same steps on the same global batches; only float summation order differs
        assert torch.allclose(final[name], reference[name], atol=1e-4), name


def test_bf16_autocast_trains_to_the_same_fit(regression_data, tmp_path):
    raw = regression_job(regression_data[0], str(tmp_path), train={"epochs": 3, "batch_size": 256, "precision": "bf16"})
    summary = launch.run(spec.from_dict(raw))
    assert summary.validation["r2"] > 0.99


def test_a_compiled_model_trains_and_saves_plain_weights(regression_data, tmp_path):
    raw = mlp_job(regression_data[0], str(tmp_path), max_steps=5, compile=True)
    raw["scaling"] = {"workers": 1}
    summary = launch.run(spec.from_dict(raw))
    weights = weights_of(summary)
    job = spec.from_dict(raw)
    pre = Preprocessing.from_json((pathlib.Path(summary.run_dir) / "preprocessing.json").read_text())
    net = models.build_model(job.model, job.loss, pre.input_description(), 1)
    net.load_state_dict(weights)  # no torch.compile or DDP prefixes in model.pt
    assert summary.steps == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_workers_train_with_nccl_and_pinned_batches(regression_data, tmp_path):
    raw = regression_job(regression_data[0], str(tmp_path), scaling={"workers": 1, "use_gpu": True},
                         train={"epochs": 2, "batch_size": 256, "precision": "bf16"})
    summary = launch.run(spec.from_dict(raw))
    assert summary.validation["r2"] > 0.99
