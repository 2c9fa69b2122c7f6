"""Gradient-boosted trees on the shared local Ray: XGBoost and LightGBM from the same job file, against
the same library in one process; exact recovery from a killed worker and a killed driver; predictions
on raw rows; a tree run compared with a network run; refusals before any worker starts."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.data import plan, source
from orchestrator.data.matrix import tree_features
from orchestrator.data.reader import RowGroupSource, fit_in_process
from orchestrator.driver import launch
from orchestrator.errors import SpecError
from orchestrator.job import spec
from orchestrator.results import predict, reports
from orchestrator.train import boosters
from orchestrator.train.boosting import measure, read_matrix
from tests.unit.test_exporters import tensorboard_scalars

CITIES = [f"city{i:02d}" for i in range(40)]
# Bounds on |distributed - one process| for the same library and parameters. XGBoost's workers merge
# their quantile sketches and LightGBM's find bins per worker, so the splits differ a little.
R2_BOUND, ACCURACY_BOUND = 0.01, 0.02


def write_table(directory: pathlib.Path, rows: int, seed: int = 0, files: int = 3) -> str:
    """Numbers with nulls, a long-tailed string category with nulls, a nullable boolean; a regression
    label `y` and a 3-class label `kind` that depend on all of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    city = rng.zipf(1.5, rows) % len(CITIES)
    effect = np.linspace(-2, 2, len(CITIES))[city]
    member = rng.random(rows) < 0.3
    y = 2 * x[:, 0] - x[:, 1] + x[:, 2] ** 2 + effect + 1.5 * member + rng.normal(scale=0.3, size=rows)
    kind = np.array(["a", "b", "c"])[np.argmax(np.stack([x[:, 0] + effect, x[:, 1] + member, -x[:, 0]]), axis=0)]
    missing = rng.random((rows, 3)) < 0.05
    table = pa.table({
        **{f"x{i}": pa.array(x[:, i], mask=missing[:, i]) for i in range(3)},
        "city": pa.array(np.array(CITIES)[city], mask=rng.random(rows) < 0.05),
        "member": pa.array(member, mask=rng.random(rows) < 0.05),
        "y": y,
        "kind": kind,
    })
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(lo, hi - lo), directory / f"part-{i}.parquet", row_group_size=(hi - lo) // 4 + 1)
    return str(directory)


def tree_job(data: str, storage: str, kind: str = "xgboost", task: str = "regression", **changes) -> dict:
    options = {"max_depth": 5, "eta": 0.1} if kind == "xgboost" else {"num_leaves": 31, "learning_rate": 0.1}
    raw = {
        "name": f"{kind}-{task}",
        "data": {"path": data, "label": "y" if task == "regression" else "kind", "validation": 0.2,
                 **({"exclude": ["kind"]} if task == "regression" else {"exclude": ["y"]})},
        "model": {"kind": kind, "rounds": 40, "options": options},
        "loss": "mse" if task == "regression" else "cross_entropy",
        "train": {"seed": 0, "log_every_n_steps": 5},
        "scaling": {"workers": 2},
        "checkpoint": {"every_n_steps": 10, "keep": 2},
        "failure": {"max_failures": 2},
        "storage": storage,
    }
    raw.update(changes)
    return raw


def one_process(job: spec.JobSpec) -> dict[str, float]:
    """The same library and parameters trained in this process on every training row, measured on the
    same validation rows with the same metrics."""
    index = source.scan(job.data.path, job.data.label, job.data.features,
                        classification=job.loss.name in spec.CLASSIFICATION_LOSSES)
    pre = fit_in_process(index, 0.2)
    features, width = tree_features(pre), len(tree_features(pre).names)
    groups = list(enumerate(index.row_groups))
    data = RowGroupSource(index, None)
    train = read_matrix(data, pre, [(p, plan.train_rows(rg.first_row, rg.num_rows, 0.2)) for p, rg in groups], width)
    held = read_matrix(data, pre, [(p, plan.holdout_rows(rg.first_row, rg.num_rows, 0.2)) for p, rg in groups], width)
    library = boosters.library(job.model.kind)
    classes = len(pre.label.classes) if pre.label.task == "classification" else None
    params = library.params(job.model.options, library.objective(job.loss.name, classes), 1, 0, False, 1)
    matrix = library.train_matrix(lambda: iter([train]), features, params)
    booster = library.train(params, matrix, job.model.rounds, None, lambda *_: False)
    return measure(library.margins(booster, held.features), held.labels, pre.label, job.loss)


