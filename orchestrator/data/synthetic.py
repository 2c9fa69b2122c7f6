"""Synthetic Parquet datasets with a known answer, for the shipped demo jobs and tests.

Owns writing a deterministic dataset described by the job's `data.generate`
section when `data.path` holds no files yet. Files are deliberately uneven
(different row counts and row-group sizes) so the sharding invariants are
exercised by every demo run. Each file is written under a temporary name and
renamed, so an interrupted generation never leaves a half-written file.

- regression: y = x · w + b + noise, with x ~ N(0, 1) and `truth()` giving w, b.
- classification: `classes` Gaussian blobs; y is the class id (int64).
- mixed: a customer table with every column kind and realistic mess — a
  long-tailed `city` (strings, 5% null), a skewed `income` (lognormal up to
  millions, 10% null), `age`, a nullable boolean `is_member`, a `signup_time`
  timestamp, an 8-dim `embedding`, variable `tags`, a near-unique `user_id`
  with no signal, and the string label `churned` ("yes"/"no", 1% null),
  drawn from `churn_probability` (the truth: a Bayes-optimal score to compare with).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute
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
    if generate.kind == "mixed":
        full = mixed_table(generate)
    else:
        x, y = _draw(generate)
        full = pa.table({**{f"x{j}": x[:, j] for j in range(generate.features)}, "y": y})
    # File i gets a share proportional to i + 1 and its own row-group size.
    shares = np.arange(1, generate.files + 1, dtype=np.float64)
    bounds = np.round(np.concatenate([[0], np.cumsum(shares) / shares.sum()]) * generate.rows).astype(int)
    written = []
    for i in range(generate.files):
        lo, hi = bounds[i], bounds[i + 1]
        table = full.slice(lo, hi - lo)
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


CITY_COUNT = 400  # distinct cities, Zipf-distributed: a few large, a long tail seen a handful of times
TAGS = tuple(f"tag{i:02d}" for i in range(30))
_TAG_EFFECTS = {"tag00": 1.0, "tag01": -1.0, "tag02": 0.6}


def _city_effects(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 2]).normal(0.0, 1.0, CITY_COUNT)


def _embedding_direction(seed: int) -> np.ndarray:
    direction = np.random.default_rng([seed, 3]).normal(0.0, 1.0, 8)
    return direction / np.linalg.norm(direction)


def churn_probability(table: pa.Table, seed: int = 0) -> np.ndarray:
    """The true P(churned = "yes") of each row of a mixed table: the score a perfect model reaches."""
    city = table.column("city").to_pylist()
    effects = _city_effects(seed)
    city_effect = np.array([0.5 if c is None else effects[int(c[4:])] for c in city])
    income = table.column("income").to_numpy(zero_copy_only=False)
    income_effect = np.where(np.isnan(income), 0.0, 0.8 * (np.log(np.nan_to_num(income, nan=1.0)) - 10.5))
    age = table.column("age").to_numpy().astype(np.float64)
    member = np.array([0.0 if m is None else (-0.8 if m else 0.4) for m in table.column("is_member").to_pylist()])
    hours = pa.compute.hour(table.column("signup_time")).to_numpy()
    night = np.where((hours >= 22) | (hours < 5), 1.0, 0.0)
    embedding = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    tags = table.column("tags").to_pylist()
    tag_effect = np.array([sum(_TAG_EFFECTS.get(t, 0.0) for t in row) for row in tags])
    latent = (city_effect + income_effect - 0.04 * (age - 45) + member + 1.0 * night
              + 1.2 * embedding @ _embedding_direction(seed) + tag_effect - 0.3)
    return 1.0 / (1.0 + np.exp(-latent))


def mixed_table(generate: GenerateSpec) -> pa.Table:
    """The whole mixed dataset (see the module doc), deterministic in `generate.seed`."""
    n, rng = generate.rows, np.random.default_rng([generate.seed, 4])
    ranks = (rng.zipf(1.3, n) - 1) % CITY_COUNT
    city = pa.array([f"city{r:03d}" for r in ranks], pa.string())
    city = pa.compute.if_else(pa.array(rng.random(n) < 0.05), pa.scalar(None, pa.string()), city)
    income = np.exp(rng.normal(10.5, 1.0, n)).round(2)
    income[rng.random(n) < 0.10] = np.nan
    member = pa.array(rng.random(n) < 0.4, pa.bool_())
    member = pa.compute.if_else(pa.array(rng.random(n) < 0.03), pa.scalar(None, pa.bool_()), member)
    seconds = rng.integers(1_577_836_800, 1_735_689_600, n)  # 2020 … 2024
    counts = rng.poisson(1.5, n)
    tags = [list(rng.choice(TAGS, size=c, replace=False)) for c in counts]
    embedding = rng.normal(0.0, 1.0, (n, 8)).astype(np.float32)
    table = pa.table({
        "user_id": pa.array([f"u{rng.integers(0, 10**9):09d}" for _ in range(n)], pa.string()),
        "city": city,
        "income": pa.array(income, pa.float64(), from_pandas=True),
        "age": pa.array(rng.integers(18, 90, n), pa.int32()),
        "is_member": member,
        "signup_time": pa.array(seconds * 1_000_000, pa.timestamp("us", tz="UTC")),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), 8),
        "tags": pa.array(tags, pa.list_(pa.string())),
    })
    probability = churn_probability(table, generate.seed)
    label = np.where(rng.random(n) < probability, "yes", "no").astype(object)
    label[rng.random(n) < 0.01] = None
    return table.append_column("churned", pa.array(label, pa.string()))
