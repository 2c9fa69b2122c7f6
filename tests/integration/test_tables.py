"""Real tables on the shared local Ray: every column kind, nulls, a string label; exact recovery with the
fitted preprocessing; predictions on raw rows; unscaled numbers; data the preprocessing cannot fit."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from orchestrator.data import plan, synthetic
from orchestrator.driver import launch
from orchestrator.errors import DataError
from orchestrator.job import spec
from orchestrator.results import predict

ROWS = 12_000


def churn_job(data: str, storage: str, **changes) -> dict:
    raw = {
        "name": "churn",
        "data": {"path": data, "label": "churned", "exclude": ["user_id"], "validation": 0.2},
        "model": {"kind": "mlp", "hidden": [64, 64]},
        "loss": "bce",
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
        "train": {"epochs": 3, "batch_size": 256, "seed": 0, "log_every_n_steps": 10},
        "scaling": {"workers": 2},
        "checkpoint": {"every_n_steps": 25, "keep": 2},
        "failure": {"max_failures": 2},
        "storage": storage,
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def churn_data(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("churn")
    synthetic.write(spec.GenerateSpec(kind="mixed", rows=ROWS, files=3, seed=0), str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def uninterrupted(churn_data, tmp_path_factory):
    return launch.run(spec.from_dict(churn_job(churn_data, str(tmp_path_factory.mktemp("runs")))))


def validation_truth_auc(data: str) -> float:
    """The AUC of the table's own churn probabilities on the run's validation rows: the ceiling."""
    from orchestrator.data import source
    from orchestrator.train.metrics import roc_auc

    index = source.scan(data, "churned", classification=True)
    rows = []
    for rg in index.row_groups:
        part = pq.ParquetFile(index.files[rg.file]).read_row_group(rg.index)
        rows.append(part.take(pa.array(plan.holdout_rows(rg.first_row, rg.num_rows, 0.2))))
    valid = pa.concat_tables(rows)
    valid = valid.filter(pc.is_valid(valid["churned"]))
    p = synthetic.churn_probability(valid)
    labels = (valid["churned"].to_numpy(zero_copy_only=False) == "yes").astype(np.int64)
    return roc_auc(np.stack([1 - p, p], axis=1), labels)


def test_a_mixed_table_learns_its_known_structure_and_counts_the_rows_without_a_label(churn_data, uninterrupted):
    summary = uninterrupted
    assert summary.status == "finished"
    ceiling = validation_truth_auc(churn_data)
    # 9,600 training rows, 3 epochs: within 0.05 of the best possible AUC (the truth's own, ~0.85).
    assert summary.validation["auc"] > ceiling - 0.05
    assert {"accuracy", "log_loss", "auc", "f1"} <= set(summary.validation)
    table = pa.concat_tables(pq.read_table(p) for p in sorted(pathlib.Path(churn_data).glob("*.parquet")))
    held = {rg_first + int(i) for rg_first, n in _row_groups(churn_data)
            for i in plan.holdout_rows(rg_first, n, 0.2)}
    unlabelled = [i for i, v in enumerate(table["churned"].to_pylist()) if v is None and i not in held]
    assert summary.null_labels == len(unlabelled) > 0  # the training rows without a label, skipped
    saved = json.loads((pathlib.Path(summary.run_dir) / "summary.json").read_text())
    assert saved["null_labels"] == summary.null_labels and saved["preprocessing_fit_s"] > 0
    # income's missing values are NaN, which Parquet footers do not count: the run counts them, exactly.
    nan_incomes = sum(
        int(np.isnan(_income(churn_data, first, rows)[plan.train_rows(first, rows, 0.2)]).sum())
        for first, rows in _row_groups(churn_data))
    assert saved["missing_values"]["income"] == nan_incomes > 0


def _income(data: str, first_row: int, rows: int) -> np.ndarray:
    """The income column of the row group that starts at global row `first_row`."""
    at = 0
    for path in sorted(pathlib.Path(data).glob("*.parquet")):
        file = pq.ParquetFile(path)
        for i in range(file.metadata.num_row_groups):
            if at == first_row:
                return file.read_row_group(i, columns=["income"])["income"].to_numpy(zero_copy_only=False)
            at += file.metadata.row_group(i).num_rows
    raise AssertionError(f"no row group starts at row {first_row}")


def _row_groups(data: str):
    first = 0
    for path in sorted(pathlib.Path(data).glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        for i in range(meta.num_row_groups):
            yield first, meta.row_group(i).num_rows
            first += meta.row_group(i).num_rows


def test_a_worker_killed_mid_run_resumes_with_the_same_preprocessing_and_ends_bit_identical(
        churn_data, uninterrupted, tmp_path):
    raw = churn_job(churn_data, str(tmp_path), failure={"max_failures": 2, "inject": {"exit_at_step": 60, "rank": 1}})
    summary = launch.run(spec.from_dict(raw))
    assert summary.restarts == 1 and summary.resumed_from_steps == [50]
    assert summary.weights_sha256 == uninterrupted.weights_sha256
    # fitted once, before the first step: the resumed group read it from its checkpoint
    assert (pathlib.Path(summary.run_dir) / "preprocessing.json").read_text() == \
        (pathlib.Path(uninterrupted.run_dir) / "preprocessing.json").read_text()


def test_predict_on_raw_rows_with_unseen_categories_new_nulls_and_nan_gives_class_names(uninterrupted, tmp_path):
    rows = pa.table({
        "city": pa.array(["city000", "atlantis", None], pa.string()),
        "income": pa.array([50_000.0, float("nan"), None]),
        "age": pa.array([30, 70, 45], pa.int32()),
        "is_member": pa.array([None, True, False]),
        "signup_time": pa.array([0, None, 1_700_000_000_000_000], pa.timestamp("us", tz="UTC")),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(24, np.float32)), 8),
        "tags": pa.array([["tag00", "never-seen"], None, []], pa.list_(pa.string())),
    })
    pq.write_table(rows, tmp_path / "new.parquet")
    out = tmp_path / "predictions.parquet"

    assert predict.predict(uninterrupted.run_dir, str(tmp_path / "new.parquet"), str(out)) == 3

    written = pq.read_table(out)
    assert written.column_names == ["row", "prediction", "probability_no", "probability_yes"]
    assert set(written["prediction"].to_pylist()) <= {"yes", "no"}
    probabilities = written["probability_yes"].to_numpy()
    assert np.all(np.isfinite(probabilities)) and np.allclose(written["probability_no"].to_numpy(), 1 - probabilities)

    pq.write_table(rows.drop_columns(["age"]), tmp_path / "no-age.parquet")
    with pytest.raises(DataError, match=r"'age' missing"):
        predict.predict(uninterrupted.run_dir, str(tmp_path / "no-age.parquet"), str(tmp_path / "p.parquet"))


def test_on_unscaled_features_the_default_mlp_beats_a_standardized_linear_model(tmp_path):
    rng = np.random.default_rng(3)
    n = 6000
    x = {"metres": rng.uniform(0, 2500, n), "revenue": np.exp(rng.normal(8, 1.5, n)), "ratio": rng.normal(0, 0.01, n)}
    y = 3 * np.sin(x["metres"] / 400) + 0.8 * np.log1p(x["revenue"]) + 80 * x["ratio"] + rng.normal(0, 0.3, n)
    data = tmp_path / "unscaled"
    data.mkdir()
    pq.write_table(pa.table({**x, "y": y}), data / "part.parquet", row_group_size=1000)
    raw = {"name": "unscaled", "data": {"path": str(data), "label": "y", "validation": 0.2},
           "model": {"kind": "mlp", "hidden": [64, 64]}, "loss": "mse", "optim": {"name": "adamw", "lr": 0.003},
           "train": {"epochs": 8, "batch_size": 128, "seed": 0}, "scaling": {"workers": 2},
           "checkpoint": {"every_n_steps": None}, "storage": str(tmp_path / "runs")}
    summary = launch.run(spec.from_dict(raw))

    # least squares on standardized features, fitted on the run's own training rows
    held = np.zeros(n, bool)
    for first in range(0, n, 1000):
        held[first + plan.holdout_rows(first, 1000, 0.2)] = True
    features = np.stack(list(x.values()), axis=1)
    features = (features - features[~held].mean(0)) / features[~held].std(0)
    design = np.c_[features, np.ones(n)]
    coef, *_ = np.linalg.lstsq(design[~held], y[~held], rcond=None)
    residual = y[held] - design[held] @ coef
    linear_r2 = 1 - residual @ residual / np.sum((y[held] - y[held].mean()) ** 2)
    assert summary.validation["r2"] > linear_r2 + 0.05


def test_an_all_null_feature_column_fails_the_run_naming_it_without_retries(churn_data, tmp_path):
    table = pq.read_table(churn_data).select(["age", "churned"])
    table = table.append_column("empty", pa.nulls(table.num_rows, pa.float64()))
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part.parquet", row_group_size=3000)
    raw = churn_job(str(tmp_path / "data"), str(tmp_path / "runs"))
    raw["data"].pop("exclude")
    with pytest.raises(DataError, match=r"(?s)column 'empty' has no value in the training rows.*data.exclude"):
        launch.run(spec.from_dict(raw))
    assert json.loads((tmp_path / "runs" / "churn" / "summary.json").read_text())["restarts"] == 0