@pytest.fixture(scope="module")
def small_table(tmp_path_factory) -> str:
    return write_table(tmp_path_factory.mktemp("trees") / "small", rows=6000)


@pytest.fixture(scope="module")
def small_runs(small_table, tmp_path_factory):
    """Each (library, task) run on the small table, trained once for every test that reads it."""
    storage, finished = tmp_path_factory.mktemp("small-runs"), {}

    def run(kind: str, task: str):
        if (kind, task) not in finished:
            job = spec.from_dict(tree_job(small_table, str(storage), kind, task, tracking={"tensorboard": True}))
            finished[kind, task] = job, launch.run(job)
        return finished[kind, task]

    return run


@pytest.mark.parametrize("kind, task", [("xgboost", "regression"), ("xgboost", "multiclass"),
                                        ("lightgbm", "regression"), ("lightgbm", "multiclass")])
def test_two_workers_match_the_library_in_one_process(small_runs, kind, task):
    job, summary = small_runs(kind, task)
    assert summary.status == "finished" and summary.world_size == 2 and summary.steps == 40
    assert pathlib.Path(summary.model).name == boosters.library(kind).model_file
    alone = one_process(launch.prepare(job).job)
    if task == "regression":
        assert summary.validation["r2"] > 0.8
        assert abs(summary.validation["r2"] - alone["r2"]) < R2_BOUND
    else:
        assert summary.validation["accuracy"] > 0.8
        assert abs(summary.validation["accuracy"] - alone["accuracy"]) < ACCURACY_BOUND
    history = pq.read_table(pathlib.Path(summary.run_dir) / "metrics.parquet").to_pandas()
    rounds = history[history["name"] == "val/loss"]["step"].tolist()
    assert rounds == list(range(1, 41))  # one validation row per boosting round
    exported = tensorboard_scalars(str(pathlib.Path(summary.run_dir) / "tensorboard"))
    assert [step for step, _ in exported["val/loss"]] == rounds


@pytest.fixture(scope="module")
def slow_table(tmp_path_factory) -> str:
    """Enough rows that a round takes tens of milliseconds: a kill lands mid-run."""
    return write_table(tmp_path_factory.mktemp("trees") / "slow", rows=100_000, seed=1)


def slow_job(data: str, storage: str, kind: str = "xgboost") -> dict:
    options = {"max_depth": 8, "eta": 0.05} if kind == "xgboost" else {"num_leaves": 255, "learning_rate": 0.05}
    return tree_job(data, storage, kind, name="slow", model={"kind": kind, "rounds": 80, "options": options},
                    checkpoint={"every_n_steps": 10, "keep": 2})


def predictions(run_dir: str, data: str, out: pathlib.Path) -> np.ndarray:
    predict.predict(run_dir, data, str(out))
    return pq.read_table(out)["prediction"].to_numpy()


@pytest.fixture(scope="module")
def reference(slow_table, tmp_path_factory):
    storage = tmp_path_factory.mktemp("reference")
    summary = launch.run(spec.from_dict(slow_job(slow_table, str(storage))))
    assert summary.status == "finished" and summary.restarts == 0
    return summary, predictions(summary.run_dir, slow_table, storage / "predictions.parquet")


