"""The driver: check the data, connect Ray, run Ray Train's TorchTrainer, return a summary.

Owns everything between a validated `JobSpec` and a `RunSummary`: reading the
Parquet footers once (`data.source`), connecting Ray (`session`), refusing
jobs that cannot run before any worker starts (`preflight`), fitting Ray
Train's trainer (`trainer`) while following progress, explaining a failed fit
(`failures`), and writing `model.pt` and `summary.json` into the run folder
`<storage>/<name>/`.

It does not parse arguments or print: progress reaches the caller through
`on_record`, and failures are raised as `OrchestratorError`s.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from orchestrator import settings, storage
from orchestrator.data import plan, source
from orchestrator.data.index import DatasetIndex
from orchestrator.driver import failures, preflight, runfolder, session, trainer
from orchestrator.errors import (
    CheckpointError,
    DataError,
    LaunchError,
    OrchestratorError,
    SpecError,
    TrainingError,
    first_line,
)
from orchestrator.job.spec import CLASSIFICATION_LOSSES, JobSpec
from orchestrator.track.board import RunBoard
from orchestrator.track.metadata import run_metadata
from orchestrator.track.records import Kind
from orchestrator.track.relay import Relay
from orchestrator.track.summary import RunSummary, summarize


@dataclass(frozen=True)
class PreparedJob:
    """A job whose paths are absolute and whose data has been checked."""

    job: JobSpec
    index: DatasetIndex
    validation_index: DatasetIndex | None
    batches_per_epoch: int
    dropped_rows: int

    @property
    def run_url(self) -> str:
        return storage.join(self.job.storage, self.job.name)


def prepare(job: JobSpec, *, generate: bool = True, announce: Callable[[str], None] = lambda message: None
            ) -> PreparedJob:
    """Resolve paths and check the data against the job, reading only Parquet footers.

    When `data.path` holds no files, the dataset `data.generate` describes is
    written there first, unless `generate` is False (then nothing is written).
    `announce` hears each slow step before it starts (writing data, reading footers).
    Raises DataError / SpecError naming the file, column or key at fault.
    """
    validation = job.data.validation
    if isinstance(validation, str):
        validation = storage.absolute(validation)
    job = dataclasses.replace(
        job,
        data=dataclasses.replace(job.data, path=storage.absolute(job.data.path), validation=validation),
        storage=storage.absolute(job.storage),
    )
    if generate and job.data.generate is not None:
        _generate_if_missing(job.data.path, job.data.generate, announce)
    announce(f"reading the Parquet footers at {job.data.path} …")
    classification = job.loss.name in CLASSIFICATION_LOSSES
    index = source.scan(job.data.path, job.data.label, job.data.features, exclude=job.data.exclude,
                        overrides=job.data.columns, classification=classification)
    if job.data.null_labels == "error" and index.label_nulls:
        raise DataError(f"{job.data.path}: {index.label_nulls} row(s) have no {job.data.label!r} label "
                        "(data.null_labels: error); fill them in, or set data.null_labels: drop to skip them")
    # The resolved job names its features, so checkpoints and run.json say what the model reads.
    job = dataclasses.replace(job, data=dataclasses.replace(job.data, features=index.features, exclude=()))
    validation_index = None
    if isinstance(validation, str):
        validation_index = source.scan(validation, job.data.label, index.features, overrides=job.data.columns,
                                       classification=classification)
    if job.model.trees:
        preflight.check_trees(job, index)
        return PreparedJob(job, index, validation_index, 0, 0)
    first_epoch = plan.Layout.for_job(job).plan(index, epoch=0)
    return PreparedJob(job, index, validation_index, first_epoch.batches, first_epoch.dropped)


def _generate_if_missing(path: str, generate, announce: Callable[[str], None]) -> None:
    """Write the job's synthetic dataset into the directory `path` names, unless files are there."""
    from orchestrator.data import synthetic

    try:
        source.discover(path)
        return
    except DataError:
        pass
    directory = path
    if any(ch in path for ch in "*?["):
        directory = path[: min(path.index(ch) for ch in "*?[" if ch in path)]
        directory = directory.rsplit("/", 1)[0] if not directory.endswith("/") else directory
    elif path.endswith(source.PARQUET_SUFFIXES):
        directory = path.rsplit("/", 1)[0]
    announce(f"writing {generate.rows:,} rows of {generate.kind} demo data into {directory.rstrip('/')} "
             "(data.generate; once) …")
    synthetic.write(generate, directory.rstrip("/"))


