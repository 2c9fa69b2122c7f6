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
`SweepCallback`'s state, as Tune does not save its scheduler).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from orchestrator import storage
from orchestrator.driver import launch, preflight, runfolder, session
from orchestrator.driver.runfolder import BEST_FILE, SWEEP_FILE, TRIALS_DIR, TUNE_DIR
from orchestrator.errors import LaunchError, SpecError, first_line
from orchestrator.job import spec, trials
from orchestrator.job.search import SearchSpec
from orchestrator.track.metadata import this_driver
from orchestrator.track.records import Kind
from orchestrator.train.stopping import metric_value

TIME_ATTR = "epoch"  # what trials report their progress in, for ASHA: completed epochs (rounds for trees)
# A trial's own actor (launch.run's driver) needs no CPU: its Ray Train workers reserve theirs. Tune
# refuses an empty bundle, so it reserves the memory that driver takes.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 2**20}


@dataclass(frozen=True)
class SweepPlan:
    """What each trial needs, sent to it through Tune: small and picklable."""

    base: dict  # the job mapping without `search`, its paths absolute
    search: SearchSpec
    trials_url: str  # where trial run folders go: <sweep>/trials


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
    live = _LiveSweep(sweep_url, state, search, on_event)
    live.write()
    embedded = False
    try:
        embedded = session.connect(address, verbose, announce, dashboard=True)
        _require_state_api()
        concurrency = _concurrency(plan, search)
        tuner = _tuner(plan, sweep_url, fs, concurrency, _max_epochs(plan, prepared), verbose)
        announce(f"running {_trial_count(search)} trial(s), at most {concurrency} at once "
                 f"({search.algorithm} search{', ASHA' if search.scheduler == 'asha' else ''}) …")
        _LIVE[sweep_url] = live
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
        _LIVE.pop(sweep_url, None)
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
            callbacks=[sweep_callback(sweep_url, scheduler)],
        ),
    )


def param_space(search: SearchSpec) -> dict[str, Any]:
    """Tune's param space: each key's domain; a choice is sampled as the index of its value, which
    `decode` turns back, so any YAML value (a list of widths) can be a choice."""
    from ray import tune

    space = {}
    for key, domain in search.space.items():
        if domain.kind == "choice":
            indexes = list(range(len(domain.values)))
            space[key] = tune.grid_search(indexes) if search.algorithm == "grid" else tune.choice(indexes)
        elif domain.kind == "uniform":
            space[key] = tune.uniform(*domain.values)
        elif domain.kind == "loguniform":
            space[key] = tune.loguniform(*domain.values)
        else:
            space[key] = tune.randint(domain.values[0], domain.values[1] + 1)  # Tune's high is excluded
    return space


def decode(search: SearchSpec, config: dict) -> dict[str, Any]:
    """A trial's job values from its Tune config: choices looked up, numbers as plain Python numbers."""
    values = {}
    for key, domain in search.space.items():
        sampled = config[key]
        if domain.kind == "choice":
            values[key] = domain.values[int(sampled)]
        elif domain.kind == "randint":
            values[key] = int(sampled)
        else:
            values[key] = float(sampled)
    return values


def trial_name(trial) -> str:
    """A Tune trial's run folder name (and Tune's name for it)."""
    return run_name(trial.trial_id)


def run_name(trial_id: str) -> str:
    """The run folder name of the trial with Tune's `trial_id`: stable across a restore."""
    return f"trial-{trial_id}"


def run_trial(config: dict, plan: SweepPlan) -> None:
    """One trial, inside its Tune actor: the job with this sample, run to its end by `launch.run`,
    reporting each epoch's reduced metrics to Tune; a last report says the run finished."""
    from ray import tune

    context = tune.get_context()
    job = trials.trial_job(plan.base, decode(plan.search, config), name=run_name(context.get_trial_id()),
                           storage=plan.trials_url)

    reported: list[int] = []

    def on_record(record: dict) -> None:
        if record["kind"] == Kind.EPOCH and record.get("complete", True):
            reported.append(record["epoch"])
            tune.report(_result(plan.search.metric, record["epoch"] + 1, record.get("train") or {},
                                record.get("validation") or {}))

    summary = launch.run(job, on_record=on_record)
    if not reported:  # a run found complete (its trial ended as the last driver died): its epochs, again
        for epoch, train, validation in _stored_epochs(summary.run_dir):
            tune.report(_result(plan.search.metric, epoch + 1, train, validation))
    tune.report({**_result(plan.search.metric, summary.epochs_completed, summary.train, summary.validation),
                 "run_status": "finished", "stopped_early": summary.stopped_early})


