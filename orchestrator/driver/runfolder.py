"""The run folder `<storage>/<name>/`: how a run starts there and what it leaves behind.

Owns the folder's lifecycle and file names. At the start: create it, or find
that the run already finished, or resume from its newest complete checkpoint
(refusing a job whose training settings changed), or delete it for `--fresh`.
At the end: prune checkpoints and export the model file and `metrics.parquet`
from storage. Checkpoint contents belong to `train.checkpoint`; summaries and
run.json's content to `track.summary` and `track.metadata`.

    model.pt          the final (or, with early stopping, the best) weights; a tree model's
                      booster instead, in its library's file: model.ubj (XGBoost), model.txt (LightGBM)
    metrics.parquet   the metric history (track.history.HISTORY_SCHEMA)
    summary.json      track.summary.RunSummary
    run.json          job, versions, world sizes, restarts (track.metadata.run_metadata)
    preprocessing.json  the preprocessing fitted on the training rows (written before the first step)
    step-NNNNNNNN/    checkpoints;  best-NNNNNNNN/  the best one, with early stopping
"""

from __future__ import annotations

from typing import Callable

import pyarrow.fs
import pyarrow.parquet

from orchestrator import storage
from orchestrator.errors import LaunchError
from orchestrator.job.spec import JobSpec
from orchestrator.track.records import Kind
from orchestrator.track.summary import RunSummary, fill_from_history
from orchestrator.train import checkpoint

MODEL_FILE = checkpoint.MODEL_FILE
HISTORY_FILE = checkpoint.HISTORY_FILE
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"

# A sweep folder <storage>/<name>/ (driver.sweep): sweep.json, trials/<trial>/ run folders,
# tune/ (Ray Tune's experiment state) and best.yaml (the best finished trial's job).
SWEEP_FILE = "sweep.json"
TRIALS_DIR = "trials"
TUNE_DIR = "tune"
BEST_FILE = "best.yaml"

# Job settings that may change when a run resumes: where it runs and how it reports,
# not what it computes. Anything else differing from the checkpoint's job is refused.
MAY_CHANGE_ON_RESUME = (
    "name", "storage", "scaling", "failure", "checkpoint", "tracking", "data.prefetch_batches", "data.in_memory_mb",
    "data.generate", "train.log_every_n_steps", "train.compile", "search",
)


def open_run(
    fs: pyarrow.fs.FileSystem, run_path: str, run_url: str, job: JobSpec, fresh: bool,
    on_record: Callable[[dict], None],
) -> RunSummary | None:
    """Create the run folder, or decide how an earlier run of this name continues.

    Returns the stored summary of a run that already finished (nothing to do);
    None when training should start, fresh or resuming from the newest
    complete checkpoint (announced through `on_record`). Raises LaunchError
    when the checkpoint's job differs from `job` in a training setting.
    """
    if fresh and fs.get_file_info(run_path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(run_path)
    if fs.get_file_info(run_path).type == pyarrow.fs.FileType.NotFound:
        fs.create_dir(run_path, recursive=True)
        return None
    stored = storage.read_json(fs, f"{run_path}/{SUMMARY_FILE}")
    if stored and stored.get("status") == "finished":
        summary = RunSummary(**stored)
        on_record({"kind": Kind.ALREADY_COMPLETE, "step": summary.steps, "run_dir": summary.run_dir})
        return summary
    newest = newest_complete(fs, run_path)
    if newest is not None:
        name, manifest = newest
        changed = differences(checkpoint.read_job(fs, f"{run_path}/{name}"), job.to_dict())
        if changed:
            raise LaunchError(
                f"the run at {run_url} was started with a different job, so it cannot resume: "
                + "; ".join(changed) + ". Pass --fresh to start it over, or --name to start another run."
            )
        on_record({"kind": Kind.RESUME, "checkpoint": name, "step": manifest["step"]})
    return None


def finish(fs: pyarrow.fs.FileSystem, run_path: str, run_url: str, job: JobSpec, summary: RunSummary) -> None:
    """After a successful run: prune checkpoints; export the model file and metrics.parquet into the folder."""
    # Ray Train prunes what it registered; this also removes checkpoints it never
    # registered and uploads cut short, so exactly the newest `keep` complete ones
    # stay. Never after a failure: Ray's snapshot must still find what it lists.
    checkpoint.prune(fs, run_path, job.checkpoint.keep)
    # The final checkpoint is the newest in storage, also when this session trained
    # nothing (a driver that died after the last checkpoint, before the summary).
    final = newest_complete(fs, run_path)
    if final is None:
        return
    name, manifest = final
    summary.checkpoint, summary.steps = name, max(summary.steps, manifest["step"])
    fs.copy_file(f"{run_path}/{name}/{HISTORY_FILE}", f"{run_path}/{HISTORY_FILE}")
    if not summary.epochs_completed:  # this session trained nothing: the stored history has the metrics
        fill_from_history(summary, pyarrow.parquet.read_table(f"{run_path}/{HISTORY_FILE}", filesystem=fs))
    exported = name
    if job.early_stopping and job.early_stopping.export == "best":
        exported = checkpoint.newest_best(fs, run_path) or name
    model_file = checkpoint.model_file(manifest)  # model.pt, or a tree model's own file
    fs.copy_file(f"{run_path}/{exported}/{model_file}", f"{run_path}/{model_file}")
    summary.model = storage.join(run_url, model_file)
    if exported != name:  # model.pt holds the best epoch's weights
        summary.best = {**(summary.best or {}), "checkpoint": storage.join(run_url, exported)}


def newest_complete(fs: pyarrow.fs.FileSystem, run_path: str) -> tuple[str, dict] | None:
    """The newest checkpoint in the run folder whose files are all there, with its manifest."""
    complete = checkpoint.complete_newest_first(fs, run_path)
    return complete[0] if complete else None


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key.path: old → new' for every training setting that differs between two resolved jobs."""
    found = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path in MAY_CHANGE_ON_RESUME:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{path}.")
        elif a != b:
            found.append(f"{path}: {a!r} → {b!r}")
    return found