def run(
    job: JobSpec,
    *,
    address: str | None = None,
    fresh: bool = False,
    verbose: bool = False,
    on_record: Callable[[dict], None] = lambda record: None,
    audit_samples: bool = False,
) -> RunSummary:
    """Train `job` to the end and return its summary (also written as summary.json).

    Joins the Ray cluster at `address` (or RAY_ADDRESS); without one, starts an
    embedded local Ray sized to this machine and stops it afterwards. With
    `fresh`, an earlier run of the same name and storage is deleted first.
    `on_record` sees every progress record (track.records lists their kinds); with
    `audit_samples` they include each step's row ids on every rank.
    Raises an OrchestratorError for a job that cannot run or training that failed.
    """
    started_at = time.time()

    marks: list[dict] = []  # the driver's own PHASE records, for the summary's phases

    def announce(message: str, phase: str | None = None) -> None:
        marks.append({"kind": Kind.PHASE, "message": message, "phase": phase, "time": time.time()})
        on_record(marks[-1])

    prepared = prepare(job, announce=announce)
    index = prepared.index
    announce(f"data: {len(index.files)} file(s), {len(index.row_groups)} row group(s), {index.num_rows:,} rows")
    fs, run_path = storage.arrow_filesystem(prepared.run_url)
    run_file = f"{run_path}/{runfolder.RUN_FILE}"
    try:  # the first writes: storage that cannot be written is refused here, before Ray starts
        finished = runfolder.open_run(fs, run_path, prepared.run_url, prepared.job, fresh, on_record)
        if finished is not None:
            return finished
        meta = run_metadata(prepared.job.to_dict(), storage.read_json(fs, run_file))
        storage.write_json(fs, run_file, meta)
    except OSError as error:
        raise LaunchError(f"storage {prepared.job.storage!r}: the run folder {prepared.run_url!r} cannot be "
                          f"written ({first_line(error)}). Point storage (--storage) at a path or URL this "
                          "machine and every worker can write.") from None

    meta["status"] = "failed"  # until training ends well; exporters read it when they close
    relay, embedded, error = None, False, None
    try:
        relay = Relay(meta, _exporters(prepared, meta), on_record)
        embedded = session.connect(address, verbose, announce)
        import ray  # deferred: `orchestrator validate` never pays for importing Ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        preflight.check_resources(prepared.job)
        preflight.check_storage(prepared.job)
        if prepared.job.model.trees:
            preflight.check_tree_memory(prepared.job, prepared.index, prepared.validation_index)
        # On the driver's node: losing a worker node must not lose the run's progress board.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        board = ray.remote(RunBoard).options(num_cpus=0, scheduling_strategy=here).remote()
        scaling = prepared.job.scaling
        announce(f"starting {scaling.max_workers} Ray Train worker(s) ({prepared.job.model.kind}, "
                 f"{scaling.cpus_per_worker:g} CPU(s) each) …", "workers")
        records, error = _fit(prepared, board, relay, audit_samples)
        meta["status"] = "failed" if error else "finished"
        summary = summarize(job.name, prepared.run_url, marks + records, started_at,
                            unit="round" if prepared.job.model.trees else "epoch")
        _conclude(prepared, fs, run_path, summary, error, meta)
        if error is None:  # before an embedded Ray stops (a second or so): the caller can show it now
            on_record({"kind": Kind.SUMMARY, "summary": summary, "time": time.time()})
    except BaseException as stopped:  # run.json tells the truth whatever ended this session
        meta["status"], meta["error"] = _ended_by(stopped)
        storage.write_json(fs, run_file, {**meta, "ended_at": time.time()})
        raise
    finally:
        if relay is not None:
            relay.close()
        if embedded:
            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)  # it named the embedded cluster, which is gone now
    if error:
        raise error
    return summary


