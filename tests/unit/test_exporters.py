"""Exporters: TensorBoard event files and MLflow runs stay consistent across a driver restart.

A restart is simulated as the driver does it: a second exporter opened with
the same run metadata, logging from the step the run resumed at.
"""

from __future__ import annotations

import glob
import os
import struct
import sys
import time

import pytest

from orchestrator.errors import SpecError
from orchestrator.job import spec
from orchestrator.track import exporters
from tests.conftest import regression_job


def make_job(tmp_path, **tracking) -> spec.JobSpec:
    return spec.from_dict(regression_job(str(tmp_path / "data"), str(tmp_path / "runs"), name="exp", tracking=tracking))


def rows(first: int, last: int, session: int = 0) -> list[dict]:
    """metrics.parquet rows for steps first..last: train/loss every step, val/loss every 10th.

    A replayed step after a restart has the same value but a later time (`session`).
    """
    out = []
    for step in range(first, last + 1):
        at, epoch = 1.7e9 + 1000 * session + step, (step - 1) // 10
        out.append({"step": step, "epoch": epoch, "name": "train/loss", "value": 1 / step, "time": at})
        if step % 10 == 0:
            out.append({"step": step, "epoch": epoch, "name": "val/loss", "value": 2 / step, "time": at})
    return out


def test_nothing_is_opened_when_tracking_is_off(tmp_path):
    assert exporters.open_exporters(make_job(tmp_path), str(tmp_path / "runs" / "exp"), {}) == []


def test_flatten_turns_the_job_into_dotted_keys():
    assert exporters.flatten({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "name": "x", "tracking": {}}) == {
        "optim.lr": 0.1, "optim.betas": [0.9, 0.99], "name": "x", "tracking": {}}


# ---- TensorBoard ----------------------------------------------------------------------


def tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Scalars as TensorBoard shows them: event files in order, a purge at step T hiding earlier steps >= T."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4  # length, its crc, the record, its crc
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_events_hold_each_step_once_after_a_restart_that_replays_steps(tmp_path):
    pytest.importorskip("tensorboardX")
    job, run = make_job(tmp_path, tensorboard=True), str(tmp_path / "runs" / "exp")
    meta: dict = {}
    (first,) = exporters.open_exporters(job, run, meta)
    first.log(rows(1, 25))
    first.close()
    time.sleep(1.1)  # event file names carry the second they were opened in

    (second,) = exporters.open_exporters(job, run, meta)  # resumed from the checkpoint at step 20
    second.log(rows(21, 30, session=1))
    second.close()

    scalars = tensorboard_scalars(os.path.join(run, "tensorboard"))
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 31))
    assert [step for step, _ in scalars["val/loss"]] == [10, 20, 30]
    assert scalars["train/loss"][-1][1] == pytest.approx(1 / 30)
    assert meta["trackers"]["tensorboard_dir"] == os.path.join(run, "tensorboard")


def test_tensorboard_on_remote_storage_is_a_spec_error_naming_the_key(tmp_path):
    with pytest.raises(SpecError, match="tracking.tensorboard"):
        exporters.open_exporters(make_job(tmp_path, tensorboard=True), "memory://runs/exp", {})


# ---- MLflow ---------------------------------------------------------------------------


def test_mlflow_records_the_job_as_params_and_each_metric_step_once_across_a_restart(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"  # MLflow's local store (its file store is in maintenance mode)
    job, run = make_job(tmp_path, mlflow=True, mlflow_tracking_uri=uri), str(tmp_path / "runs" / "exp")
    meta: dict = {"git_commit": "abc123", "status": "running"}
    (first,) = exporters.open_exporters(job, run, meta)
    first.log(rows(1, 25))
    first.close()  # the driver died after step 25; the newest checkpoint is step 20
    run_id = meta["trackers"]["mlflow_run_id"]

    (second,) = exporters.open_exporters(job, run, meta)
    second.log(rows(21, 30, session=1))
    meta["status"] = "finished"
    second.close()

    client = MlflowClient(tracking_uri=uri)
    assert meta["trackers"]["mlflow_run_id"] == run_id
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("exp").experiment_id])] == [run_id]
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "exp"
    assert stored.data.params["optim.lr"] == "0.2" and stored.data.params["train.batch_size"] == "256"
    assert stored.data.tags["mlflow.source.git.commit"] == "abc123"
    train = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in train) == list(range(1, 31))
    assert all(m.value == pytest.approx(1 / m.step) for m in train)
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/loss")) == [10, 20, 30]


def test_mlflow_takes_its_tracking_uri_from_the_environment_when_the_job_names_none(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    meta: dict = {"status": "failed"}
    (exporter,) = exporters.open_exporters(make_job(tmp_path, mlflow=True, mlflow_experiment="mine"),
                                           str(tmp_path / "runs" / "exp"), meta)
    exporter.log(rows(1, 3))
    exporter.close()

    stored = MlflowClient(tracking_uri=uri).get_run(meta["trackers"]["mlflow_run_id"])
    assert stored.info.status == "FAILED"
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("mine") is not None


def test_a_missing_mlflow_package_is_a_spec_error_naming_the_pip_install(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "mlflow" or name.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # what an environment without mlflow looks like

    with pytest.raises(SpecError, match="pip install mlflow"):
        exporters.open_exporters(make_job(tmp_path, mlflow=True), str(tmp_path / "runs" / "exp"), {})
