"""Reading run folders back: the runs table, reports with PNG plots, compare, predict and evaluate.

Each run folder here is written by hand the way a finished run leaves it
(summary.json, run.json, metrics.parquet, model.pt from a tiny nn.Linear), on
local disk and on fsspec's in-memory filesystem.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator import cli, storage
from orchestrator.data import source
from orchestrator.data.preprocess import Preprocessing, transform
from orchestrator.data.reader import fit_in_process
from orchestrator.errors import DataError
from orchestrator.job import spec
from orchestrator.results import predict, reports
from orchestrator.train import checkpoint, models
from tests.conftest import regression_job

pytest.importorskip("matplotlib")

HISTORY_SCHEMA = pa.schema([("step", pa.int64()), ("epoch", pa.int64()), ("name", pa.string()),
                            ("value", pa.float64()), ("time", pa.float64())])
STEPS_PER_EPOCH = 10


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> str:
    """A folder URL to write run folders and data into: a local path, or memory://."""
    if request.param == "local":
        yield str(tmp_path)
        return
    url = f"memory://reports-{uuid.uuid4().hex}"
    yield url
    fs, path = storage.fsspec_filesystem(url)
    fs.rm(path, recursive=True)


def write(url: str, payload: bytes) -> None:
    fs, path = storage.arrow_filesystem(url)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(payload)


def write_data(url: str, features: int = 3, rows: tuple[int, ...] = (37, 25), classes: int | None = None) -> str:
    """Parquet files of float features x0.. and a label y (float, or class ids with `classes`)."""
    rng = np.random.default_rng(0)
    for i, count in enumerate(rows):
        columns = {f"x{j}": rng.normal(size=count).astype(np.float32) for j in range(features)}
        columns["y"] = rng.integers(0, classes, size=count) if classes else rng.normal(size=count)
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns), buffer, row_group_size=10)
        write(storage.join(url, f"part-{i}.parquet"), buffer.getvalue())
    return url


def history_table(epochs: int, val_losses: list[float], score: str = "val/r2") -> pa.Table:
    """A metrics.parquet as the contract describes it: every step's loss and lr, epoch-end rows."""
    rows = []
    for step in range(1, epochs * STEPS_PER_EPOCH + 1):
        epoch = (step - 1) // STEPS_PER_EPOCH
        rows += [(step, epoch, "train/loss", 1.0 / step), (step, epoch, "train/lr", 0.1 * (1 - step / 100))]
        if step % 5 == 0:
            rows.append((step, epoch, "train/samples_per_s", 1000.0 + step))
        if step % STEPS_PER_EPOCH == 0:
            rows += [(step, epoch, "epoch/train_loss", 2.0 / step), (step, epoch, "epoch/samples_per_s", 900.0 + step),
                     (step, epoch, "val/loss", val_losses[epoch]), (step, epoch, score, 1 - val_losses[epoch])]
    step, epoch, name, value = zip(*rows)
    return pa.table({"step": step, "epoch": epoch, "name": name, "value": value,
                     "time": [1.7e9 + s for s in step]}, schema=HISTORY_SCHEMA)