def _stored_epochs(run_url: str) -> list[tuple[int, dict, dict]]:
    """(epoch, train metrics, validation metrics) of each epoch in a finished run's metrics.parquet, so a
    scheduler that lost them with a killed driver (ASHA's rungs) hears them again."""
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(run_url)
    rows = pq.read_table(f"{path}/{runfolder.HISTORY_FILE}", filesystem=fs).to_pylist()
    epochs: dict[int, tuple[int, dict, dict]] = {}
    for row in rows:
        if row["name"] == "epoch/train_loss":
            epochs.setdefault(row["step"], (row["epoch"], {}, {}))[1]["loss"] = row["value"]
    for row in rows:
        if row["name"].startswith("val/") and row["step"] in epochs:
            epochs[row["step"]][2][row["name"].split("/", 1)[1]] = row["value"]
    return [epochs[step] for step in sorted(epochs)]


def _result(metric: str, epochs: int, train: dict, validation: dict) -> dict:
    result = {TIME_ATTR: epochs, **{f"train_{k}": v for k, v in train.items() if isinstance(v, (int, float))},
              **{f"val_{k}": v for k, v in validation.items() if isinstance(v, (int, float))}}
    value = metric_value(metric, train, validation)
    if value is None or math.isnan(value):
        result.pop(metric, None)  # Tune's scheduler and searcher skip a result without the metric
    return result


# The live sweep of each sweep URL in this driver. Tune restores its callbacks from its own pickle
# (tune/tuner.pkl), so the callback finds the driver's state here rather than holding it.
_LIVE: dict[str, _LiveSweep] = {}


