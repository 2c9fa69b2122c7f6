"""Fixtures shared by every test: tiny real Parquet datasets and job dicts."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from orchestrator.data import synthetic
from orchestrator.job import spec

REPO = pathlib.Path(__file__).resolve().parents[1]


def regression_job(data_dir: str, storage: str, **sections) -> dict:
    """A small linear-regression job dict over `data_dir`; `sections` replace whole sections."""
    job = {
        "name": "test-run",
        "data": {"path": data_dir, "label": "y", "validation": 0.1},
        "model": {"kind": "linear"},
        "loss": "mse",
        "optim": {"name": "sgd", "lr": 0.2},
        "train": {"epochs": 3, "batch_size": 256, "seed": 0, "log_every_n_steps": 10},
        "scaling": {"workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every_n_steps": 20, "keep": 3},
        "failure": {"max_failures": 2},
        "storage": storage,
    }
    job.update(sections)
    return job


def learned_linear(run_dir: pathlib.Path) -> tuple[np.ndarray, float]:
    """(w, b) of a linear run's model.pt in the data's own units: the model maps standardized features
    to the standardized label, so both standardizations (preprocessing.json) are undone."""
    import torch

    from orchestrator.data.preprocess import Preprocessing

    weights = torch.load(run_dir / "model.pt", weights_only=True)
    pre = Preprocessing.from_json((run_dir / "preprocessing.json").read_text())
    means, stds = np.array([c.mean for c in pre.columns]), np.array([c.std for c in pre.columns])
    w_std, b_std = weights["body.weight"].double().numpy().ravel(), weights["body.bias"].item()
    w = pre.label.std * w_std / stds
    return w, pre.label.mean + pre.label.std * (b_std - float(np.sum(w_std * means / stds)))


@pytest.fixture(scope="session")
def regression_data(tmp_path_factory) -> tuple[str, spec.GenerateSpec]:
    """8,000 rows of y = x·w + 0.5 + noise in 3 uneven files with uneven row groups."""
    generate = spec.GenerateSpec(kind="regression", rows=8000, features=4, noise=0.05, files=3, seed=1)
    directory = tmp_path_factory.mktemp("regression")
    synthetic.write(generate, str(directory))
    return str(directory), generate
