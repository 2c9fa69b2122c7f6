"""Sweeps: `orchestrator tune JOB.yaml`, a Ray Tune experiment whose trials are whole orchestrator runs.

Each trial is a Tune function trial (the Ray Train V2 way: a driver function
that builds and fits its own trainer) running `launch.run` on the job file
with one sample of `search.space` set, in its own run folder, with the usual
checkpoints, exact recovery and history. At every epoch end it reports the
run's cross-rank-reduced metrics (the board's EPOCH records, not rank 0's) to
Tune, which feeds the search algorithm and the ASHA scheduler. The sweep
folder `<storage>/<name>/`:

    sweep.json      the search, the base job, the sweep's status, one entry per trial
                    (params, status, metric, epochs, why it stopped, run folder)
    trials/<id>/    each trial's run folder (driver.runfolder)
    tune/           Ray Tune's experiment state, restored when the same command runs again
    best.yaml       the best finished trial's resolved job, named <name>-best

The same command after the driver died restores the Tune experiment: finished
trials are kept, unfinished ones start again and resume their run folders
from the newest verified checkpoint, and the search algorithm's and ASHA's
state come back (Tune restores the searcher itself; ASHA's rungs travel in
the sweep callback's state, as Tune does not save its scheduler).

This module owns the checks before Tune starts (the space, the cluster, the
concurrency) and the Tuner; `sweep_trial` is what runs inside each trial, and
`sweep_state` keeps sweep.json and best.yaml from Tune's trial events.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Callable

from orchestrator import storage
from orchestrator.driver import launch, preflight, runfolder, session, sweep_state
from orchestrator.driver.runfolder import SWEEP_FILE, TRIALS_DIR, TUNE_DIR
from orchestrator.driver.sweep_trial import (
    TIME_ATTR,
    TRIAL_DRIVER_RESOURCES,
    SweepPlan,
    param_space,
    run_trial,
    trial_name,
)
from orchestrator.errors import LaunchError, SpecError, first_line
from orchestrator.job import spec, trials
from orchestrator.job.search import SearchSpec
from orchestrator.track.metadata import this_driver


def tune(raw: dict, *, source: str | None = None, default_name: str | None = None, address: str | None = None,
         fresh: bool = False, verbose: bool = False, on_event: Callable[[dict], None] = lambda event: None) -> str:
    """Run the sweep the job mapping `raw` (overrides applied) describes, to the end; returns the URL of
    its folder (results.sweeps reads it).

    Refuses before any trial starts a job without `search`, a space that can
    produce an invalid job, and trials the cluster cannot place. A sweep folder
    of the same search resumes; one of a different job is refused (`fresh`
    deletes it first). `on_event` sees {"kind": "phase" | "trial" | "result", ...}
    events (progress.SweepPrinter prints them).
    """
    job = spec.from_dict(raw, source=source, default_name=default_name)
    search = job.search
    if search is None:
        raise SpecError(["search: required by `orchestrator tune` (the keys to search, e.g. search.space.optim.lr, "
                         "and how); `orchestrator run` trains the job as written"], source)
    problems = trials.check_space(raw, search)
    if problems:
        raise SpecError(problems, source)
    if search.algorithm == "optuna":
        _require_optuna()

    def announce(message: str, phase: str | None = None) -> None:
        on_event({"kind": "phase", "message": message})

    prepared = launch.prepare(job, announce=announce)  # writes data.generate's data once, before any trial
    resolved = prepared.job
    absolute = {"data.path": resolved.data.path, "storage": resolved.storage}
    if isinstance(resolved.data.validation, str):
        absolute["data.validation"] = resolved.data.validation
    base = spec.with_values({key: value for key, value in raw.items() if key != "search"}, absolute)
    sweep_url = storage.join(resolved.storage, job.name)
    plan = SweepPlan(base=base, search=search, trials_url=storage.join(sweep_url, TRIALS_DIR))
    fs, sweep_path = storage.arrow_filesystem(sweep_url)
    state = _open_sweep(fs, sweep_path, sweep_url, plan, job.name, fresh)
    if state.get("status") == "finished":
        on_event({"kind": "phase", "message": f"the sweep at {sweep_url} already finished; its results follow"})
        return sweep_url
    state.update(status="running", driver=this_driver(), error=None)
    if job.tracking.mlflow:  # one MLflow run for the sweep, each trial's run nested under it
        state["mlflow_run_id"] = _parent_run(job, sweep_url, state.get("mlflow_run_id"))
        plan = dataclasses.replace(plan, base=spec.with_values(plan.base, {
            "tracking.mlflow_experiment": job.tracking.mlflow_experiment or job.name,
            "tracking.mlflow_parent_run_id": state["mlflow_run_id"]}))
    live = sweep_state.LiveSweep(sweep_url, state, search, on_event)
    live.write()
    embedded = False
    try:
        embedded = session.connect(address, verbose, announce, dashboard=True)
        _require_state_api()
        concurrency = _concurrency(plan, search)
        tuner = _tuner(plan, sweep_url, fs, concurrency, _max_epochs(plan, prepared), verbose)
        announce(f"running {_trial_count(search)} trial(s), at most {concurrency} at once "
                 f"({search.algorithm} search{', ASHA' if search.scheduler == 'asha' else ''}) …")
        sweep_state.LIVE[sweep_url] = live
        tuner.fit()
        live.finish(storage.join(resolved.storage, f"{job.name}-best"))
    except BaseException as stopped:
        interrupted = isinstance(stopped, KeyboardInterrupt)
        state.update(status="interrupted" if interrupted else "failed",
                     error="interrupted (Ctrl-C); the same command resumes it" if interrupted else first_line(stopped))
        live.write()
        raise
    finally:
        if state.get("mlflow_run_id"):
            _close_parent_run(job, state, on_event)
        sweep_state.LIVE.pop(sweep_url, None)
        if embedded:
            import ray

            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)
    return sweep_url


def _require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise LaunchError("search.algorithm optuna needs the optuna package: pip install -e \".[tune]\" "
                          "(or use algorithm random or grid)") from None


def _parent_run(job: spec.JobSpec, sweep_url: str, run_id: str | None) -> str:
    """The sweep's MLflow run (track.exporters.open_parent_run), its search logged as params."""
    from orchestrator.track import exporters

    try:
        return exporters.open_parent_run(job.tracking, job.name, sweep_url, run_id,
                                         exporters.flatten({"search": job.search.to_dict()}))
    except ImportError:
        raise SpecError(["tracking.mlflow: needs the mlflow package, which is not installed: `pip install "
                         "mlflow-skinny` (or `pip install -e \".[mlflow]\"`)"]) from None
    except Exception as error:  # MLflow raises several kinds for an unusable store
        where = job.tracking.mlflow_tracking_uri or "MLFLOW_TRACKING_URI or MLflow's default"
        raise LaunchError(f"tracking.mlflow_tracking_uri: cannot open the MLflow tracking store ({where}): "
                          f"{first_line(error)}") from None