def _conclude(prepared: PreparedJob, fs, run_path: str, summary: RunSummary, error: OrchestratorError | None,
              meta: dict) -> None:
    """Write the session's outcome into the run folder at `run_path` on `fs`: model.pt (when it finished),
    summary.json, run.json."""
    summary.dropped_rows_per_epoch = prepared.dropped_rows
    if error is None:
        runfolder.finish(fs, run_path, prepared.run_url, prepared.job, summary)
    if summary.checkpoint:
        summary.checkpoint = storage.join(prepared.run_url, summary.checkpoint)
    summary.status = "failed" if error else "finished"
    summary.error = str(error) if error else None
    storage.write_json(fs, f"{run_path}/{runfolder.SUMMARY_FILE}", summary.to_dict())
    storage.write_json(fs, f"{run_path}/{runfolder.RUN_FILE}",
                       {**meta, "ended_at": time.time(), **({"error": first_line(error)} if error else {})})


def _ended_by(stopped: BaseException) -> tuple[str, str]:
    """run.json's status and cause for a session that `stopped` raised out of."""
    if isinstance(stopped, KeyboardInterrupt):
        return "interrupted", "interrupted (Ctrl-C); the same command resumes it"
    if isinstance(stopped, SystemExit):  # how Ray Tune ends a trial its scheduler stops (inside tune.report)
        return "stopped", "stopped before its end by the process running it (a sweep's scheduler)"
    return "failed", first_line(stopped)


def _exporters(prepared: PreparedJob, meta: dict) -> list:
    tracking_spec = prepared.job.tracking
    if not (tracking_spec.tensorboard or tracking_spec.mlflow):
        return []
    from orchestrator.track import exporters

    return exporters.open_exporters(prepared.job, prepared.run_url, meta)


def _fit(prepared: PreparedJob, board, on_record, audit_samples: bool) -> tuple[list[dict], OrchestratorError | None]:
    """Run the TorchTrainer in a thread while this one relays the board's records."""
    import ray

    fitting = trainer.build(prepared, board, audit_samples)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = fitting.fit()
        except BaseException as error:  # handed to the driver thread below
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="orchestrator-fit", daemon=True)
    thread.start()
    records: list[dict] = []
    interval = settings.PROGRESS_POLL_INTERVAL_S.get_float()
    while True:
        thread.join(timeout=interval)
        for record in ray.get(board.drain.remote()):
            records.append(record)
            on_record(record)
        if not thread.is_alive():
            break
    fatal = [r for r in records if r["kind"] == Kind.FATAL]
    if fatal:
        classes = {c.__name__: c for c in (DataError, SpecError, CheckpointError)}
        return records, classes.get(fatal[0].get("error_class"), TrainingError)(fatal[0]["message"])
    if "error" in outcome:
        last_start = max((i for i, r in enumerate(records) if r["kind"] == Kind.START), default=-1)
        stalls = [r for r in records[last_start + 1:] if r["kind"] == Kind.STALL]
        return records, failures.explain(outcome["error"], prepared.job, stalls)
    digests = {r["weights_sha256"] for r in records if r["kind"] == Kind.FINAL}
    if len(digests) > 1 and prepared.job.model.trees:
        return records, TrainingError(
            f"the workers finished with different {prepared.job.model.kind} trees: the group's collective did "
            "not keep them in step, so the run is not trustworthy. Run with -v to see the workers' logs.")
    if len(digests) > 1:
        return records, TrainingError(
            "the workers finished with different weights (DDP replicas diverged); the run is not "
            "trustworthy. If the model has parameters unused in forward, set train.find_unused_parameters."
        )
    return records, None
