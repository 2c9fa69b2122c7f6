"""Sending a run's metric rows to trackers besides the run folder: TensorBoard and MLflow.

Owns the optional packages (tensorboardX, mlflow: neither is needed by
default), turning `metrics.parquet` rows (step, epoch, name, value, time) into
their calls, and keeping each tracker consistent across restarts of the
driver: MLflow keeps one run id (stored in run.json's `trackers`) and never
gets a step twice; TensorBoard hides the steps a resumed run writes again.

The driver opens them with `open_exporters`, calls `log(rows)` with each batch
of new rows (each metric's steps only increase within one driver session)
and `close()` at the end; it drops an exporter that raises, with a warning,
so a tracker outage never stops training. Nothing here runs in workers.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol

from orchestrator import storage
from orchestrator.errors import SpecError, first_line
from orchestrator.job.spec import JobSpec

TENSORBOARD_DIR = "tensorboard"
_MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call
_MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on a param value


class Exporter(Protocol):
    """Receives metric rows as they are recorded; `close` once at the end of a driver session."""

    def log(self, rows: list[dict]) -> None: ...

    def close(self) -> None: ...


def open_exporters(job: JobSpec, run_url: str, run_meta: dict) -> list[Exporter]:
    """The exporters `job.tracking` turns on, opened for the run folder `run_url`.

    `run_meta` is run.json's content: MLflow stores its run id under
    `run_meta["trackers"]` and reads it back when the run resumes, and reads
    `run_meta["status"]` when closed ("failed" marks the MLflow run FAILED, "interrupted" KILLED).
    A missing package or an unusable setting is a SpecError naming the key.
    """
    opened: list[Exporter] = []
    try:
        if job.tracking.tensorboard:
            opened.append(TensorBoardExporter(run_url, run_meta))
        if job.tracking.mlflow:
            opened.append(MlflowExporter(job, run_url, run_meta))
    except BaseException:
        for exporter in opened:
            exporter.close()
        raise
    return opened


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"optim": {"lr": 0.1}} → {"optim.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


class TensorBoardExporter:
    """Scalars as TensorBoard event files under `<run folder>/tensorboard/` (local storage only).

    The writer opens at the first `log`; when the folder already holds events
    from an earlier driver session, it opens with `purge_step` = the first step
    logged now, so TensorBoard hides the older events of steps written again.
    """

    def __init__(self, run_url: str, run_meta: dict):
        if not storage.is_local(run_url):
            raise SpecError(
                f"tracking.tensorboard: event files are written into the run folder, which must be on local disk "
                f"(or a shared mount); this run's folder is {run_url!r}. Turn it off for remote storage."
            )
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise SpecError(
                "tracking.tensorboard: needs the tensorboardX package, which is not installed: "
                "`pip install tensorboardX` (or `pip install -e \".[tensorboard]\"`)"
            ) from None
        self.logdir = os.path.join(storage.absolute(run_url), TENSORBOARD_DIR)
        run_meta.setdefault("trackers", {})["tensorboard_dir"] = self.logdir
        self._writer = None

    def log(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self._writer is None:
            from tensorboardX import SummaryWriter

            earlier = glob.glob(os.path.join(self.logdir, "events.out.tfevents.*"))
            purge = min(row["step"] for row in rows) if earlier else None
            self._writer = SummaryWriter(logdir=self.logdir, purge_step=purge)
        for row in rows:
            self._writer.add_scalar(row["name"], row["value"], global_step=row["step"], walltime=row["time"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MlflowExporter:
    """Params (the flattened resolved job) and metric series in one MLflow run, whatever restarts.

    The tracking URI is `tracking.mlflow_tracking_uri`, else MLflow's own
    MLFLOW_TRACKING_URI, else MLflow's default. The run id lives in
    `run_meta["trackers"]["mlflow_run_id"]`: a resumed run logs into the same
    MLflow run, and a step MLflow already holds for a metric is never sent again.
    """

    def __init__(self, job: JobSpec, run_url: str, run_meta: dict):
        try:
            from mlflow.entities import Metric
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise SpecError(
                "tracking.mlflow: needs the mlflow package, which is not installed: "
                "`pip install mlflow-skinny` (or `pip install -e \".[mlflow]\"`)"
            ) from None
        self._Metric, self.run_meta = Metric, run_meta
        self._last_step: dict[str, int] = {}
        self._resumed = False
        try:
            self.client = MlflowClient(tracking_uri=job.tracking.mlflow_tracking_uri)
            self._open_run(job, run_url)
        except MlflowException as error:
            where = job.tracking.mlflow_tracking_uri or "MLFLOW_TRACKING_URI or MLflow's default"
            raise SpecError(f"tracking.mlflow_tracking_uri: cannot open the MLflow tracking store ({where}): "
                            f"{first_line(error)}") from None

    def _open_run(self, job: JobSpec, run_url: str) -> None:
        """Resume the MLflow run named in run.json, or create one and log the job as its params."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        run_meta = self.run_meta
        trackers = run_meta.setdefault("trackers", {})
        self.run_id = trackers.get("mlflow_run_id")
        if self.run_id:
            try:
                self.client.get_run(self.run_id)
                self._resumed = True
            except MlflowException:  # another tracking store, or the run was deleted: start a new one
                self.run_id = None
        if self._resumed:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = job.tracking.mlflow_experiment or job.name
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tags = {"orchestrator.run_folder": run_url}
        if job.tracking.mlflow_parent_run_id:
            tags["mlflow.parentRunId"] = job.tracking.mlflow_parent_run_id  # a sweep's trial: its child run
        if run_meta.get("git_commit"):
            tags["mlflow.source.git.commit"] = run_meta["git_commit"]
        run = self.client.create_run(experiment_id, run_name=job.name, tags=tags)
        self.run_id = trackers["mlflow_run_id"] = run.info.run_id
        params = [Param(key, str(value)[:_MLFLOW_PARAM_CHARS]) for key, value in flatten(job.to_dict()).items()]
        for at in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[at : at + 100])

    def log(self, rows: list[dict]) -> None:
        fresh = []
        for row in rows:
            name = row["name"]
            if name not in self._last_step:
                self._last_step[name] = self._stored_last_step(name)
            if row["step"] > self._last_step[name]:
                fresh.append(self._Metric(name, float(row["value"]), int(row["time"] * 1000), int(row["step"])))
                self._last_step[name] = row["step"]
        for at in range(0, len(fresh), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=fresh[at : at + _MLFLOW_BATCH])

    def close(self) -> None:
        status = {"failed": "FAILED", "interrupted": "KILLED"}.get(self.run_meta.get("status"), "FINISHED")
        self.client.set_terminated(self.run_id, status=status, end_time=int(time.time() * 1000))

    def _stored_last_step(self, name: str) -> int:
        """The highest step MLflow holds for `name` in this run; -1 for a run this session created."""
        if not self._resumed:
            return -1
        return max((metric.step for metric in self.client.get_metric_history(self.run_id, name)), default=-1)


def open_parent_run(tracking, name: str, sweep_url: str, run_id: str | None, params: dict) -> str:
    """The MLflow run of a sweep, under which each trial's run nests (tracking.mlflow_parent_run_id):
    `run_id` reopened when the store still has it, else a new run in tracking.mlflow_experiment (or
    `name`) with `params` logged. Returns its id."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.mlflow_tracking_uri)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
        except MlflowException:  # another store, or deleted: a new parent
            pass
    experiment = tracking.mlflow_experiment or name
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=name, tags={"orchestrator.sweep_folder": sweep_url})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:_MLFLOW_PARAM_CHARS]) for k, v in params.items()])
    return run.info.run_id


def close_parent_run(tracking, run_id: str, status: str, metrics: dict[str, float]) -> None:
    """End a sweep's MLflow run: `metrics` (the best trial's) logged, status FINISHED | FAILED | KILLED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.mlflow_tracking_uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))
