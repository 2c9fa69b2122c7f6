"""A running sweep's record: sweep.json kept up to date from Ray Tune's trial events, and best.yaml.

Owns the Tune callback (`sweep_callback`) and the driver's live view of the
sweep it reaches (`LiveSweep`): each trial's params, status, metric, epochs,
per-epoch curve and why it ended (finished, early-stopped, pruned by ASHA,
failed with its cause), written on every event; a pruned trial's run.json
marked `stopped`; and, when Tune returns, the best finished trial's job. The
callback also carries ASHA's rungs in Tune's experiment state, as Tune saves
its searcher but not its scheduler.
"""

from __future__ import annotations

import pickle
import time
from typing import Callable

import yaml

from orchestrator import storage
from orchestrator.driver import runfolder
from orchestrator.driver.runfolder import BEST_FILE, SWEEP_FILE, TRIALS_DIR
from orchestrator.driver.sweep_trial import TIME_ATTR, decode, trial_name
from orchestrator.job.search import SearchSpec

# The live sweep of each sweep URL in this driver. Tune restores its callbacks from its own pickle
# (tune/tuner.pkl), so the callback finds the driver's state here rather than holding it.
LIVE: dict[str, LiveSweep] = {}


def sweep_callback(sweep_url: str, scheduler):
    """The Tune callback that keeps sweep.json and the CLI up to date, and saves ASHA's state with
    Tune's experiment state (Tune itself restores the searcher but not the scheduler)."""
    from ray import tune

    class SweepCallback(tune.Callback):
        def __init__(self) -> None:
            self.sweep_url, self.scheduler = sweep_url, scheduler

        def _live(self) -> LiveSweep | None:
            # Imported when called: Tune pickles this class by value, which would copy a global it names.
            from orchestrator.driver.sweep_state import LIVE

            return LIVE.get(self.sweep_url)

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


class LiveSweep:
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
