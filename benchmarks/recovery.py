"""Recovery from a worker SIGKILLed from outside: ours vs a plain Ray Train script.

Both train the benchmark MLP on 2 workers (1 CPU each), checkpoint every 50
steps through ray.train.report, and are killed by the same `KillPlan`, run by
the driver on the progress it receives (ours: launch.run's on_record, polled
every 0.05 s; plain: a Tracker actor, polled every 0.05 s):

1. "mid-interval": once step >= 75 is seen, rank 1 is SIGKILLed by pid;
2. "after checkpoint": once the group has recovered and a checkpoint at
   step >= 200 is reported, rank 0 is SIGKILLed at once.

For each kill:
- recovery_s = first optimizer step of the restarted group (time.time() on its
  rank 0) − time of the kill; it covers failure detection, group restart,
  restore and one step; group_started_s splits it: the restarted group's
  rank 0 has restored its checkpoint and posts "start" (both scripts post it
  right after restoring);
- steps_lost = (step at kill − step resumed from) − (step at kill − last
  checkpoint reported before the kill) = last reported checkpoint − resumed
  step: progress lost beyond the last checkpoint the run reported.

The plain script uses Ray's defaults throughout (health check every 2 s,
SYNC upload, CheckpointConfig()); ours runs with its own defaults.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from benchmarks.common import (
    WORK,
    child_main,
    ray_session_dir,
    ray_train_timeline,
    start_ray,
)

CHECKPOINT_EVERY = 50
MAX_STEPS = 300
FIRST_KILL_STEP = 75
SECOND_KILL_CHECKPOINT = 200
POLL_S = 0.05


class KillPlan:
    """Feeds on progress records ("worker", "start", "first_step", "log", "checkpoint") and kills on plan."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}
        self.step = 0
        self.last_checkpoint = 0
        self.kills: list[dict] = []

    def __call__(self, record: dict) -> None:
        kind = record["kind"]
        if kind == "worker":
            self.pids[record["rank"]] = record["pid"]
        elif kind == "log":
            self.step = max(self.step, record["step"])
        elif kind == "checkpoint":
            self.last_checkpoint = max(self.last_checkpoint, record["step"])
            self.step = max(self.step, record["step"])
        elif kind == "start" and self.kills and "resumed_step" not in self.kills[-1]:
            self.kills[-1]["resumed_step"] = record["resumed_step"] or 0
            self.kills[-1]["group_started_s"] = round(record["time"] - self.kills[-1]["time"], 3)
        elif kind == "first_step" and self.kills and "recovery_s" not in self.kills[-1]:
            self.kills[-1]["recovery_s"] = round(record["time"] - self.kills[-1]["time"], 3)
        self._maybe_kill(kind)

    def _maybe_kill(self, kind: str) -> None:
        if not self.kills and self.step >= FIRST_KILL_STEP:
            self._kill("mid-interval", rank=1)
        elif (len(self.kills) == 1 and "recovery_s" in self.kills[0] and kind == "checkpoint"
              and self.last_checkpoint >= SECOND_KILL_CHECKPOINT):
            self._kill("after checkpoint", rank=0)

    def _kill(self, when: str, rank: int) -> None:
        now = time.time()
        os.kill(self.pids[rank], signal.SIGKILL)
        self.kills.append({"when": when, "rank": rank, "time": now, "step_seen": self.step,
                           "last_checkpoint": self.last_checkpoint})

    def results(self) -> list[dict]:
        """Every kill with its figures; RuntimeError (the run is retried) unless both kills recovered."""
        if sum("recovery_s" in kill for kill in self.kills) < 2:
            raise RuntimeError(f"the kill plan did not complete (last step seen {self.step}): {self.kills}")
        for kill in self.kills:
            if "resumed_step" in kill:
                kill["steps_lost"] = kill["last_checkpoint"] - kill["resumed_step"]
        return self.kills


def ours(data: str) -> dict:
    from benchmarks.e2e import job
    from orchestrator.driver import launch
    from orchestrator.job import spec

    os.environ["ORCHESTRATOR_PROGRESS_POLL_INTERVAL_S"] = str(POLL_S)  # the driver's on_record poll
    raw = job(data, "recovery", 2, 1, max_steps=MAX_STEPS, log_every_n_steps=5)
    raw["checkpoint"] = {"every_n_steps": CHECKPOINT_EVERY, "keep": 3}
    raw["failure"] = {"max_failures": 3}
    plan, session = KillPlan(), []

    def on_record(record: dict) -> None:
        session[:] = session or [d for d in [ray_session_dir()] if d]
        plan(record)

    summary = launch.run(spec.from_dict(raw), fresh=True, on_record=on_record)
    return {"kills": plan.results(), "steps": summary.steps, "restarts": summary.restarts,
            "status": summary.status, "ray_train": ray_train_timeline(session[0])}


def plain(data: str) -> dict:
    start_ray()
    session = ray_session_dir()
    import ray

    from benchmarks import plain_train

    tracker = plain_train.new_tracker()
    trainer = plain_train.trainer(
        f"plain-recovery-{os.getpid()}", str(WORK / "ray-results"), workers=2, cpus_per_worker=1, max_failures=3,
        data=data, max_steps=MAX_STEPS, every_n_steps=CHECKPOINT_EVERY, upload_mode="sync", post_every=5,
        tracker=tracker,
    )
    plan, outcome = KillPlan(), {}

    def fit() -> None:
        try:
            trainer.fit()
            outcome["status"] = "finished"
        except Exception as error:  # reported in the results, not raised: the kills are the figures
            outcome["status"] = f"failed: {type(error).__name__}: {error}"

    fitting = threading.Thread(target=fit, daemon=True)
    fitting.start()
    while fitting.is_alive():
        fitting.join(timeout=POLL_S)
        for record in ray.get(tracker.drain.remote()):
            plan(record)
    ray.shutdown()
    return {"kills": plan.results(), **outcome, "ray_train": ray_train_timeline(session)}


if __name__ == "__main__":
    child_main({"ours": ours, "plain": plain})