def _close_parent_run(job: spec.JobSpec, state: dict, on_event: Callable[[dict], None]) -> None:
    """End the sweep's MLflow run with the best trial's metric; a tracker's failure only warns."""
    from orchestrator.track import exporters

    status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(state.get("status"), "FAILED")
    best = (state.get("trials") or {}).get(state.get("best") or "", {})
    metrics = {f"best_{job.search.metric}": best["metric"]} if isinstance(best.get("metric"), (int, float)) else {}
    try:
        exporters.close_parent_run(job.tracking, state["mlflow_run_id"], status, metrics)
    except Exception as error:  # the sweep's results are in its folder whatever MLflow does
        on_event({"kind": "phase", "message": f"warning: the sweep's MLflow run was not closed: {first_line(error)}"})


def _require_state_api() -> None:
    """Refuse a cluster without Ray's state API (its dashboard): Ray Train frees the workers of a trial
    that Tune stops only through it, so without it the next trials would wait for CPUs forever."""
    from ray.util import state

    try:
        state.list_actors(limit=1, timeout=10, raise_on_missing_output=False)
    except Exception as error:  # the state API raises several kinds; each means the same here
        raise LaunchError(
            f"this Ray cluster does not answer Ray's state API ({first_line(error)}), which Ray Train needs to free "
            "the workers of a trial the sweep stops. Start the cluster with its dashboard (`ray start --head` has "
            "it unless --include-dashboard=false), or unset RAY_ADDRESS to sweep on an embedded local Ray."
        ) from None