@pytest.fixture(scope="module", autouse=True)
def prompt_progress():
    """Relay the workers' records to the test every 20 ms, so a kill follows them closely."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORCHESTRATOR_PROGRESS_POLL_INTERVAL_S", "0.02")
        yield


def test_a_worker_killed_mid_run_resumes_and_predicts_identically(reference, slow_table, tmp_path):
    _, expected = reference
    pids: dict[int, int] = {}
    killed: list[int] = []

    def chaos(record: dict) -> None:
        if record["kind"] == "worker":
            pids[record["rank"]] = record["pid"]
        elif record["kind"] == "checkpoint" and record["step"] == 20 and not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(record["step"])

    summary = launch.run(spec.from_dict(slow_job(slow_table, str(tmp_path))), on_record=chaos)
    assert killed and summary.status == "finished" and summary.restarts == 1
    assert summary.resumed_from_steps and summary.resumed_from_steps[-1] >= 20
    np.testing.assert_array_equal(predictions(summary.run_dir, slow_table, tmp_path / "p.parquet"), expected)


def test_a_killed_driver_rerun_resumes_and_predicts_identically(reference, slow_table, tmp_path):
    _, expected = reference
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(slow_job(slow_table, str(tmp_path / "runs"))))
    command = [sys.executable, "-m", "orchestrator", "run", str(job_file)]
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in driver.stdout:
        if line.startswith("round 25/"):
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming slow from its checkpoint at step" in rerun.stdout
    run_dir = tmp_path / "runs" / "slow"
    np.testing.assert_array_equal(predictions(str(run_dir), slow_table, tmp_path / "p.parquet"), expected)


def test_predict_on_rows_with_unseen_categories_and_nulls(small_runs, small_table, tmp_path):
    _, summary = small_runs("lightgbm", "multiclass")
    fresh = pa.table({"x0": [0.5, None, float("nan")], "x1": [1.0, 2.0, None], "x2": [None, 0.0, 1.0],
                      "city": ["atlantis", None, "city01"], "member": [None, True, False]})
    pq.write_table(fresh, tmp_path / "fresh.parquet")
    predict.predict(summary.run_dir, str(tmp_path / "fresh.parquet"), str(tmp_path / "out.parquet"))
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert out["row"] == [0, 1, 2]
    assert set(out["prediction"]) <= {"a", "b", "c"}
    total = np.array(out["probability_a"]) + np.array(out["probability_b"]) + np.array(out["probability_c"])
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    scored = predict.evaluate(summary.run_dir, small_table)  # every row, the training rows included
    assert scored["rows"] == 6000 and scored["accuracy"] >= summary.validation["accuracy"] - 0.02


def test_compare_a_tree_run_with_a_network_run_and_report_its_importance(small_runs, small_table, tmp_path):
    _, trees = small_runs("xgboost", "regression")
    network = launch.run(spec.from_dict({
        **tree_job(small_table, str(tmp_path), name="mlp-regression"),
        "model": {"kind": "mlp", "hidden": [32, 32]}, "optim": {"lr": 0.003},
        "train": {"epochs": 3, "batch_size": 128, "seed": 0, "log_every_n_steps": 10},
    }))
    a, b = reports.open_run(trees.run_dir), reports.open_run(network.run_dir)
    table = reports.compare_table(a, b)
    assert "val_r2" in table and "model.kind" in table
    fig = reports.compare_figure(a, b)
    assert "share of the run" in fig.axes[0].get_xlabel()
    importance = reports.feature_importance(a)
    assert set(importance) == set(tree_features(predict.load(trees.run_dir).preprocessing).names)
    assert max(importance, key=importance.get) in ("x0", "city")  # the two strongest effects
    assert "importance.png" in {pathlib.Path(url).name for url in reports.write_report(a)}


def test_unknown_booster_options_and_network_settings_are_refused_before_any_worker(small_table, tmp_path):
    raw = tree_job(small_table, str(tmp_path), "xgboost", model={"kind": "xgboost", "rounds": 5,
                                                                 "options": {"max_dpth": 4}})
    with pytest.raises(SpecError) as info:
        launch.prepare(spec.from_dict(raw))
    assert "model.options.max_dpth" in str(info.value) and "max_depth" in str(info.value)
    with pytest.raises(SpecError) as info:
        spec.from_dict({**raw, "train": {"batch_size": 64}})
    assert "train.batch_size" in str(info.value)


def test_a_lightgbm_worker_that_dies_mid_run_resumes_and_predicts_identically(small_runs, small_table, tmp_path):
    _, expected = small_runs("lightgbm", "regression")
    dies = {"max_failures": 2, "inject": {"exit_at_step": 25, "rank": 1}}  # os._exit after round 25
    summary = launch.run(spec.from_dict(tree_job(small_table, str(tmp_path), "lightgbm", "regression", failure=dies)))
    assert summary.status == "finished" and summary.restarts == 1 and summary.resumed_from_steps == [20]
    np.testing.assert_array_equal(predictions(summary.run_dir, small_table, tmp_path / "p.parquet"),
                                  predictions(expected.run_dir, small_table, tmp_path / "expected.parquet"))
