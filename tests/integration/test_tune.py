"""Sweeps on the shared local Ray (`orchestrator tune`): a random search with ASHA whose best trial,
run again from best.yaml, reproduces its metric bit for bit; a sweep whose driver is SIGKILLed and run
again; a trial that fails while the sweep goes on. Small trials with fractional CPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from orchestrator.data import synthetic
from orchestrator.driver import launch, runfolder, sweep
from orchestrator.job import spec
from orchestrator.results import reports, sweeps


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    """3,000 rows of 2-class Gaussian blobs in 2 files."""
    directory = tmp_path_factory.mktemp("blobs")
    synthetic.write(spec.GenerateSpec(kind="classification", rows=3000, features=6, classes=2, files=2, seed=3),
                    str(directory))
    return str(directory)


def sweep_job(data: str, storage: str, search: dict, name: str = "sweep", **sections) -> dict:
    """An MLP on the blobs, 1 worker of half a CPU (so trials share the 2 CPUs), with `search`."""
    return {
        "name": name,
        "data": {"path": data, "label": "y", "validation": 0.2},
        "model": {"kind": "mlp", "hidden": [16]},
        "loss": "bce",
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 4, "batch_size": 128, "seed": 0, "log_every_n_steps": 5},
        "scaling": {"workers": 1, "cpus_per_worker": 0.5},
        "checkpoint": {"every_n_steps": 10, "keep": 2},
        "storage": storage,
        "search": search,
        **sections,
    }


def read_sweep(folder) -> dict:
    return json.loads((folder / runfolder.SWEEP_FILE).read_text())


def test_a_random_sweep_with_asha_stops_bad_trials_and_its_best_job_reproduces_exactly(table, tmp_path):
    search = {"metric": "val_loss", "trials": 6, "scheduler": "asha", "seed": 1,
              "space": {"optim.lr": {"loguniform": [1.0e-5, 0.05]}, "model.hidden": {"choice": [[8], [32, 32]]}}}
    events = []
    url = sweep.tune(sweep_job(table, str(tmp_path / "runs"), search), on_event=events.append)

    folder = tmp_path / "runs" / "sweep"
    assert url == str(folder)
    state = read_sweep(folder)
    assert state["status"] == "finished"
    entries = state["trials"]
    assert len(entries) == 6
    statuses = [entry["status"] for entry in entries.values()]
    assert statuses.count("pruned") >= 1 and "failed" not in statuses
    for name, entry in entries.items():
        run = reports.open_run(str(folder / runfolder.TRIALS_DIR / name))
        assert run.meta["job"]["optim"]["lr"] == entry["params"]["optim.lr"]
        assert run.meta["job"]["model"]["hidden"] == entry["params"]["model.hidden"]
        if entry["status"] == "pruned":
            assert entry["epochs"] < 4 and run.status == "stopped"
        else:
            assert entry["epochs"] == 4 and run.status == "finished"
            assert entry["metric"] == run.summary["validation"]["loss"]
    finished = {name: entry["metric"] for name, entry in entries.items() if entry["status"] == "finished"}
    assert state["best"] == min(finished, key=finished.get)
    assert any(e["kind"] == "trial" and e["status"] == "pruned" for e in events)

    best_job = yaml.safe_load((folder / runfolder.BEST_FILE).read_text())
    assert best_job["name"] == "sweep-best" and best_job["storage"] == str(tmp_path / "runs")
    again = launch.run(spec.from_dict(best_job))
    trial_summary = json.loads((folder / runfolder.TRIALS_DIR / state["best"] / "summary.json").read_text())
    assert again.validation["loss"] == trial_summary["validation"]["loss"] == finished[state["best"]]
    assert again.weights_sha256 == trial_summary["weights_sha256"]

    table_text = sweeps.trials_table(sweeps.open_sweep(str(folder)))
    assert f"{state['best']} *" in table_text and "stopped by ASHA after epoch" in table_text
    plots = sweeps.write_report(sweeps.open_sweep(str(folder)))
    assert [p.rsplit("/", 1)[-1] for p in plots] == ["trials.png", "params.png"]
    assert all(os.path.getsize(p) > 10_000 for p in plots)


def asha_rungs(tune_folder) -> dict[int, set[str]]:
    """Milestone → the trial ids ASHA recorded there, from the newest state Tune saved of our callback."""
    import cloudpickle

    newest = sorted(tune_folder.glob("callback-states-*.pkl"))[-1]
    state = cloudpickle.loads(newest.read_bytes())
    scheduler = cloudpickle.loads(next(s for s in state.values() if s)["scheduler"])
    return {milestone: set(recorded) for bracket in scheduler["_brackets"] for milestone, recorded in bracket._rungs}


def test_a_sweep_whose_driver_is_killed_resumes_without_rerunning_finished_trials(table, tmp_path):
    search = {"metric": "val_accuracy", "trials": 4, "max_concurrent": 2, "seed": 2, "scheduler": "asha",
              "space": {"optim.lr": {"loguniform": [1.0e-3, 0.05]}}}
    job_file = tmp_path / "sweep.yaml"
    job_file.write_text(yaml.safe_dump(sweep_job(table, str(tmp_path / "runs"), search, name="killed")))
    folder = tmp_path / "runs" / "killed"
    command = [sys.executable, "-m", "orchestrator", "tune", str(job_file)]
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        driver = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # kill once a trial ended and another is training
            if driver.poll() is not None:
                pytest.fail(f"the sweep ended (exit {driver.returncode}) before it could be killed: "
                            f"{errors.read_text()[-2000:]}")
            entries = read_sweep(folder)["trials"] if (folder / runfolder.SWEEP_FILE).exists() else {}
            done = [name for name, entry in entries.items() if entry.get("status") in ("finished", "pruned")]
            if done and any(entry.get("status") == "running" for entry in entries.values()):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the sweep never had a finished and a running trial at once")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    before = read_sweep(folder)["trials"]
    ended_before = {name: entry for name, entry in before.items() if entry["status"] in ("finished", "pruned")}
    assert sweeps.open_sweep(str(folder)).status == "interrupted"

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr
    state = read_sweep(folder)
    assert state["status"] == "finished" and len(state["trials"]) == 4
    assert {entry["status"] for entry in state["trials"].values()} <= {"finished", "pruned"}
    for name, entry in ended_before.items():  # kept as they were, and not trained again
        assert state["trials"][name]["status"] == entry["status"]
        meta = json.loads((folder / runfolder.TRIALS_DIR / name / "run.json").read_text())
        assert meta["sessions"] == 1
    # ASHA's rungs came back: the scheduler state the second session saved holds the first-epoch record
    # of every trial, those that ended before the kill (which never report again) included.
    assert asha_rungs(folder / runfolder.TUNE_DIR)[1] == {name.removeprefix("trial-") for name in state["trials"]}
    assert f"best trial {state['best']}" in rerun.stdout


def test_a_failing_trial_is_recorded_with_its_cause_and_the_sweep_goes_on(table, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    search = {"metric": "val_loss", "algorithm": "grid", "space": {"optim.lr": {"choice": [0.01, 1.0e+30]}}}
    sweep.tune(sweep_job(table, str(tmp_path / "runs"), search, name="grid", train={
        "epochs": 2, "batch_size": 128, "seed": 0, "log_every_n_steps": 5},
        tracking={"mlflow": True, "mlflow_tracking_uri": uri}))
    state = read_sweep(tmp_path / "runs" / "grid")
    by_lr = {entry["params"]["optim.lr"]: entry for entry in state["trials"].values()}
    assert by_lr[0.01]["status"] == "finished"
    assert by_lr[1.0e30]["status"] == "failed" and "not finite" in by_lr[1.0e30]["why"]
    assert state["status"] == "finished" and state["best"] in state["trials"]

    # MLflow: the sweep is one run, each trial's run nested under it with its own outcome.
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(state["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["search.metric"] == "val_loss"
    assert parent.data.metrics["best_val_loss"] == by_lr[0.01]["metric"]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((run.data.params["optim.lr"], run.info.status) for run in children) == [
        ("0.01", "FINISHED"), ("1e+30", "FAILED")]
