"""Small jobs: a 569-row table, 60 epochs — a plain torch script vs ours cold and ours warm (`orchestrator up`).

The table has the shape of the classic breast-cancer table: 569 rows, 30
float features on very different scales (a few long-tailed), a binary label
from a logistic model of 5 of them (seeded, so the right answer is known).
Every case trains an MLP 30→64→64→1 (ReLU, BCE, Adam lr 1e-3) with batch 32
for 60 epochs on the same 80% of the rows, validating on the other 20% every
epoch, and reports from its own timestamps:

- time to first step: wall clock when the first optimizer step finished − when
  the parent spawned the process (interpreter, imports, Ray, workers, data);
- after first step: the first step's end → the end of the run (ours: its
  summary is written and handed to `run`, which prints it; an embedded Ray
  stops after that: `returned_after_s`; plain: its last validation is done);
- shutdown (ours): summary.json's phase from the last step to the summary.

plain  one process: pyarrow → numpy, standardized with the training rows'
       mean and std, torch.randperm per epoch, validation with AUC every epoch.
ours   `launch.run` (what `orchestrator run` calls), 2 workers × 1 CPU, the job
       file's defaults otherwise (in-memory data, coalesced epoch checkpoints);
       cold: the run starts its own local Ray; warm: it joins the local Ray the
       parent started with `orchestrator up` before the warm runs. One more cold
       run takes the same job on 1 worker × 2 CPUs (the same batches in the same
       order, without a gradient all-reduce between processes).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import WORK, child_main

ROWS, FEATURES, EPOCHS, BATCH, HIDDEN = 569, 30, 60, 32, (64, 64)


def ensure() -> str:
    """The table (written once): breast-cancer-shaped, label from a known logistic model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = WORK / "small" / "table.parquet"
    if path.exists():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(569)
    scales = np.exp(rng.uniform(-3, 7, FEATURES))  # from ~0.05 to ~1000: unscaled, as real tables are
    x = rng.normal(size=(ROWS, FEATURES))
    x[:, :3] = np.exp(x[:, :3])  # a few long-tailed columns
    logits = x[:, [0, 3, 7, 12, 20]] @ np.array([1.5, -2.0, 1.0, 2.5, -1.0])
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    table = pa.table({**{f"f{i}": x[:, i] * scales[i] for i in range(FEATURES)}, "diagnosis": y})
    pq.write_table(table, path)
    return str(path)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def plain(data: str) -> dict:
    import pyarrow.parquet as pq
    import torch

    table = pq.read_table(data)
    x = np.stack([table[f"f{i}"].to_numpy() for i in range(FEATURES)], axis=1)
    y = table["diagnosis"].to_numpy().astype(np.float32)
    torch.manual_seed(0)
    held = np.random.default_rng(0).random(ROWS) < 0.2
    mean, std = x[~held].mean(0), x[~held].std(0) + 1e-12
    features = torch.from_numpy(((x - mean) / std).astype(np.float32))
    labels = torch.from_numpy(y)
    train_x, train_y, val_x, val_y = features[~held], labels[~held], features[held], labels[held]
    layers, width = [], FEATURES
    for h in HIDDEN:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(train_y)).split(BATCH):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(train_x[batch]).squeeze(-1),
                                                                        train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            first = first or time.time()
        model.eval()
        with torch.no_grad():
            auc = _auc(model(val_x).squeeze(-1).numpy(), val_y.numpy())
    end = time.time()
    return {"first_step_time": first, "end_time": end, "after_first_step_s": round(end - first, 3),
            "val_auc": round(auc, 4)}


def job(data: str, name: str, workers: int = 2) -> dict:
    """The small job as a job-file mapping: `workers` share the 2 CPUs."""
    return {
        "name": name,
        "data": {"path": data, "label": "diagnosis", "validation": 0.2},
        "model": {"kind": "mlp", "hidden": list(HIDDEN)},
        "loss": "bce",
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "seed": 0},
        "scaling": {"workers": workers, "cpus_per_worker": 2 / workers},
        "storage": str(WORK / "runs"),
    }


def ours(data: str, name: str, workers: int = 2) -> dict:
    from orchestrator.driver import launch
    from orchestrator.job import spec

    records: list[dict] = []
    summary = launch.run(spec.from_dict(job(data, name, workers)), fresh=True, on_record=records.append)
    first = next(r["time"] for r in records if r["kind"] == "first_step")
    end = next(r["time"] for r in records if r["kind"] == "summary")  # what `run` prints the summary on
    return {"first_step_time": first, "end_time": end, "after_first_step_s": round(end - first, 3),
            "returned_after_s": round(time.time() - end, 3),  # stopping an embedded Ray, after the summary
            "val_auc": round(summary.validation.get("auc", float("nan")), 4), "phases": summary.phases,
            "wall_s": summary.wall_s, "checkpoints": sum(r["kind"] == "checkpoint" for r in records),
            "joined_up": any(r["kind"] == "phase" and "orchestrator up" in r.get("message", "") for r in records)}


if __name__ == "__main__":
    child_main({"plain": plain, "ours": ours})