def _open_sweep(fs, sweep_path: str, sweep_url: str, plan: SweepPlan, name: str, fresh: bool) -> dict:
    """sweep.json of the sweep at `sweep_path`, new or continued; a sweep started with another job or
    search is refused (LaunchError) unless `fresh`, which deletes its folder first."""
    import pyarrow.fs

    if fresh and fs.get_file_info(sweep_path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(sweep_path)
    try:
        stored = storage.read_json(fs, f"{sweep_path}/{SWEEP_FILE}")
    except OSError as error:
        raise LaunchError(f"storage: the sweep folder {sweep_url!r} cannot be read ({first_line(error)})") from None
    asked = {"job": plan.base, "search": plan.search.to_dict()}
    if stored is None:
        if fs.get_file_info(sweep_path).type != pyarrow.fs.FileType.NotFound and \
                fs.get_file_info(f"{sweep_path}/{runfolder.RUN_FILE}").type != pyarrow.fs.FileType.NotFound:
            raise LaunchError(f"{sweep_url} holds a run, not a sweep: give the sweep another name (--name) "
                              "or storage")
        try:
            fs.create_dir(sweep_path, recursive=True)
        except OSError as error:
            raise LaunchError(f"storage: the sweep folder {sweep_url!r} cannot be written ({first_line(error)}). "
                              "Point storage (--storage) at a path or URL this machine and every worker can "
                              "write.") from None
        return {"name": name, "started_at": time.time(), **asked, "trials": {}, "best": None}
    changed = runfolder.differences(stored.get("job") or {}, asked["job"], "job.") + \
        runfolder.differences(stored.get("search") or {}, asked["search"], "search.")
    if changed:
        raise LaunchError(f"the sweep at {sweep_url} was started with a different job, so it cannot continue: "
                          + "; ".join(changed) + ". Pass --fresh to start it over, or --name to start another sweep.")
    return stored


def _trial_count(search: SearchSpec) -> int:
    return search.grid_size if search.algorithm == "grid" else search.trials


def _concurrency(plan: SweepPlan, search: SearchSpec) -> int:
    """How many trials run at once: search.max_concurrent, else as many as the cluster holds (at
    least one). Refuses a trial the cluster can never place, and a max_concurrent it cannot hold."""
    import ray

    from orchestrator.driver import cluster

    largest = _largest_trial(plan)
    preflight.check_resources(largest)  # one trial must be placeable
    scaling = largest.scaling
    per_trial = scaling.max_workers * scaling.cpus_per_worker
    cpus = ray.cluster_resources().get("CPU", 0.0)
    fits = max(1, math.floor(cpus / per_trial + 1e-9))
    wanted = search.max_concurrent
    if wanted is None:
        return min(fits, _trial_count(search))
    if wanted > fits and cluster.autoscaler_limits() is None:
        raise LaunchError(
            f"search.max_concurrent {wanted} × {per_trial:g} CPU(s) per trial (scaling.workers × "
            f"scaling.cpus_per_worker) needs {wanted * per_trial:g} CPUs, but the cluster has {cpus:g}: "
            f"lower search.max_concurrent (at most {fits} fit), or leave it out to run as many as fit.")
    return wanted


def _largest_trial(plan: SweepPlan) -> spec.JobSpec:
    """The trial job that needs the most CPUs: the base job with each probe of each scaling key."""
    jobs = trials.probe_jobs(plan.base, plan.search, ("scaling.",), storage=plan.trials_url)
    return max(jobs, key=lambda job: job.scaling.max_workers * job.scaling.cpus_per_worker)


def _max_epochs(plan: SweepPlan, prepared: launch.PreparedJob) -> int:
    """The most epochs (rounds, for trees) any trial can train: ASHA's max_t."""
    jobs = trials.probe_jobs(plan.base, plan.search, ("train.", "model.rounds"), storage=plan.trials_url)
    return max(_epochs(job, prepared.batches_per_epoch) for job in jobs)


def _epochs(job: spec.JobSpec, batches_per_epoch: int) -> int:
    if job.model.trees:
        return job.model.rounds
    if job.train.epochs:
        return job.train.epochs
    return math.ceil(job.train.max_steps / max(batches_per_epoch, 1))


def _tuner(plan: SweepPlan, sweep_url: str, fs, concurrency: int, max_epochs: int, verbose: bool):
    """A new Tuner for the sweep, or the one restored from <sweep>/tune when its state is there."""
    from ray import tune

    search = plan.search
    if not verbose:  # the sweep's own lines (on_event) say what happens; Tune's tables and logs would repeat it
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # A result may lack the metric (a NaN is left out, a run may have no epoch left to report): Tune's
    # strict check would end the whole sweep for it; its scheduler and searcher skip such results.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), TRIAL_DRIVER_RESOURCES)
    tune_url = storage.join(sweep_url, TUNE_DIR)
    remote = None if storage.is_local(sweep_url) else fs
    if tune.Tuner.can_restore(tune_url, storage_filesystem=remote):
        return tune.Tuner.restore(tune_url, trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False, param_space=param_space(search), storage_filesystem=remote)
    if search.scheduler == "asha" and search.grace_period > max_epochs:
        raise SpecError([f"search.grace_period: {search.grace_period} is beyond the {max_epochs} epoch(s) a trial "
                         "trains; lower it"])
    seed = search.seed if search.seed is not None else plan.base.get("train", {}).get("seed", 0)
    scheduler = None
    if search.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr=TIME_ATTR, max_t=max_epochs, grace_period=search.grace_period,
            reduction_factor=search.reduction_factor, stop_last_trials=False)
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        if not verbose:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        algorithm = OptunaSearch(seed=seed)
    else:
        # Tune applies max_concurrent_trials only to a Searcher; this generator takes its own limit.
        algorithm = tune.search.BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)
    return tune.Tuner(
        trainable,
        param_space=param_space(search),
        tune_config=tune.TuneConfig(
            metric=search.metric, mode="max" if search.maximize else "min",
            num_samples=1 if search.algorithm == "grid" else search.trials,
            max_concurrent_trials=concurrency, search_alg=algorithm, scheduler=scheduler,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=sweep_url if remote is None else storage.arrow_filesystem(sweep_url)[1],
            storage_filesystem=remote, verbose=0, failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[sweep_state.sweep_callback(sweep_url, scheduler)],
        ),
    )