def make_run(storage_url: str, name: str, data_url: str, *, loss: str = "mse", outputs: int = 1,
             val_losses=(0.5, 0.3, 0.4), lr: float = 0.2, early_stopping: bool = True, restarts: bool = True,
             summary: bool = True) -> str:
    """A finished run folder as launch writes it; returns its URL."""
    run = storage.join(storage_url, name)
    raw = regression_job(data_url, storage_url, name=name, loss=loss, optim={"name": "sgd", "lr": lr},
                         model={"kind": "linear", "outputs": outputs if loss != "mse" else None})
    built = spec.from_dict(raw)
    job = built.to_dict()
    pre = fit_for(built, data_url)
    write(storage.join(run, checkpoint.PREPROCESSING_FILE), pre.to_json().encode())
    torch.manual_seed(len(name))
    buffer = io.BytesIO()
    torch.save(models.build_model(built.model, built.loss, pre.input_description(), outputs).state_dict(), buffer)
    write(storage.join(run, "model.pt"), buffer.getvalue())
    buffer = io.BytesIO()
    score = "val/accuracy" if loss in ("cross_entropy", "bce") else "val/r2"
    pq.write_table(history_table(len(val_losses), list(val_losses), score), buffer)
    write(storage.join(run, "metrics.parquet"), buffer.getvalue())
    last = len(val_losses) * STEPS_PER_EPOCH
    meta = {
        "name": name, "status": "finished", "job": job, "started_at": 1.7e9, "ended_at": 1.7e9 + 75.0,
        "versions": {"torch": torch.__version__}, "git_commit": None,
        "world_sizes": [{"step": 0, "world_size": 2, "time": 1.7e9}, {"step": 15, "world_size": 2, "time": 1.7e9 + 30}],
        "restarts": [{"time": 1.7e9 + 30, "cause": "rank 1: exited", "resumed_step": 15, "world_size": 2}]
        if restarts else [],
        "early_stopping": {"metric": "val_loss", "best_step": 20, "best_epoch": 1, "best_value": 0.3,
                           "stopped_at_step": last} if early_stopping else None,
        "trackers": {},
    }
    write(storage.join(run, "run.json"), json.dumps(meta).encode())
    if summary:
        train_loss = 2.0 / last
        body = {"name": name, "status": "finished", "steps": last, "epochs_completed": len(val_losses),
                "train": {"loss": train_loss}, "validation": {"loss": val_losses[-1], "r2": 1 - val_losses[-1]},
                "samples_per_s": 1000.0, "world_size": 2, "world_sizes": [2, 2], "restarts": 1,
                "resumed_from_steps": [15], "wall_s": 75.0, "warnings": [], "error": None}
        write(storage.join(run, "summary.json"), json.dumps(body).encode())
    return run


def fit_for(job: spec.JobSpec, data_url: str) -> Preprocessing:
    """The preprocessing a run of `job` fits on `data_url` (one rank, every row)."""
    index = source.scan(data_url, job.data.label, job.data.features,
                        classification=job.loss.name in spec.CLASSIFICATION_LOSSES)
    return fit_in_process(index, 0.0)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header; fails unless `data` is a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def read(url: str) -> bytes:
    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_stream(path) as f:
        return f.read()


def lines_by_label(fig) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for ax in fig.axes for line in ax.lines if not line.get_label().startswith("_")}


# ---- runs ---------------------------------------------------------------------------


def test_runs_lists_every_run_with_status_steps_best_validation_duration_and_workers(root, capsys):
    data = write_data(storage.join(root, "data"))
    runs = storage.join(root, "runs")
    make_run(runs, "alpha", data)
    make_run(runs, "beta", data, val_losses=(0.6, 0.5), early_stopping=False, summary=False)
    write(storage.join(runs, "not-a-run", "notes.txt"), b"hello")

    assert cli.main(["runs", runs]) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "status", "steps", "best", "validation", "duration", "workers"]
    assert len(lines) == 3  # the folder without summary.json or run.json is not a run
    alpha, beta = (line.split() for line in lines[1:])
    assert alpha == ["alpha", "finished", "30", "val_loss", "0.3", "(epoch", "2)", "1m15s", "2"]
    # Without a summary or early stopping: steps and the best validation loss come from metrics.parquet.
    assert beta == ["beta", "finished", "20", "val_loss", "0.5", "(epoch", "2)", "1m15s", "2"]


