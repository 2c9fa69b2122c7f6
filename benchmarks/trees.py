"""Gradient-boosted trees: ours (XGBoost and LightGBM, 1 and 2 workers) against the same library in one
plain process, on the same generated table and the same validation file.

The table: ROWS rows of NUMERIC float columns (5% nulls each), a long-tailed string column (`city`, 5%
nulls) and a nullable boolean; a regression label built from all of them with noise. The validation
rows are a separate file of VALIDATION_ROWS rows from the same distribution.

Cases (each a child process):
ours      `launch.run` of a tree job (embedded Ray): rows/s is the median over rounds of the training
          rows ÷ the round's seconds (the round's per-round metrics included, as every run pays them);
          memory from the workers' FINAL records: peak RSS above the RSS before reading any data
plain     the library's own API in this process, as its docs show it: pq.read_table → pandas (city a
          category), QuantileDMatrix / Dataset, train the same rounds with the same parameters and
          threads = cores; rows/s = rows × rounds ÷ training seconds; memory: peak RSS above the RSS
          before reading

The shard of a worker is its contiguous share of the row groups; its decoded size is the Arrow bytes of
those row groups' feature and label columns.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import RAY_CPUS, WORK, child_main, proc_status_mb

ROWS = {"full": 1_000_000, "quick": 20_000}
VALIDATION_ROWS = {"full": 100_000, "quick": 4_000}
NUMERIC = 16
ROUNDS = {"full": 60, "quick": 10}
FILES = 8
ROW_GROUP_ROWS = {"full": 50_000, "quick": 1_000}
OPTIONS = {"xgboost": {"max_depth": 6, "eta": 0.1}, "lightgbm": {"num_leaves": 63, "learning_rate": 0.1}}
CITIES = 200


def _table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, NUMERIC))
    city = rng.zipf(1.3, rows) % CITIES
    member = rng.random(rows) < 0.3
    effect = np.sin(np.arange(CITIES))[city]
    y = x[:, 0] * 2 - x[:, 1] + np.abs(x[:, 2]) + x[:, 3] * x[:, 4] + effect + member + rng.normal(0, 0.3, rows)
    columns = {f"x{i}": pa.array(x[:, i], mask=rng.random(rows) < 0.05) for i in range(NUMERIC)}
    columns["city"] = pa.array(np.char.add("c", city.astype(str)), mask=rng.random(rows) < 0.05)
    columns["member"] = pa.array(member, mask=rng.random(rows) < 0.05)
    columns["y"] = y
    return pa.table(columns)


def ensure(size: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(training directory, validation file) under .work/, written once."""
    directory = WORK / f"trees-{size}"
    train, valid = directory / "train", directory / "validation.parquet"
    if not valid.exists():
        train.mkdir(parents=True, exist_ok=True)
        table = _table(ROWS[size], seed=0)
        for i, part in enumerate(np.array_split(np.arange(ROWS[size]), FILES)):
            pq.write_table(table.slice(int(part[0]), len(part)), train / f"part-{i:05d}.parquet",
                           row_group_size=ROW_GROUP_ROWS[size])
        pq.write_table(_table(VALIDATION_ROWS[size], seed=1), valid)
    return train, valid


def shard_bytes(train: str, workers: int) -> int:
    """The Arrow bytes of the largest worker's share of the row groups (features and label)."""
    from orchestrator.data.plan import contiguous_share

    files = sorted(pathlib.Path(train).glob("*.parquet"))
    groups = [(f, i) for f in files for i in range(pq.ParquetFile(f).num_row_groups)]
    return max(sum(pq.ParquetFile(groups[p][0]).read_row_group(groups[p][1]).nbytes
                   for p in contiguous_share(len(groups), workers, rank)) for rank in range(workers))


def ours(kind: str, workers: int, train: str, validation: str, size: str) -> dict:
    from orchestrator.driver import launch
    from orchestrator.job import spec

    records: list[dict] = []
    job = {
        "name": f"trees-{kind}-{workers}w", "storage": str(WORK / "runs"),
        "data": {"path": train, "label": "y", "validation": validation},
        "model": {"kind": kind, "rounds": ROUNDS[size], "options": OPTIONS[kind]}, "loss": "mse",
        "scaling": {"workers": workers, "cpus_per_worker": RAY_CPUS // workers},
        "checkpoint": {"every_n_steps": None, "keep": 1},
    }
    summary = launch.run(spec.from_dict(job), fresh=True, on_record=records.append)
    rounds = [r for r in records if r["kind"] == "epoch"]
    finals = [r for r in records if r["kind"] == "final"]
    return {
        "rows_per_s": float(np.median([r["samples_per_s"] for r in rounds[1:]])),  # the first round bins
        "validation": summary.validation,
        "data_peak_mb": max(r["peak_rss_mb"] - r["rss_before_data_mb"] for r in finals),
        "worker_peak_rss_mb": max(r["peak_rss_mb"] for r in finals),
        "shard_mb": shard_bytes(train, workers) / 2**20,
        "wall_s": summary.wall_s,
        "time_to_first_step_s": summary.time_to_first_step_s,
    }


def plain(kind: str, train: str, validation: str, size: str) -> dict:
    before = proc_status_mb("VmRSS")
    frame = pq.read_table(train).to_pandas()
    frame["city"] = frame["city"].astype("category")
    frame["member"] = frame["member"].astype("float64")  # a nullable boolean arrives as objects
    y = frame.pop("y").to_numpy()
    valid = pq.read_table(validation).to_pandas()
    valid["city"] = valid["city"].astype(frame["city"].dtype)
    valid["member"] = valid["member"].astype("float64")
    valid_y = valid.pop("y").to_numpy()
    if kind == "xgboost":
        import xgboost

        matrix = xgboost.QuantileDMatrix(frame, label=y, enable_categorical=True, nthread=RAY_CPUS)
        params = {"tree_method": "hist", "nthread": RAY_CPUS, "seed": 0, **OPTIONS[kind]}
        started = time.perf_counter()
        booster = xgboost.train(params, matrix, num_boost_round=ROUNDS[size])
        train_s = time.perf_counter() - started
        predicted = booster.inplace_predict(valid)
    else:
        import lightgbm

        dataset = lightgbm.Dataset(frame, label=y, categorical_feature=["city"])
        params = {"objective": "regression", "num_threads": RAY_CPUS, "seed": 0, "verbosity": -1,
                  "deterministic": True, "force_row_wise": True, **OPTIONS[kind]}
        started = time.perf_counter()
        booster = lightgbm.train(params, dataset, num_boost_round=ROUNDS[size])
        train_s = time.perf_counter() - started
        predicted = booster.predict(valid)
    r2 = 1 - float(np.sum((predicted - valid_y) ** 2) / np.sum((valid_y - valid_y.mean()) ** 2))
    return {
        "rows_per_s": len(y) * ROUNDS[size] / train_s,
        "validation": {"r2": r2},
        "data_peak_mb": proc_status_mb("VmHWM") - before,
        "shard_mb": shard_bytes(train, 1) / 2**20,
    }


if __name__ == "__main__":
    child_main({"ours": ours, "plain": plain})
