"""Synthetic Parquet datasets with a known answer, for the shipped demo jobs and tests.

Owns writing a deterministic dataset described by the job's `data.generate`
section when `data.path` holds no files yet. Files are deliberately uneven
(different row counts and row-group sizes) so the sharding invariants are
exercised by every demo run. Each file is written under a temporary name and
renamed, so an interrupted generation never leaves a half-written file.

- regression: y = x · w + b + noise, with x ~ N(0, 1) and `truth()` giving w, b.
- classification: `classes` Gaussian blobs; y is the class id (int64).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import storage
from orchestrator.job.spec import GenerateSpec


def truth(generate: GenerateSpec) -> tuple[np.ndarray, float]:
    """The regression weights and bias the data was drawn from."""
    rng = np.random.default_rng([generate.seed, 1])
    weights = np.round(rng.uniform(-2.0, 2.0, size=generate.features), 3)
    return weights, 0.5


def write(generate: GenerateSpec, directory_url: str) -> list[str]:
    """Write the dataset as `generate.files` Parquet files under `directory_url`; returns their URLs."""
    fs, root = storage.arrow_filesystem(directory_url)
    fs.create_dir(root, recursive=True)
    x, y = _draw(generate)
    # File i gets a share proportional to i + 1 and its own row-group size.
    shares = np.arange(1, generate.files + 1, dtype=np.float64)
    bounds = np.round(np.concatenate([[0], np.cumsum(shares) / shares.sum()]) * generate.rows).astype(int)
    written = []
    for i in range(generate.files):
        lo, hi = bounds[i], bounds[i + 1]
        columns = {f"x{j}": x[lo:hi, j] for j in range(generate.features)}
        columns["y"] = y[lo:hi]
        table = pa.table(columns)
        row_group_rows = max(64, (hi - lo) // (3 + i))
        name = f"part-{i:05d}.parquet"
        with fs.open_output_stream(f"{root}/.{name}.tmp") as out:
            pq.write_table(table, out, row_group_size=row_group_rows)
        fs.move(f"{root}/.{name}.tmp", f"{root}/{name}")
        written.append(storage.join(directory_url, name))
    return written


def _draw(generate: GenerateSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([generate.seed, 0])
    if generate.kind == "regression":
        x = rng.standard_normal((generate.rows, generate.features)).astype(np.float32)
        weights, bias = truth(generate)
        noise = rng.normal(0.0, generate.noise, size=generate.rows)
        y = (x.astype(np.float64) @ weights + bias + noise).astype(np.float32)
        return x, y
    centers = rng.normal(0.0, 2.0, size=(generate.classes, generate.features))
    y = rng.integers(0, generate.classes, size=generate.rows)
    x = (centers[y] + rng.normal(0.0, 1.0 + generate.noise, size=(generate.rows, generate.features)))
    return x.astype(np.float32), y.astype(np.int64)
