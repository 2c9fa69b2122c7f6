"""Two real runs on the shared local Ray, then `runs`, `report`, `compare` and `predict` through the CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from orchestrator import cli
from orchestrator.data import source
from orchestrator.results import reports
from tests.conftest import learned_linear, regression_job


def test_two_real_runs_are_listed_reported_compared_and_used_for_predictions(regression_data, tmp_path, capsys):
    data_dir, _ = regression_data
    runs = tmp_path / "runs"
    mlflow = importlib.util.find_spec("mlflow") is not None  # optional: checked when installed
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name, lr in (("fast", 0.2), ("slow", 0.02)):
        raw = regression_job(data_dir, str(runs), name=name, optim={"name": "sgd", "lr": lr},
                             train={"epochs": 2, "batch_size": 256, "seed": 0, "log_every_n_steps": 10})
        if mlflow and name == "fast":
            raw["tracking"] = {"mlflow": True, "mlflow_tracking_uri": uri, "tensorboard": True}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        assert cli.main(["run", str(tmp_path / f"{name}.yaml")]) == 0
    capsys.readouterr()

    assert cli.main(["runs", str(runs)]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in listed[1:]] == [["fast", "finished"], ["slow", "finished"]]

    fast = runs / "fast"
    summary = json.loads((fast / "summary.json").read_text())
    assert cli.main(["report", str(fast)]) == 0
    printed = capsys.readouterr().out
    assert "train/validation gap" in printed
    for name in ("loss.png", "metrics.png"):
        png = (fast / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    plotted = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
               for fig in reports.report_figures(reports.open_run(str(fast))).values()
               for ax in fig.axes for line in ax.lines}
    history = pq.read_table(fast / "metrics.parquet").to_pylist()
    train = sorted((row["step"], row["value"]) for row in history if row["name"] == "train/loss")
    assert [step for step, _ in train] == list(range(1, summary["steps"] + 1))  # every step once
    assert plotted["train/loss"] == ([s for s, _ in train], [v for _, v in train])
    assert len(plotted["val/loss"][0]) == 2  # one validation per epoch

    compare_png = tmp_path / "compare.png"
    assert cli.main(["compare", str(fast), str(runs / "slow"), "--out", str(compare_png)]) == 0
    table = capsys.readouterr().out
    assert "optim.lr" in table and compare_png.read_bytes()[:4] == b"\x89PNG"

    predictions = tmp_path / "predictions.parquet"
    assert cli.main(["predict", str(fast), "--data", data_dir, "--out", str(predictions)]) == 0
    data = pa.concat_tables(pq.read_table(path) for path in source.discover(data_dir))  # row-id order
    written = pq.read_table(predictions)
    assert written.column("row").to_pylist() == list(range(data.num_rows))
    w, b = learned_linear(fast)  # the linear model in the data's own units
    x = np.stack([data.column(f"x{j}").to_numpy() for j in range(4)], axis=1)
    assert np.allclose(written.column("prediction").to_numpy(), x @ w + b, atol=1e-4)

    if mlflow:
        from mlflow.tracking import MlflowClient

        run_id = json.loads((fast / "run.json").read_text())["trackers"]["mlflow_run_id"]
        exported = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "train/loss")
        assert sorted((m.step, m.value) for m in exported) == train
