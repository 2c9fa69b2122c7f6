"""run.json: the run's resolved job, versions, git commit, world sizes and restarts across sessions.

Owns what run.json holds and how progress records fold into it. The run
folder's lifecycle (when run.json is opened and finalized) is
`driver.runfolder`'s.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from orchestrator.track.records import Kind


def run_metadata(job: dict, previous: dict | None) -> dict:
    """run.json at the start of a driver session, continuing `previous` when the run resumes; it names
    the driver (host and pid), so a session that died without a word can be told apart."""
    meta = previous or {"started_at": time.time(), "world_sizes": [], "restarts": [], "trackers": {}, "sessions": 0}
    meta.update(name=job["name"], job=job, status="running", versions=_versions(), git_commit=_git_commit(),
                driver=this_driver())
    meta.pop("error", None)
    meta["sessions"] = meta.get("sessions", 0) + 1
    return meta


def this_driver() -> dict:
    """The driver process as run.json and sweep.json name it: {"host", "pid"} (see `status`)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def status(meta: dict) -> str:
    """run.json's status, except that a run still "running" whose driver process is gone from this
    host is "interrupted" (a killed driver; the same command resumes it). A driver on another host
    cannot be checked from here and keeps "running"."""
    recorded = meta.get("status") or "unknown"
    driver = meta.get("driver") or {}
    if recorded != "running" or driver.get("host") != socket.gethostname() or not driver.get("pid"):
        return recorded
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:  # alive, another user's
        pass
    return recorded


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    from orchestrator import __version__

    return {"orchestrator": __version__, "python": platform.python_version(),
            **{package: version(package) for package in ("torch", "ray", "pyarrow", "fsspec")}}


def _git_commit() -> str | None:
    """The commit of the working directory's git checkout, if there is one (best effort)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def record_in_metadata(meta: dict, record: dict, pending: dict) -> None:
    """Fold a progress record into run.json's world sizes, restarts, stalls and early stopping.

    `pending` carries what a failed group said (its FAILURE causes, its STALL records) until the
    next group's START records the restart."""
    if record["kind"] == Kind.FAILURE:
        pending["causes"] = record["causes"]
    elif record["kind"] == Kind.STALL:
        pending.setdefault("stalls", []).append(record)
        meta.setdefault("stalls", []).append({key: record[key] for key in
                                              ("time", "rank", "step", "doing", "idle_s", "last_beat_at", "stack")})
    elif record["kind"] == Kind.START:
        resumed = record["resumed_step"]
        meta["world_sizes"].append({"step": resumed or 0, "world_size": record["world_size"], "time": record["time"]})
        cause = restart_cause(pending.get("causes"), pending.get("stalls", ()))
        if cause or (resumed is not None and len(meta["world_sizes"]) > 1):
            meta["restarts"].append({"time": record["time"], "cause": cause or "the driver restarted",
                                     "resumed_step": resumed, "world_size": record["world_size"]})
        pending.clear()
    elif record["kind"] == Kind.STOPPED_EARLY:
        meta["early_stopping"] = {key: record[key] for key in ("best_value", "best_step", "best_epoch",
                                                                "stopped_at_step")}


def restart_cause(causes: dict | None, stalls=()) -> str | None:
    """Why a worker group failed, in one line, or None if nothing says. Ranks that failed on their own
    (died, stopped answering: the controller's FAILURE causes) lead, then the stalled ranks (STALL
    records) in the order they stopped moving on: a rank stuck in a collective is most likely waiting
    for one listed before it."""
    stalled = {stall["rank"] for stall in stalls}
    parts = [f"rank {rank} failed ({cause})" for rank, cause in sorted((causes or {}).items())
             if int(rank) not in stalled]
    parts += [f"rank {s['rank']} made no progress for {s['idle_s']:g} s while {s['doing']} (step {s['step']}; "
              "its threads' stacks are in run.json)" for s in sorted(stalls, key=lambda stall: stall["last_beat_at"])]
    return "; ".join(parts) or None