def sweep_callback(sweep_url: str, scheduler):
    """The Tune callback that keeps sweep.json and the CLI up to date, and saves ASHA's state with
    Tune's experiment state (Tune itself restores the searcher but not the scheduler)."""
    from ray import tune

    class SweepCallback(tune.Callback):
        def __init__(self) -> None:
            self.sweep_url, self.scheduler = sweep_url, scheduler

        def _live(self) -> _LiveSweep | None:
            # Imported when called: Tune pickles this class by value, which would copy a global it names.
            from orchestrator.driver.sweep import _LIVE

            return _LIVE.get(self.sweep_url)

        def on_trial_start(self, iteration, trials, trial, **info):
            if self._live():
                self._live().started(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self._live():
                self._live().reported(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self._live():
                self._live().ended(trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            if self._live():
                self._live().ended(trial, failed=True)

        def get_state(self) -> dict | None:
            return {"scheduler": pickle.dumps(self.scheduler.__dict__)} if self.scheduler is not None else None

        def set_state(self, state: dict) -> None:
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.__dict__.update(pickle.loads(state["scheduler"]))

    return SweepCallback()


class _LiveSweep:
    """The driver's view of a running sweep: sweep.json's content, written on every trial event."""

    def __init__(self, sweep_url: str, state: dict, search: SearchSpec, on_event: Callable[[dict], None]):
        self.url, self.state, self.search, self.on_event = sweep_url, state, search, on_event
        self.fs, self.path = storage.arrow_filesystem(sweep_url)

    def write(self) -> None:
        storage.write_json(self.fs, f"{self.path}/{SWEEP_FILE}", {**self.state, "updated_at": time.time()})

    def _entry(self, trial) -> dict:
        name = trial_name(trial)
        entry = self.state["trials"].setdefault(name, {"params": decode(self.search, trial.config),
                                                       "run": f"{TRIALS_DIR}/{name}", "started_at": time.time()})
        return entry

    def started(self, trial) -> None:
        entry = self._entry(trial)
        entry.update(status="running", why=None)
        self.write()
        self.on_event({"kind": "trial", "trial": trial_name(trial), "status": "running", "params": entry["params"]})

    def reported(self, trial, result: dict) -> None:
        entry = self._entry(trial)
        if TIME_ATTR in result:
            entry["epochs"] = result[TIME_ATTR]
        if self.search.metric in result:
            entry["metric"] = result[self.search.metric]
            if not result.get("run_status"):  # the per-epoch curve the sweep's report plots
                entry.setdefault("curve", []).append([result.get(TIME_ATTR), result[self.search.metric]])
        if not result.get("run_status"):
            self.on_event({"kind": "result", "trial": trial_name(trial), "epoch": result.get(TIME_ATTR),
                           "metric": self.search.metric, "value": result.get(self.search.metric)})

    def ended(self, trial, failed: bool) -> None:
        """A trial ended: failed (Tune says so, or its run does), finished (its run said so in its last
        report), or else stopped by the scheduler."""
        entry, last = self._entry(trial), trial.last_result or {}
        if entry.get("status") == "failed":
            return  # Tune may announce a failed trial twice (as failed, then as complete)
        run_url = storage.join(self.url, entry["run"])
        fs, path = storage.arrow_filesystem(run_url)
        meta = storage.read_json(fs, f"{path}/{runfolder.RUN_FILE}") or {}
        if failed or meta.get("status") == "failed":
            entry.update(status="failed", why=meta.get("error") or _tune_error(trial))
        elif last.get("run_status") == "finished":
            epochs = entry.get("epochs")
            entry.update(status="finished", why=("stopped by early_stopping" if last.get("stopped_early")
                                                 else f"trained all {epochs} epoch(s)"))
        else:
            value = entry.get("metric")
            shown = f"{self.search.metric} {value:.4g}" if isinstance(value, (int, float)) else "its metric"
            entry.update(status="pruned", why=(f"stopped by ASHA after epoch {entry.get('epochs')}: {shown} was not "
                                               f"in the best 1/{self.search.reduction_factor} at that milestone"))
            _mark_run(run_url, "stopped", entry["why"])
        entry["ended_at"] = time.time()
        self.write()
        self.on_event({"kind": "trial", "trial": trial_name(trial), **{k: entry.get(k) for k in
                                                                        ("status", "why", "metric", "epochs")}})

    def finish(self, best_url: str) -> None:
        """After Tune returns: the best finished trial is named and its job written as best.yaml."""
        finished = {name: entry for name, entry in self.state["trials"].items()
                    if entry.get("status") == "finished" and isinstance(entry.get("metric"), (int, float))}
        best = None
        if finished:
            pick = max if self.search.maximize else min
            best = pick(finished, key=lambda name: finished[name]["metric"])
            job = _best_job(storage.join(self.url, finished[best]["run"]), best_url)
            with self.fs.open_output_stream(f"{self.path}/{BEST_FILE}") as out:
                out.write(yaml.safe_dump(job, sort_keys=False).encode())
        self.state.update(status="finished", best=best, error=None, ended_at=time.time())
        self.write()


def _tune_error(trial) -> str:
    """The last line of the error Tune recorded for a trial (when its run wrote no cause of its own)."""
    try:
        with open(trial.error_file) as lines:
            text = [line.strip() for line in lines if line.strip()]
    except (OSError, TypeError):
        text = []
    return text[-1] if text else "the trial's process failed before its run recorded a cause"


def _best_job(run_url: str, best_url: str) -> dict:
    """The resolved job in a trial's run.json, renamed and placed to run again as `best_url`."""
    fs, path = storage.arrow_filesystem(run_url)
    job = dict((storage.read_json(fs, f"{path}/{runfolder.RUN_FILE}") or {})["job"])
    job.pop("search", None)
    if job.get("tracking"):  # the best job runs on its own, not as one of the sweep's trials
        job["tracking"] = {**job["tracking"], "mlflow_parent_run_id": None}
    parent, _, name = best_url.rstrip("/").rpartition("/")
    return {**job, "name": name, "storage": parent}


def _mark_run(run_url: str, status: str, why: str) -> None:
    """Record in a trial's run.json why the sweep stopped it: its process may be gone before it can."""
    fs, path = storage.arrow_filesystem(run_url)
    meta = storage.read_json(fs, f"{path}/{runfolder.RUN_FILE}")
    if meta is not None and meta.get("status") not in ("finished", "failed"):
        storage.write_json(fs, f"{path}/{runfolder.RUN_FILE}", {**meta, "status": status, "error": why,
                                                               "ended_at": time.time()})

