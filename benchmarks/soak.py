"""Fault soak: each fault scenario, repeated, must end bit-identical to the run never interrupted.

    python -m benchmarks.soak [--repeats 10] [--only SCENARIO ...]

Not part of the test suite (it takes about an hour at 10 repeats). One local
Ray (2 CPUs, free ports, stopped on every exit path) serves every run. The job
is the recovery tests' (tests/integration/test_recovery.py: dropout, AdamW,
warmup-cosine, clipping, 2 workers, 84 steps, a checkpoint every 10 steps);
every scenario draws its moment at random (seeded by repeat) and compares the
final weights with one uninterrupted reference run, tensor by tensor.

Scenarios:
- kill_mid_epoch: SIGKILL a random rank at a random step between checkpoints;
- kill_after_checkpoint: SIGKILL a random rank as soon as a checkpoint is complete in storage;
- kill_during_upload: SIGKILL rank 0 (the one that saves and uploads) at a checkpoint step,
  while its checkpoint is being written or uploaded;
- driver_kill: SIGKILL the driver process (`orchestrator run` in its own process) after a random
  epoch line; re-run the same command;
- hung_worker: a random rank's training thread blocks for good at a random step
  (failure.inject.hang_at_step; failure.hang_timeout_s 5), found by its watchdog;
- transient_storage: every checkpoint file write fails with probability 0.2
  (benchmarks/soak_fs.py); the uploader's retries must absorb it;
- corrupt_checkpoint: SIGKILL the driver after the second epoch, flip bytes in the newest
  checkpoint's model file, re-run: the run resumes from the previous one.

recovery_s: fault → the restarted group's first optimizer step (for a driver kill: kill → the
re-run's first step, from the re-run's own summary.json plus the gap before it started; for a
hang: the stuck rank's last progress → the first step after the restart, detection included).
Results: benchmarks/SOAK.md and benchmarks/.work/soak.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

import torch
import yaml

from benchmarks import soak_fs
from benchmarks.common import REPO, WORK, start_ray
from orchestrator.train import checkpoint

OUT = REPO / "benchmarks" / "SOAK.md"
HANG_TIMEOUT_S = 5
STEPS = 84  # 3 epochs × 28


def soak_job(data_dir: str, storage: str, name: str) -> dict:
    """The recovery tests' job (see the module doc)."""
    return {
        "name": name,
        "data": {"path": data_dir, "label": "y", "validation": 0.1},
        "model": {"kind": "mlp", "hidden": [512, 512], "dropout": 0.2},
        "loss": "mse",
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 5},
        "train": {"epochs": 3, "batch_size": 256, "seed": 7, "grad_clip": 1.0, "log_every_n_steps": 1},
        "scaling": {"workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every_n_steps": 10, "keep": 2},
        "failure": {"max_failures": 4},
        "storage": storage,
    }


class Watcher:
    """launch.run's on_record: keeps the ranks' pids and calls `plan(watcher, record)` on every record."""

    def __init__(self, plan):
        self.plan, self.pids, self.fault_at, self.first_step_after = plan, {}, None, None

    def __call__(self, record: dict) -> None:
        if record["kind"] == "worker":
            self.pids[record["rank"]] = record["pid"]
        elif record["kind"] == "first_step" and self.fault_at is not None and self.first_step_after is None:
            self.first_step_after = record["time"]
        elif record["kind"] == "stall" and self.fault_at is None:
            self.fault_at = record["last_beat_at"]
        if self.fault_at is None:
            self.plan(self, record)

    def kill(self, rank: int) -> None:
        os.kill(self.pids[rank], signal.SIGKILL)
        self.fault_at = time.time()


def weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(pathlib.Path(str(run_dir).split("://")[-1]) / "model.pt", weights_only=True)


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def in_process(job: dict, plan) -> dict:
    """Run `job` here with `plan` watching its records: its outcome and recovery time."""
    from orchestrator.driver import launch
    from orchestrator.job import spec

    watcher = Watcher(plan)
    summary = launch.run(spec.from_dict(job), on_record=watcher)
    recovery = (watcher.first_step_after - watcher.fault_at
                if watcher.fault_at is not None and watcher.first_step_after is not None else None)
    return {"status": summary.status, "restarts": summary.restarts, "run_dir": summary.run_dir,
            "fault": watcher.fault_at is not None, "recovery_s": recovery}


