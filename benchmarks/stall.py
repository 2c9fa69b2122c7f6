"""How long training stalls while a checkpoint is written: ours (ASYNC) vs a plain loop with SYNC reports.

One worker with the machine's 2 CPUs trains the benchmark MLP for 600 steps
and reports a checkpoint (model + AdamW state, about 0.9 MB) every 50 steps.
Step durations include fetching the batch and, on a reporting step, the whole
checkpoint report as the training thread sees it.

ours         launch.run with train.log_every_n_steps 1: each "log" record's
             samples_per_s covers exactly one step, so duration = 1024 /
             samples_per_s. A checkpoint due at step s is reported after the
             log point of s, so its cost lands in step s + 1's duration.
plain_sync   `plain_train.train_fn` (1 worker), ray.train.report(checkpoint,
             checkpoint_upload_mode=SYNC): the report is timed in its own step
             (and alone: report_call_ms = torch.save + ray.train.report).
plain_async  the same with ASYNC (Ray's default upload), for reference.

The plain variants run with RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5, ours's
default, so that the controller takes reports equally fast in all three.

Figures (steps 1-10 left out as warm-up):
- report_stall = (mean duration of steps that include a report − median step
  duration) / median step duration — the target's "stall as a share of step time";
- amortized_stall = Σ over each reporting step and the 9 after it of
  (duration − median), averaged over reports, / (50 × median): the share of
  training time checkpointing costs, background upload included.
"""

from __future__ import annotations

import os
import statistics

from benchmarks.common import BATCH, WORK, child_main, start_ray

EVERY = 50
STEPS = 600
WARMUP = 10
AFTER = 10  # steps charged to a report in the amortized figure


def figures(durations: dict[int, float], reporting: set[int]) -> dict:
    """Stall figures from per-step durations and the steps whose duration includes a report."""
    steady = {s: d for s, d in durations.items() if s > WARMUP}
    median = statistics.median(steady.values())
    report_steps = sorted(s for s in reporting if s in steady)
    with_report = [steady[s] for s in report_steps]
    extra = [sum(steady.get(s + k, median) - median for k in range(AFTER)) for s in report_steps]
    return {
        "median_step_ms": round(median * 1e3, 3),
        "report_step_ms": round(statistics.mean(with_report) * 1e3, 3),
        "reports": len(report_steps),
        "report_stall": round((statistics.mean(with_report) - median) / median, 4),
        "amortized_stall": round(statistics.mean(extra) / (EVERY * median), 4),
    }


def ours(data: str) -> dict:
    from benchmarks.e2e import job
    from orchestrator.driver import launch
    from orchestrator.job import spec

    raw = job(data, "stall", 1, 2, max_steps=STEPS, log_every_n_steps=1)
    raw["checkpoint"] = {"every_n_steps": EVERY, "keep": 2}
    records: list[dict] = []
    launch.run(spec.from_dict(raw), fresh=True, on_record=records.append)
    durations = {r["step"]: BATCH / r["samples_per_s"] for r in records if r["kind"] == "log"}
    reported = {r["step"] for r in records if r["kind"] == "checkpoint"}
    return figures(durations, {s + 1 for s in reported if s + 1 in durations})


def _plain(data: str, upload_mode: str) -> dict:
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    start_ray()
    import ray

    from benchmarks import plain_train

    tracker = plain_train.new_tracker()
    trainer = plain_train.trainer(
        f"plain-stall-{upload_mode}-{os.getpid()}", str(WORK / "ray-results"), workers=1, cpus_per_worker=2,
        max_failures=0, data=data, max_steps=STEPS, every_n_steps=EVERY, upload_mode=upload_mode,
        post_every=STEPS, tracker=tracker,
    )
    trainer.fit()
    (durations,) = [r["durations"] for r in ray.get(tracker.drain.remote()) if r["kind"] == "durations"]
    ray.shutdown()
    reports = [report_s for _, _, reported, report_s in durations if reported]
    return {**figures({s: d for s, d, _, _ in durations}, {s for s, _, reported, _ in durations if reported}),
            "report_call_ms": round(statistics.mean(reports) * 1e3, 3)}


def plain_sync(data: str) -> dict:
    return _plain(data, "sync")


def plain_async(data: str) -> dict:
    return _plain(data, "async")


if __name__ == "__main__":
    child_main({"ours": ours, "plain_sync": plain_sync, "plain_async": plain_async})
