"""Typed tables: ours, with a shipped job and no tuning, against LightGBM and a standardized linear
model, on the same train/validation split of generated tables with a known answer.

churn     jobs/churn.yaml's table (data.synthetic "mixed"): strings with a long tail, nulls, a
          skewed income, a boolean, a timestamp, an 8-dim embedding, tags, a string label with
          nulls. Metric: validation ROC AUC (and accuracy); the truth's own AUC is the ceiling.
unscaled  numbers on wildly different scales (0..2,500, lognormal up to ~10^5, 0.01-wide), a
          nonlinear regression target. Metric: validation R².

Cases (each a child process):
ours_<table>[_<model>]   `launch.run` of the table's job (embedded Ray, 2 workers); the summary
                         gives the metric, samples/s and the statistics pass (preprocessing_fit_s)
ours_churn_numeric       the churn job on its numeric columns only: samples/s without embeddings
lightgbm_<table>         lightgbm.train, default parameters (100 rounds), on the same training rows:
                         city as a pandas category, datetime parts, embedding dims, tags multi-hot
linear_<table>           scikit-learn: median imputation + indicators, StandardScaler, one-hot
                         city; LogisticRegression / Ridge
The split is ours (data.plan.holdout_rows per row group), so every model sees the same rows.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.common import WORK, child_main

ROWS = {"full": 100_000, "quick": 8_000}
HOLDOUT = 0.2
UNSCALED_FEATURES = 8


def ensure(table: str, size: str) -> pathlib.Path:
    """The table's Parquet directory under .work/, written once."""
    from orchestrator.data import synthetic
    from orchestrator.job.spec import GenerateSpec

    directory = WORK / f"tables-{table}-{size}"
    if not (directory / "part-00003.parquet").exists():
        if table == "churn":
            synthetic.write(GenerateSpec(kind="mixed", rows=ROWS[size], files=4, seed=0), str(directory))
        else:
            _write_unscaled(directory, ROWS[size])
    return directory


def _write_unscaled(directory: pathlib.Path, rows: int) -> None:
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    x = {
        "distance_m": rng.uniform(0, 2500, rows),
        "revenue": np.exp(rng.normal(8, 1.5, rows)),
        "ratio": rng.normal(0.0, 0.01, rows),
        "visits": rng.poisson(30, rows).astype(np.float64),
        **{f"z{i}": rng.normal(500, 100, rows) for i in range(UNSCALED_FEATURES - 4)},
    }
    y = (3 * np.sin(x["distance_m"] / 400) + 0.8 * np.log1p(x["revenue"]) + 80 * x["ratio"]
         + 0.05 * x["visits"] + 0.01 * (x["z0"] - 500) + rng.normal(0, 0.5, rows))
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({**x, "y": y})
    for i, part in enumerate(np.array_split(np.arange(rows), 4)):
        pq.write_table(table.take(pa.array(part)), directory / f"part-{i:05d}.parquet", row_group_size=5000)


JOBS = {
    "churn": {"file": "jobs/churn.yaml", "label": "churned", "metric": "auc"},
    "unscaled": {"label": "y", "metric": "r2"},
}


def _job(table: str, data: str, model: dict | None = None, features: list[str] | None = None) -> dict:
    import yaml

    from benchmarks.common import REPO

    if table == "churn":
        raw = yaml.safe_load((REPO / JOBS["churn"]["file"]).read_text())
        raw["data"].pop("generate")
    else:  # the README's regression defaults: an MLP, adamw, cosine, early stopping
        raw = {"name": "unscaled", "data": {"label": "y"}, "model": {"kind": "mlp", "hidden": [128, 128]},
               "loss": "mse", "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
               "schedule": {"name": "cosine", "warmup_steps": 50}, "train": {"epochs": 12, "batch_size": 512},
               "early_stopping": {"metric": "val_r2", "patience": 3}, "scaling": {"workers": 2}}
    raw["data"].update(path=data, validation=HOLDOUT)
    if features:
        raw["data"].pop("exclude", None)
        raw["data"]["features"] = features
    if model:
        raw["model"] = model
    raw.update(name=f"tables-{table}", storage=str(WORK / "runs"))
    raw["checkpoint"] = {"every_n_steps": None, "keep": 1}
    return raw


def ours(table: str, data: str, model: dict | None = None, features: list[str] | None = None) -> dict:
    from orchestrator.driver import launch
    from orchestrator.job import spec

    records: list[dict] = []
    summary = launch.run(spec.from_dict(_job(table, data, model, features)), fresh=True, on_record=records.append)
    epochs = [r for r in records if r["kind"] == "epoch"]
    rows_per_epoch = summary.samples / max(summary.epochs_completed, 1)
    epoch_s = float(np.median([rows_per_epoch / r["samples_per_s"] for r in epochs]))
    best = max(epochs, key=lambda r: r["validation"].get(JOBS[table]["metric"], -np.inf))["validation"]
    return {"validation": summary.validation, "best_validation": best, "samples_per_s": summary.samples_per_s,
            "preprocessing_fit_s": summary.preprocessing_fit_s, "epoch_s": round(epoch_s, 3),
            "epochs": summary.epochs_completed, "wall_s": summary.wall_s, "stopped_early": summary.stopped_early}