def by_driver(job: dict, folder: pathlib.Path, kill_after_epoch: int, corrupt: bool = False) -> dict:
    """`orchestrator run` in its own process, SIGKILLed after epoch line `kill_after_epoch`, then run again."""
    job_file = folder / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    command = [sys.executable, "-m", "orchestrator", "run", str(job_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's orchestrator, whatever is installed
    driver = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    for line in driver.stdout:
        if line.startswith(f"epoch {kill_after_epoch}/3"):
            break
    driver.kill()
    killed_at = time.time()
    driver.wait(timeout=60)
    run_dir = pathlib.Path(job["storage"]) / job["name"]
    if corrupt:
        model = max(run_dir.glob("step-*"), key=lambda p: p.name) / checkpoint.MODEL_FILE
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    rerun_at = time.time()
    rerun = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    if rerun.returncode != 0 or not (run_dir / "summary.json").exists():
        tail = " | ".join((rerun.stdout + rerun.stderr).strip().splitlines()[-6:])
        return {"status": f"re-run exit {rerun.returncode}: {tail}"[:600], "fault": True}
    summary = json.loads((run_dir / "summary.json").read_text())
    first = summary.get("time_to_first_step_s")
    return {"status": summary["status"] if rerun.returncode == 0 else f"exit {rerun.returncode}",
            "restarts": summary.get("restarts"), "run_dir": str(run_dir), "fault": True,
            "recovery_s": (rerun_at - killed_at) + first if first is not None else None,
            "resumed": "resuming" in rerun.stdout, "fell_back": "skipping checkpoint" in (rerun.stdout + rerun.stderr)}


def flaky_storage(job: dict, folder: pathlib.Path) -> dict:
    """`job` with its run folder on soak_fs's flaky filesystem: the write failures it absorbed."""
    log = pathlib.Path(os.environ["SOAK_FAULT_LOG"])
    before = len(log.read_text().splitlines()) if log.exists() else 0
    outcome = in_process({**job, "storage": f"{soak_fs.PROTOCOL}://{folder / 'flaky'}"}, lambda w, r: None)
    outcome["write_failures"] = len(log.read_text().splitlines()) - before if log.exists() else 0
    return outcome


def scenarios(data_dir: str, folder: pathlib.Path, rng: random.Random) -> dict:
    """Each scenario as a function of nothing, for this repeat's random draws."""
    def job(name: str, **changes) -> dict:
        raw = soak_job(data_dir, str(folder / name), name)
        for section, values in changes.items():
            raw[section] = {**raw[section], **values}
        return raw

    mid_step = rng.choice([s for s in range(5, STEPS - 5) if s % 10 not in (0, 1, 9)])
    mid_rank, after_rank = rng.randrange(2), rng.randrange(2)
    after_checkpoint = rng.choice(range(10, STEPS - 5, 10))
    upload_step = rng.choice(range(10, STEPS - 5, 10))

    def kill_at_step(step: int, rank: int):
        return lambda w, r: w.kill(rank) if r["kind"] == "log" and r["step"] >= step else None

    def kill_after(step: int, rank: int):
        return lambda w, r: w.kill(rank) if r["kind"] == "checkpoint" and r["step"] >= step else None

    return {
        "kill_mid_epoch": lambda: in_process(job("mid"), kill_at_step(mid_step, mid_rank)),
        "kill_after_checkpoint": lambda: in_process(job("after"), kill_after(after_checkpoint, after_rank)),
        "kill_during_upload": lambda: in_process(job("upload"), kill_at_step(upload_step, 0)),
        "driver_kill": lambda: by_driver(job("driver"), folder, rng.choice([1, 2])),
        "hung_worker": lambda: in_process(
            job("hung", failure={"hang_timeout_s": HANG_TIMEOUT_S,
                                 "inject": {"hang_at_step": rng.randrange(5, STEPS - 5), "rank": rng.randrange(2)}}),
            lambda w, r: None),
        "transient_storage": lambda: flaky_storage(job("flaky"), folder),
        "corrupt_checkpoint": lambda: by_driver(job("corrupt"), folder, 2, corrupt=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    from orchestrator.data import synthetic
    from orchestrator.job import spec

    work = WORK / "soak"
    data_dir = work / "data"
    if not data_dir.exists():
        synthetic.write(spec.GenerateSpec(kind="regression", rows=8000, features=4, noise=0.05, files=3, seed=1),
                        str(data_dir))
    soak_fs.register()
    os.environ["SOAK_FAULT_LOG"] = str(work / "injected-write-failures.log")
    os.environ["ORCHESTRATOR_PROGRESS_POLL_INTERVAL_S"] = "0.02"  # kills follow the records closely
    started = time.time()
    import ray

    start_ray()
    try:
        reference_folder = work / "reference"
        shutil.rmtree(reference_folder, ignore_errors=True)
        reference = weights(in_process(soak_job(str(data_dir), str(reference_folder), "reference"),
                                       lambda w, r: None)["run_dir"])
        results: dict[str, list[dict]] = {}
        for repeat in range(args.repeats):
            folder = work / f"repeat-{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name, scenario in scenarios(str(data_dir), folder, random.Random(repeat)).items():
                if args.only and name not in args.only:
                    continue
                try:
                    outcome = scenario()
                    outcome["identical"] = outcome["status"] == "finished" and identical(
                        weights(outcome["run_dir"]), reference)
                except Exception as error:  # a scenario that fails is a result, not the end of the soak
                    outcome = {"status": f"error: {type(error).__name__}: {error}"[:300], "identical": False}
                results.setdefault(name, []).append(outcome)
                print(f"repeat {repeat} {name}: {outcome.get('status')} identical={outcome['identical']} "
                      f"recovery={outcome.get('recovery_s')}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        ray.shutdown()
    (WORK / "soak.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, time.time() - started, args.repeats)


def write_report(results: dict[str, list[dict]], seconds: float, repeats: int) -> None:
    lines = [
        "# Fault soak", "",
        f"Written by `python -m benchmarks.soak --repeats {repeats}` on "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} in {seconds / 60:.1f} min, "
        "on the 2-core machine of benchmarks/RESULTS.md. Each scenario (see benchmarks/soak.py) ran the recovery "
        "tests' job (2 workers, 84 steps, a checkpoint every 10 steps) with a fault drawn at random per repeat; "
        "bit-identical = every tensor of the final model equal to the uninterrupted run's.", "",
        "| scenario | runs | bit-identical | restarts (mean) | recovery s (median) | recovery s (max) | failures, notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, outcomes in results.items():
        same = sum(o["identical"] for o in outcomes)
        times = [o["recovery_s"] for o in outcomes if o.get("recovery_s") is not None]
        restarts = [o["restarts"] for o in outcomes if isinstance(o.get("restarts"), int)]
        bad = "; ".join(str(o.get("status")) for o in outcomes if not o["identical"])
        notes = {"driver_kill": f"re-run said it resumed: {sum(bool(o.get('resumed')) for o in outcomes)}",
                 "corrupt_checkpoint": f"re-run skipped the corrupt checkpoint: "
                                       f"{sum(bool(o.get('fell_back')) for o in outcomes)}",
                 "transient_storage": f"injected write failures absorbed: "
                                      f"{sum(o.get('write_failures', 0) for o in outcomes)}"}.get(name, "")
        bad = "; ".join(part for part in (bad, notes) if part) or "-"
        lines.append(f"| {name} | {len(outcomes)} | {same}/{len(outcomes)} | "
                     f"{statistics.mean(restarts) if restarts else '-'} | "
                     f"{statistics.median(times):.1f} | {max(times):.1f} | {bad} |" if times else
                     f"| {name} | {len(outcomes)} | {same}/{len(outcomes)} | "
                     f"{statistics.mean(restarts) if restarts else '-'} | - | - | {bad} |")
    lines += ["", "A driver kill's recovery counts the re-run from its start (interpreter, imports, joining Ray) "
              "to its first step; a hang's counts from the stuck rank's last progress, so it includes the "
              f"{HANG_TIMEOUT_S} s failure.hang_timeout_s the watchdog waits.", ""]
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