def test_runs_of_a_missing_storage_folder_exits_2_naming_it(tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


# ---- report -------------------------------------------------------------------------


def test_report_plots_exactly_the_stored_history_with_restarts_and_early_stopping_marked(tmp_path):
    run = reports.open_run(make_run(str(tmp_path / "runs"), "alpha", write_data(str(tmp_path / "data"))))

    figures = reports.report_figures(run)

    plotted = {}
    for fig in figures.values():
        plotted.update(lines_by_label(fig))
    history = pq.read_table(tmp_path / "runs" / "alpha" / "metrics.parquet").to_pylist()
    for name in ("train/loss", "train/lr", "train/samples_per_s", "epoch/train_loss", "epoch/samples_per_s",
                 "val/loss", "val/r2"):
        stored = sorted((row["step"], row["value"]) for row in history if row["name"] == name)
        assert plotted[name] == ([s for s, _ in stored], [v for _, v in stored]), name
    assert plotted["restart"][0] == [15, 15]
    assert plotted["best (early stopping)"][0] == [20, 20]
    assert plotted["stopped early"][0] == [30, 30]


def test_report_writes_real_pngs_and_prints_the_gap_and_where_validation_stopped_improving(root, capsys):
    run = make_run(storage.join(root, "runs"), "alpha", write_data(storage.join(root, "data")))

    assert cli.main(["report", run]) == 0

    out = capsys.readouterr().out
    # Validation loss was 0.5, 0.3, 0.4: best at epoch 2; the last epoch's train loss is 2/30.
    assert "validation best at epoch 2" in out
    assert f"train/validation gap {0.4 - 2 / 30:.4g}" in out
    assert "resumed at step 15 with 2 worker(s): rank 1: exited" in out
    for name in ("loss.png", "metrics.png"):
        url = storage.join(run, "report", name)
        assert url in out
        data = read(url)
        width, height = png_size(data)
        assert width >= 600 and height >= 400 and len(data) > 20_000


def test_report_without_matplotlib_exits_2_naming_the_pip_install(tmp_path, monkeypatch, capsys):
    run = make_run(str(tmp_path / "runs"), "alpha", write_data(str(tmp_path / "data")))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it looks like

    assert cli.main(["report", run]) == 2

    assert "pip install matplotlib" in capsys.readouterr().err


def test_report_of_a_folder_that_holds_no_run_exits_2_saying_what_a_run_folder_holds(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "summary.json or run.json" in capsys.readouterr().err


# ---- compare ------------------------------------------------------------------------


def test_compare_draws_both_runs_on_one_plot_and_puts_their_metrics_side_by_side(root, tmp_path, capsys):
    data = write_data(storage.join(root, "data"))
    a = make_run(storage.join(root, "runs"), "alpha", data, lr=0.2)
    b = make_run(storage.join(root, "runs"), "beta", data, lr=0.05, val_losses=(0.7, 0.6, 0.55, 0.5))
    out = storage.join(root, "plots", "ab.png")

    assert cli.main(["compare", a, b, "--out", out]) == 0

    printed = capsys.readouterr().out
    table = dict((line.split()[0], line.split()[1:]) for line in printed.splitlines() if line.strip())
    assert table["steps"] == ["30", "40"]
    assert table["val_loss"] == ["0.4", "0.5"]
    assert table["optim.lr"] == ["0.2", "0.05"]  # job settings that differ
    assert out in printed and png_size(read(out))[0] >= 800
    plotted = lines_by_label(reports.compare_figure(reports.open_run(a), reports.open_run(b)))
    for run, label in ((reports.open_run(a), "alpha"), (reports.open_run(b), "beta")):
        for name in ("train/loss", "val/loss", "val/r2"):
            assert plotted[f"{label} {name}"] == tuple(map(list, run.series(name)))


def test_compare_without_out_says_where_in_the_current_folder_it_wrote_the_png(tmp_path, monkeypatch, capsys):
    data = write_data(str(tmp_path / "data"))
    a, b = (make_run(str(tmp_path / "runs"), name, data) for name in ("alpha", "beta"))
    monkeypatch.chdir(tmp_path)

    assert cli.main(["compare", a, b]) == 0

    written = tmp_path / "compare-alpha-vs-beta.png"
    assert f"  plot       {written}\n" in capsys.readouterr().out
    assert png_size(written.read_bytes())[0] >= 800


# ---- predict and evaluate ----------------------------------------------------------


def model_outputs(run: str, data: str) -> tuple[torch.Tensor, np.ndarray, Preprocessing]:
    """The run's model applied directly to every row of `data` in file order through its preprocessing,
    the raw labels, and the preprocessing."""
    pre = Preprocessing.from_json(read(storage.join(run, checkpoint.PREPROCESSING_FILE)).decode())
    job = spec.from_dict(json.loads(read(storage.join(run, "run.json")))["job"])
    state = torch.load(io.BytesIO(read(storage.join(run, "model.pt"))), weights_only=True)
    net = models.build_model(job.model, job.loss, pre.input_description(), models.output_size(
        job, pre.input_description()))
    net.load_state_dict(state)
    fs, path = storage.fsspec_filesystem(data)
    table = pa.concat_tables(pq.read_table(f, filesystem=storage.arrow_filesystem(data)[0])
                             for f in sorted(fs.glob(f"{path}/*.parquet")))
    encoded = transform(pre, table)
    with torch.no_grad():
        return net.eval()(torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.codes)), \
            table.column("y").to_numpy(), pre


def test_predict_writes_one_prediction_per_input_row_equal_to_the_models_outputs(root, capsys):
    data = write_data(storage.join(root, "data"))
    run = make_run(storage.join(root, "runs"), "alpha", data)
    out = storage.join(root, "out", "predictions.parquet")

    assert cli.main(["predict", run, "--data", data, "--out", out, "--batch-rows", "7"]) == 0

    assert "62 predictions" in capsys.readouterr().out
    written = pq.read_table(io.BytesIO(read(out)))
    expected, _, pre = model_outputs(run, data)
    assert written.column_names == ["row", "prediction"]
    assert written.column("row").to_pylist() == list(range(62))
    # In the label's units; batches of 7 rows and one of 62 may round float32 sums differently.
    np.testing.assert_allclose(written.column("prediction").to_numpy(),
                               pre.destandardize(expected.squeeze(-1).numpy()), rtol=1e-6, atol=1e-5)


def test_predict_refuses_to_replace_an_existing_out_file_unless_told_to_overwrite(root, capsys):
    data = write_data(storage.join(root, "data"))
    run = make_run(storage.join(root, "runs"), "alpha", data)
    out = storage.join(root, "out", "predictions.parquet")
    write(out, b"earlier results")

    assert cli.main(["predict", run, "--data", data, "--out", out]) == 2

    assert capsys.readouterr().err == f"error: --out {out} already exists; pass --overwrite to replace it, " \
                                      "or choose another --out\n"
    assert read(out) == b"earlier results"
    assert cli.main(["predict", run, "--data", data, "--out", out, "--overwrite"]) == 0
    assert pq.read_table(io.BytesIO(read(out))).num_rows == 62


@pytest.mark.parametrize("loss", ["cross_entropy", "bce"])
def test_predict_for_a_classifier_writes_the_class_and_its_probabilities(tmp_path, loss):
    data = write_data(str(tmp_path / "data"), classes=3 if loss == "cross_entropy" else 2)
    outputs = 3 if loss == "cross_entropy" else 1
    run = make_run(str(tmp_path / "runs"), "clf", data, loss=loss, outputs=outputs)
    out = str(tmp_path / "predictions.parquet")

    assert predict.predict(run, data, out) == 62

    written = pq.read_table(out)
    logits, _, _ = model_outputs(run, data)
    if loss == "cross_entropy":
        assert written.column_names == ["row", "prediction", "probability_0", "probability_1", "probability_2"]
        assert written.column("prediction").to_pylist() == logits.argmax(-1).tolist()
        probabilities = np.stack([written.column(f"probability_{k}").to_numpy() for k in range(3)], axis=1)
        assert np.allclose(probabilities, torch.softmax(logits, -1).numpy())
    else:  # the class values are the label's own (0 and 1 here), each with its probability
        assert written.column_names == ["row", "prediction", "probability_0", "probability_1"]
        assert written.column("prediction").to_pylist() == (logits.squeeze(-1) > 0).long().tolist()
        assert np.allclose(written.column("probability_1").to_numpy(), torch.sigmoid(logits.squeeze(-1)).numpy())


def test_predict_from_a_named_checkpoint_uses_that_checkpoints_weights(tmp_path):
    data = write_data(str(tmp_path / "data"))
    run = make_run(str(tmp_path / "runs"), "alpha", data)
    directory = tmp_path / "runs" / "alpha" / "step-00000010"
    directory.mkdir()
    torch.save({"body.weight": torch.ones(1, 3), "body.bias": torch.zeros(1)}, directory / checkpoint.MODEL_FILE)
    (directory / checkpoint.JOB_FILE).write_text(json.dumps(json.loads(read(run + "/run.json"))["job"]))
    pre = Preprocessing.from_json(read(run + "/" + checkpoint.PREPROCESSING_FILE).decode())
    (directory / checkpoint.PREPROCESSING_FILE).write_text(pre.to_json())
    files = {name: {"bytes": (directory / name).stat().st_size,
                    "sha256": hashlib.sha256((directory / name).read_bytes()).hexdigest()}
             for name in (checkpoint.MODEL_FILE, checkpoint.JOB_FILE, checkpoint.PREPROCESSING_FILE)}
    (directory / checkpoint.MANIFEST_FILE).write_text(
        json.dumps({"format_version": checkpoint.FORMAT_VERSION, "step": 10, "files": files}))
    out = str(tmp_path / "p.parquet")

    predict.predict(run, data, out, checkpoint_name="step-00000010")

    standardized = transform(pre, pq.read_table(str(tmp_path / "data"))).numeric
    assert np.allclose(pq.read_table(out).column("prediction").to_numpy(),
                       pre.destandardize(standardized.sum(axis=1)), atol=1e-5)


def test_predict_on_data_without_the_feature_columns_names_what_is_missing(tmp_path):
    run = make_run(str(tmp_path / "runs"), "alpha", write_data(str(tmp_path / "data")))
    other = write_data(str(tmp_path / "other"), features=2)

    with pytest.raises(DataError, match="feature column.*'x2' missing"):
        predict.predict(run, other, str(tmp_path / "p.parquet"))


def test_evaluate_prints_the_loss_and_r2_of_the_model_on_labelled_data(tmp_path, capsys):
    data = write_data(str(tmp_path / "data"))
    run = make_run(str(tmp_path / "runs"), "alpha", data)

    assert cli.main(["evaluate", run, "--data", data, "--batch-rows", "5"]) == 0

    outputs, labels, pre = model_outputs(run, data)
    errors = pre.destandardize(outputs.squeeze(-1).double().numpy()) - labels
    mse = float(np.mean(errors ** 2))
    r2 = 1 - float(np.sum(errors ** 2) / np.sum((labels - labels.mean()) ** 2))
    printed = capsys.readouterr().out.split()
    assert printed[:2] == ["62", "rows"]
    shown = dict(zip(printed[2::2], printed[3::2]))
    assert float(shown["loss"]) == pytest.approx(mse, rel=1e-3) and float(shown["r2"]) == pytest.approx(r2, rel=1e-3)
    assert float(shown["rmse"]) == pytest.approx(mse ** 0.5, rel=1e-3) and shown["unlabelled"] == "0"


def test_evaluate_on_data_without_the_label_exits_2_naming_the_label_column(tmp_path, capsys):
    data = write_data(str(tmp_path / "data"))
    run = make_run(str(tmp_path / "runs"), "alpha", data)
    unlabelled = tmp_path / "unlabelled.parquet"
    pq.write_table(pq.read_table(str(tmp_path / "data")).drop_columns(["y"]), unlabelled)

    assert cli.main(["evaluate", run, "--data", str(unlabelled)]) == 2

    assert "label column 'y'" in capsys.readouterr().err