def split(table: str, data: str) -> tuple[pa.Table, pa.Table]:
    """(training rows, validation rows) exactly as a run with validation HOLDOUT splits them."""
    import pyarrow.parquet as pq

    from orchestrator.data import plan, source

    index = source.scan(data, JOBS[table]["label"], classification=table == "churn")
    train, valid = [], []
    for rg in index.row_groups:
        part = pq.ParquetFile(index.files[rg.file]).read_row_group(rg.index)
        held = plan.holdout_rows(rg.first_row, rg.num_rows, HOLDOUT)
        keep = np.ones(rg.num_rows, bool)
        keep[held] = False
        train.append(part.filter(pa.array(keep)))
        valid.append(part.take(pa.array(held)))
    return pa.concat_tables(train), pa.concat_tables(valid)


def _frame(table: str, rows: pa.Table):
    """(features as a pandas DataFrame, labels as numpy) for the baselines; unlabelled rows dropped."""
    label = JOBS[table]["label"]
    rows = rows.filter(pc.is_valid(rows[label]))
    if table == "unscaled":
        return rows.drop_columns([label]).to_pandas(), rows[label].to_numpy()
    frame = rows.select(["income", "age"]).to_pandas()
    frame["city"] = rows["city"].to_pandas().astype("category")
    frame["is_member"] = rows["is_member"].to_pandas().astype("float64")
    stamp = rows["signup_time"]
    for part in ("hour", "day_of_week", "month"):
        frame[part] = getattr(pc, part)(stamp).to_numpy()
    frame["signup_s"] = pc.cast(stamp, pa.int64()).to_numpy() / 1e6
    embedding = np.stack(rows["embedding"].to_numpy(zero_copy_only=False))
    for i in range(embedding.shape[1]):
        frame[f"embedding_{i}"] = embedding[:, i]
    from orchestrator.data.synthetic import TAGS

    tags = rows["tags"].to_pylist()
    for tag in TAGS:
        frame[f"tag_{tag}"] = [float(tag in (row or ())) for row in tags]
    return frame, (rows[label].to_numpy(zero_copy_only=False) == "yes").astype(np.int64)


def _score(table: str, y: np.ndarray, predicted: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, r2_score, roc_auc_score

    if table == "unscaled":
        return {"r2": float(r2_score(y, predicted))}
    return {"auc": float(roc_auc_score(y, predicted)), "accuracy": float(accuracy_score(y, predicted > 0.5))}


def lightgbm(table: str, data: str) -> dict:
    import lightgbm as lgb

    train, valid = split(table, data)
    (x, y), (vx, vy) = _frame(table, train), _frame(table, valid)
    if table == "churn":
        vx["city"] = vx["city"].cat.set_categories(x["city"].cat.categories)
    started = time.perf_counter()
    params = {"objective": "regression" if table == "unscaled" else "binary", "verbosity": -1, "num_threads": 2}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=100)
    fit_s = time.perf_counter() - started
    return {"validation": _score(table, vy, booster.predict(vx)), "fit_s": round(fit_s, 3),
            "rows": len(y)}


def linear(table: str, data: str) -> dict:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train, valid = split(table, data)
    (x, y), (vx, vy) = _frame(table, train), _frame(table, valid)
    numeric = [c for c in x.columns if c != "city"]
    parts = [("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
              numeric)]
    if table == "churn":
        x["city"], vx["city"] = x["city"].astype(object).fillna("<missing>"), vx["city"].astype(object).fillna("<missing>")
        parts.append(("city", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5), ["city"]))
    model = Ridge(alpha=1.0) if table == "unscaled" else LogisticRegression(max_iter=2000)
    pipeline = make_pipeline(ColumnTransformer(parts), model)
    started = time.perf_counter()
    pipeline.fit(x, y)
    fit_s = time.perf_counter() - started
    predicted = pipeline.predict(vx) if table == "unscaled" else pipeline.predict_proba(vx)[:, 1]
    return {"validation": _score(table, vy, predicted), "fit_s": round(fit_s, 3)}


def truth(data: str) -> dict:
    """The churn table's own probabilities scored on the validation rows: the best any model can do."""
    from orchestrator.data.synthetic import churn_probability

    _, valid = split("churn", data)
    valid = valid.filter(pc.is_valid(valid["churned"]))
    y = (valid["churned"].to_numpy(zero_copy_only=False) == "yes").astype(np.int64)
    return {"validation": _score("churn", y, churn_probability(valid))}


CASES = {
    "ours": ours,
    "lightgbm": lightgbm,
    "linear": linear,
    "truth": truth,
}

if __name__ == "__main__":
    child_main(CASES)
