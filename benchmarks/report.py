"""RESULTS.md from the figures of one run: the machine, each figure, each target as a ratio with PASS/MISS.

The targets come from issues 3 and 4. Each is a ratio of two figures measured
in the same run. RESULTS.md holds only what the run measured: a miss says by
how much, with the run's own figures that bear on it (the reader's shuffle-off
ratios, its cProfile). Why a target misses is written up by hand in
benchmarks/ANALYSIS.md under the date its evidence was measured; each miss
names its ANALYSIS.md section and that date, and says so when the section is
older than the run or missing.
"""

from __future__ import annotations

import os
import pathlib
import platform
import re
import statistics
from dataclasses import dataclass
from importlib.metadata import version

ANALYSIS = pathlib.Path(__file__).with_name("ANALYSIS.md")


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "cpu": cpu,
        "os": platform.platform(),
        "versions": {"python": platform.python_version(),
                     **{name: version(name) for name in ("torch", "ray", "pyarrow", "numpy")}},
    }


@dataclass
class Target:
    key: str
    what: str
    ours: float
    reference: float
    goal: float
    at_least: bool  # True: ratio >= goal passes; False: ratio <= goal passes
    unit: str
    ratio_override: float | None = None

    @property
    def ratio(self) -> float:
        if self.ratio_override is not None:
            return self.ratio_override
        return self.ours / self.reference if self.reference else float("inf")

    @property
    def passed(self) -> bool:
        return self.ratio >= self.goal if self.at_least else self.ratio <= self.goal

    def miss_by(self) -> str:
        if self.passed:
            return ""
        if self.at_least:
            return f"{self.goal - self.ratio:.2f} below the goal (ours needs {self.goal / self.ratio:.2f}× its figure)"
        if self.goal == 0:
            return f"{self.ratio:g} above 0"
        return f"{self.ratio / self.goal:.2f}× the allowed ratio"


def targets(r: dict) -> list[Target]:
    reader, e2e, recovery, stall = r["reader"], r["e2e"], r["recovery"], r["stall"]
    ours_kills, plain_kills = recovery["ours"]["kills"], recovery["plain"]["kills"]
    ours_recovery = statistics.mean(k["recovery_s"] for k in ours_kills)
    plain_recovery = statistics.mean(k["recovery_s"] for k in plain_kills)
    return [
        Target("reader", "reader rows/s, ours ÷ raw pyarrow (1×)", reader["1x"]["ours"]["rows_per_s"],
               reader["1x"]["raw"]["rows_per_s"], 0.8, True, "rows/s"),
        Target("reader10", "reader rows/s, ours ÷ raw pyarrow (10×)", reader["10x"]["ours"]["rows_per_s"],
               reader["10x"]["raw"]["rows_per_s"], 0.8, True, "rows/s"),
        Target("rss", "reader peak RSS, ours 10× ÷ ours 1×", reader["10x"]["ours"]["peak_rss_mb"],
               reader["1x"]["ours"]["peak_rss_mb"], 1.2, False, "MiB"),
        Target("e2e1", "samples/s, ours 1 worker ÷ plain loop", e2e["ours_1w"]["samples_per_s"],
               e2e["plain_loop"]["samples_per_s"], 0.9, True, "samples/s"),
        Target("e2e2", "samples/s, ours 2 workers ÷ torchrun 2 procs", e2e["ours_2w"]["samples_per_s"],
               e2e["torchrun_2p"]["samples_per_s"], 1.0, True, "samples/s"),
        Target("ttfs", "time to first step, ours 1 worker ÷ Ray Train + Ray Data",
               e2e["ours_1w"]["time_to_first_step_s"], e2e["ray_data_train"]["time_to_first_step_s"],
               0.5, False, "s"),
        Target("ttfs2", "time to first step, ours 2 workers ÷ Ray Train + Ray Data",
               e2e["ours_2w"]["time_to_first_step_s"], e2e["ray_data_train"]["time_to_first_step_s"],
               0.5, False, "s"),
        Target("recovery", "recovery time (mean of 2 kills), ours ÷ plain Ray Train", ours_recovery,
               plain_recovery, 0.5, False, "s"),
        Target("lost", "steps lost beyond the last reported checkpoint, ours (sum of 2 kills)",
               sum(k.get("steps_lost", 0) for k in ours_kills), sum(k.get("steps_lost", 0) for k in plain_kills),
               0, False, "steps", ratio_override=sum(k.get("steps_lost", 0) for k in ours_kills)),
        Target("stall", "checkpoint stall per reporting step, ours (ASYNC): report_stall",
               stall["ours"]["report_step_ms"], stall["ours"]["median_step_ms"], 0.05, False, "ms",
               ratio_override=stall["ours"]["report_stall"]),
        Target("stall_amortized", "checkpoint stall amortized over the interval, ours (ASYNC): amortized_stall",
               round(stall["ours"]["amortized_stall"] * 100, 2), round(stall["plain_sync"]["amortized_stall"] * 100, 2),
               0.05, False, "% (reference: plain SYNC)", ratio_override=stall["ours"]["amortized_stall"]),
        *_table_targets(r["tables"]),
        *(_tree_targets(r["trees"]) if "trees" in r else []),
        *(_sweep_targets(r["sweeps"]) if "sweeps" in r else []),
        *(_small_targets(r["small"], e2e) if "small" in r else []),
    ]


def _warm(small: dict) -> dict:
    """Of the two warm runs, the one slower to its first step (a conservative reading)."""
    return max((small["ours_warm_1"], small["ours_warm_2"]), key=lambda run: run["time_to_first_step_s"])


def _small_targets(small: dict, e2e: dict) -> list[Target]:
    plain, cold, warm = small["plain"], small["ours_cold"], _warm(small)
    return [
        Target("small_after", "small job (569 rows, 60 epochs): time after the first step, ours cold ÷ plain script",
               cold["after_first_step_s"], plain["after_first_step_s"], 2.0, False, "s"),
        Target("small_shutdown", "small job: shutdown after the last step, ours cold ÷ the 1 s limit",
               cold["phases"]["shutdown"], 1.0, 1.0, False, "s"),
        Target("ttfs_warm", "time to first step, ours warm (joining `orchestrator up`) ÷ plain script, small job",
               warm["time_to_first_step_s"], plain["time_to_first_step_s"], 2.0, False, "s"),
        Target("ttfs_cold_small", "time to first step, ours cold (small job) ÷ Ray Train + Ray Data (e2e)",
               cold["time_to_first_step_s"], e2e["ray_data_train"]["time_to_first_step_s"], 0.5, False, "s"),
    ]


def _sweep_targets(sweeps: dict) -> list[Target]:
    ours, theirs = sweeps["ours"], sweeps["handwritten"]
    return [
        Target("sweeps_wall", "sweep wall time, ours ÷ hand-written Ray Tune + Train V2 (8 trials, ASHA)",
               ours["wall_s"], theirs["wall_s"], 0.7, False, "s"),
        Target("sweeps_best", "best finished trial's val_loss, ours ÷ hand-written (lower is better)",
               ours["best_val_loss"], theirs["best_val_loss"], 1.0, False, "val_loss"),
    ]


def _tree_targets(trees: dict) -> list[Target]:
    targets = []
    for kind, cases in trees.items():
        ours, plain = cases["ours_2w"], cases["plain"]
        targets += [
            Target(f"trees_{kind}", f"{kind} training rows/s per core, ours 2 workers ÷ {kind} in one process",
                   ours["rows_per_s"], plain["rows_per_s"], 0.9, True, "rows/s (2 cores each)"),
            Target(f"trees_{kind}_memory", f"{kind} worker memory above its data-free RSS ÷ its shard's decoded "
                   "size, ours 2 workers", ours["data_peak_mb"], ours["shard_mb"], 1.5, False, "MiB"),
        ]
    return targets


def _table_targets(tables: dict) -> list[Target]:
    churn, unscaled = tables["churn"], tables["unscaled"]
    auc = churn["ours"]["validation"]["auc"]
    return [
        Target("tables_churn", "churn val AUC, ours (jobs/churn.yaml, no tuning) ÷ LightGBM (default)", auc,
               churn["lightgbm"]["validation"]["auc"], 0.98, True, "AUC"),
        Target("tables_unscaled", "unscaled val R², ours (default MLP job) ÷ standardized linear model",
               unscaled["ours"]["validation"]["r2"], unscaled["linear"]["validation"]["r2"], 1.0, True, "R²"),
        Target("tables_fit", "statistics pass ÷ one epoch, churn (2 workers)", churn["ours"]["preprocessing_fit_s"],
               churn["ours"]["epoch_s"], 0.5, False, "s"),
    ]


def render(r: dict, analysis: str | None = None) -> str:
    """RESULTS.md for the results `r` of one run; `analysis` is ANALYSIS.md's text (read from disk when None)."""
    if analysis is None:
        analysis = ANALYSIS.read_text(encoding="utf-8") if ANALYSIS.exists() else ""
    parts = [_header(r), _targets_table(targets(r)), _reader(r), _e2e(r), _recovery(r), _stall(r), _tables(r),
             *([_trees(r)] if "trees" in r else []), *([_sweeps(r)] if "sweeps" in r else []), *([_small(r)] if "small" in r else []), _misses(r, analysed(analysis)), _retries(r)]
    return "\n\n".join(parts) + "\n"


def analysed(analysis: str) -> dict[str, str]:
    """Target key → the date of the ANALYSIS.md section about it: a `### ` heading naming the key in
    backticks, under a `## Measured YYYY-MM-DD` heading. The first (newest) section naming a key wins."""
    dates: dict[str, str] = {}
    measured = None
    for line in analysis.splitlines():
        if line.startswith("## "):
            found = re.fullmatch(r"## Measured (\d{4}-\d{2}-\d{2})\s*", line)
            measured = found.group(1) if found else None
        elif line.startswith("### ") and measured:
            for key in re.findall(r"`(\w+)`", line):
                dates.setdefault(key, measured)
    return dates


def _fmt(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if isinstance(c, (int, float)) else str(c) for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _header(r: dict) -> str:
    m = r["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    layouts = "\n".join(f"- {size}: {text}" for size, text in r["layouts"].items())
    return (
        "# Benchmarks\n\n"
        f"Written by `{r['command']}` on {r['date']} in {r['total_s'] / 60:.1f} min "
        f"(data generation included: {r['data_s']:.0f} s; datasets already on disk are reused).\n\n"
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, no GPU; {m['os']}; {versions}.\n"
        "The CPU is shared with other work on this machine, so figures move by ~10-20% from run to run;\n"
        "every ratio below compares figures taken minutes apart in the same run.\n\n"
        "Data (generated by `benchmarks/data.py`, float32 regression, pyarrow's default Parquet writer: "
        "snappy, dictionary encoding):\n" + layouts
    )


def _targets_table(ts: list[Target]) -> str:
    rows = [[t.what, f"{_fmt(t.ours)} {t.unit}", f"{_fmt(t.reference)} {t.unit}", f"{t.ratio:.3g}",
             ("≥ " if t.at_least else "≤ ") + f"{t.goal:g}", "**PASS**" if t.passed else f"**MISS**: {t.miss_by()}"]
            for t in ts]
    return "## Targets\n\n" + _table(["target", "ours", "reference", "ratio", "goal", "result"], rows)


def _reader(r: dict) -> str:
    rows = []
    for size in ("1x", "10x"):
        for name, label in (("raw", "raw pyarrow (limit)"), ("raw_mmap", "raw pyarrow, memory-mapped (information)"),
                            ("ours", "ours: ShardReader"), ("ours_unshuffled", "ours, shuffle_window_rows 1 (information)"),
                            ("raydata", "Ray Data iter_torch_batches (peer)")):
            if name not in r["reader"][size]:
                continue  # results from before the row was added
            x = r["reader"][size][name]
            growth = x["peak_rss_mb"] - x["rss_before_mb"]
            rows.append([size, label, x["rows"], x["rows_per_s"], x["steady_rows_per_s"], x["first_batch_s"],
                         x["peak_rss_mb"], growth])
    raydata = r["reader"]["1x"]["raydata"], r["reader"]["10x"]["raydata"]
    ours = r["reader"]["1x"]["ours"], r["reader"]["10x"]["ours"]
    return (
        "## Reader (issue 4)\n\n"
        "One pass over the data in batches of 1024 rows as torch tensors, each reader in its own process after a "
        "pass that put the files in the page cache. rows/s covers the whole pass (first read call to last batch); "
        "steady rows/s excludes the first batch. All but Ray Data: median of 3 runs "
        f"(1×: ours {ours[0]['runs_rows_per_s']}, raw {r['reader']['1x']['raw']['runs_rows_per_s']}); Ray Data: one run. "
        "Peak RSS is the process's VmHWM; growth = peak − RSS just before reading. Ours memory-maps each local "
        "file for the row group it decodes; the memory-mapped raw row shows what mapping alone gains, and the "
        "unshuffled row what ours's in-lane shuffle (a random gather of every row) costs.\n\n"
        + _table(["data", "reader", "rows", "rows/s", "steady rows/s", "first batch s", "peak RSS MiB",
                  "growth MiB"], rows)
        + "\n\nOurs's peak RSS is flat with data size and a few tens of MiB above raw's: it holds the decoded "
          "row groups and shuffled windows of its 8 lanes and one block of 64 batches, where raw holds one row "
          "group. Each file is mapped only while one row group is decoded: a file kept mapped counts every page "
          "read from it in the process's RSS (a version that kept 8 files mapped peaked at 837 MiB at 1×), and an "
          "open `ParquetFile` read without a map keeps about one row group's buffers in Arrow's pool (an earlier "
          "version that kept every file open peaked at 1.4 GiB at 10×)."
        + "\n\nNot in the table: our footer scan (`data.source.scan`) took "
        f"{ours[0]['scan_s']} s (1×) and {ours[1]['scan_s']} s (10×). Ray Data's `ray.init` took "
        f"{raydata[0]['ray_start_s']} s before its timer started; its decoding runs in Ray processes whose peaks add "
        f"up to {raydata[0]['ray_processes_peak_rss_mb']:,.0f} MiB (1×) and {raydata[1]['ray_processes_peak_rss_mb']:,.0f} "
        "MiB (10×) (sum of each process's VmHWM: an upper bound)."
    )


def _e2e(r: dict) -> str:
    e = r["e2e"]
    labels = {
        "plain_loop": "plain torch loop, 1 process (limit)",
        "ray_data_train": "Ray Train + Ray Data, 1 worker (peer)",
        "torchrun_2p": "torchrun, 2 processes DDP (peer)",
        "ours_1w": "ours, 1 worker × 2 CPUs",
        "ours_2w": "ours, 2 workers × 1 CPU",
    }
    rows = []
    for k, x in e.items():
        rows.append([labels[k], x["steps"], x["torch_threads"], x["samples_per_s"], x["time_to_first_step_s"],
                     *_first_step_parts(x), x["process_wall_s"], x["peak_rss_mb"]])
    ours = e["ours_1w"], e["ours_2w"]
    return (
        "## End to end (issue 4)\n\n"
        "MLP 32→256→256→1 (ReLU), MSE, AdamW (lr 1e-3, weight decay 0.01), global batch 1024, one epoch of the 1× "
        "data (2,048 steps), 3 rounds of the five runs interleaved; the table gives medians over the rounds (each "
        "round's figures are listed below it), and (a)-(d) come from the round with the median time to first "
        "step. samples/s = (steps − 1) × 1024 / (time of the last step − time of the first step), "
        "startup excluded; for ours the two times are its `first_step` record and its last `log` record "
        "(train.log_every_n_steps 256, checkpoint.every_n_steps null; the epoch-end checkpoint comes after the "
        "last timed step). Time to first step = wall clock when the first optimizer step finished − when the "
        "benchmark spawned the process, for every row: interpreter start, imports, Ray start (where there is one), "
        "scheduling, the first batch and the step. Ours's own `summary.time_to_first_step_s` counts from the "
        f"call of launch.run instead: {ours[0]['summary_time_to_first_step_s']} s (1 worker) and "
        f"{ours[1]['summary_time_to_first_step_s']} s (2 workers); spawn → launch.run took "
        f"{ours[0]['launch_called_time'] - ours[0]['spawn_time']:.2f} s and "
        f"{ours[1]['launch_called_time'] - ours[1]['spawn_time']:.2f} s (interpreter, imports).\n\n"
        "Resources: the plain loop and ours-1w get both cores (torch uses 2 threads; Ray sets OMP_NUM_THREADS to a "
        "worker's CPUs). Ray Train + Ray Data runs 1 worker with 1 CPU on a 2-CPU Ray so that Ray Data has the "
        "other CPU (with 2 workers × 1 CPU it has none and hangs); it stacks the 33 column tensors into a matrix. "
        "torchrun and ours-2w run 2 processes with 1 thread each; torchrun's ranks read alternate row groups.\n\n"
        + "Where the time to first step goes in the Ray runs, from Ray Train's own logs (`logs/train/` of the Ray "
          "session) and the runs' records: (a) spawn → Ray Train's controller logs its first line (interpreter, "
          "imports, `ray.init`, the controller actor); (b) Ray Train's 'Worker group startup completed in X s' "
          "(placement, worker processes and their imports, process group); (c) train function launched → it has "
          "built its model (ours: also its reader and the restore check) and posts 'start'; (d) → first step done "
          "(first batch, first step). The Ray Train + Ray Data script's `ray.init` alone took "
          f"{e['ray_data_train']['ray_start_s']} s.\n\n"
        + _table(["run", "steps", "torch threads", "samples/s", "time to first step s", "(a) Ray up s",
                  "(b) group startup s", "(c) train fn setup s", "(d) first batch + step s", "process wall s",
                  "peak RSS MiB (driver)"], rows)
        + "\n\nEvery round:\n\n"
        + "\n".join(f"- {labels[k]}: {_runs(x, 'samples_per_s')} samples/s; {_runs(x, 'time_to_first_step_s')} s"
                    for k, x in e.items())
        + f"\n\nOurs's log points (every 256 steps) in the median round, samples/s: 1 worker "
          f"{ours[0]['log_samples_per_s']}; 2 workers {ours[1]['log_samples_per_s']}."
    )


def _first_step_parts(x: dict) -> list:
    """(a)-(d) of the time to first step for a Ray run (from its median-time round), '-' for the others."""
    x = x.get("ttfs_run", x)
    timeline = x.get("ray_train")
    if not timeline or not timeline["controller_first_log_time"]:
        return ["-"] * 4
    return [round(timeline["controller_first_log_time"] - x["spawn_time"], 2), timeline["group_startup_s"][0],
            round(x["group_started_time"] - timeline["train_fn_launch_times"][0], 2),
            round(x["first_step_time"] - x["group_started_time"], 2)]


def _runs(x: dict, key: str, percent: bool = False) -> str:
    """Every round's value of `key`, e.g. "390313 / 429344 / 388100"."""
    values = x.get("runs", {}).get(key, [x[key]])
    return " / ".join(f"{v:.1%}" if percent else f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}" for v in values)


def _recovery(r: dict) -> str:
    rows = []
    for name, label in (("ours", "ours"), ("plain", "plain Ray Train")):
        timeline = r["recovery"][name]["ray_train"]
        for k in r["recovery"][name]["kills"]:
            # The group start Ray Train began after this kill: detection and teardown end there.
            later = [(t, d) for t, d in zip(timeline["group_start_times"], timeline["group_startup_s"]) if t > k["time"]]
            detect, startup = (round(later[0][0] - k["time"], 2), later[0][1]) if later else ("-", "-")
            rows.append([label, k["when"], k["rank"], k["step_seen"], k["last_checkpoint"], k.get("resumed_step", "-"),
                         k.get("steps_lost", "-"), detect, startup, k.get("group_started_s", "-"),
                         k.get("recovery_s", "-")])
    return (
        "## Recovery (issue 3)\n\n"
        "2 workers × 1 CPU, 300 steps of the benchmark MLP on the 1× data, a checkpoint every 50 steps through "
        "`ray.train.report`, max_failures 3. The driver SIGKILLs a worker by pid: rank 1 once step ≥ 75 is seen "
        "(mid-interval), then rank 0 as soon as a checkpoint at step ≥ 200 is reported. Both drivers poll progress "
        "every 0.05 s (ours: `ORCHESTRATOR_PROGRESS_POLL_INTERVAL_S=0.05`; plain: a tracker actor). The plain "
        "script (`benchmarks/plain_train.py`) follows Ray's docs with Ray's defaults: SYNC upload, "
        "`CheckpointConfig()`, health check every 2 s, resume from `ray.train.get_checkpoint()`. "
        "recovery = first step of the restarted group − kill, and its parts: 'detect' = kill → Ray Train's "
        "controller begins the new worker group (failure detection, teardown), 'group startup' = Ray Train's own "
        "'Worker group startup completed in X s', 'group up' = kill → the restarted rank 0 has restored and posts "
        "'start'. steps lost = (step at kill − resumed step) − (step at kill − last reported checkpoint) = last "
        "reported checkpoint − resumed step.\n\n"
        + _table(["run", "kill", "rank", "step seen", "last reported checkpoint", "resumed from", "steps lost",
                  "detect s", "group startup s", "group up s", "recovery s"], rows)
        + f"\n\nOurs finished with status '{r['recovery']['ours']['status']}' after "
          f"{r['recovery']['ours']['restarts']} restarts; the plain script: '{r['recovery']['plain'].get('status')}'."
    )


def _stall(r: dict) -> str:
    labels = {"ours": "ours (ASYNC upload, our uploader)", "plain_sync": "plain Ray Train, SYNC report",
              "plain_async": "plain Ray Train, ASYNC report (reference)"}
    rows = [[labels[k], x["reports"], x["median_step_ms"], x["report_step_ms"], x.get("report_call_ms", "-"),
             f"{x['report_stall']:.1%}", f"{x['amortized_stall']:.1%}"] for k, x in r["stall"].items()]
    return (
        "## Checkpoint stall (issue 3)\n\n"
        "1 worker × 2 CPUs, 600 steps on the 1× data, a checkpoint (model + AdamW state, ~0.9 MB) every 50 steps. "
        "A step's duration includes fetching its batch and, on a reporting step, the whole report as the training "
        "thread sees it. Ours: `train.log_every_n_steps 1`, so each `log` record's samples_per_s covers one step "
        "(duration = 1024 / samples_per_s); a checkpoint due at step s is reported after the log point of s, so it "
        "lands in step s + 1. Plain: `benchmarks/plain_train.py` times each step itself. Controller poll 0.5 s in "
        "all three (ours's default; set for the plain ones through RAY_TRAIN_HEALTH_CHECK_INTERVAL_S). Steps 1-10 "
        "are left out.\n\n"
        "Three rounds of the three runs, interleaved; each figure is its median over the rounds "
        f"(report_stall per round: ours {_runs(r['stall']['ours'], 'report_stall', True)}; amortized_stall: ours "
        f"{_runs(r['stall']['ours'], 'amortized_stall', True)}, plain ASYNC "
        f"{_runs(r['stall']['plain_async'], 'amortized_stall', True)}).\n\n"
        "- **report_stall** (the target's figure) = (mean duration of the steps that include a report − median step "
        "duration) / median step duration;\n"
        "- **amortized_stall** = Σ over each reporting step and the 9 after it of (duration − median), averaged "
        "over reports, / (50 × median): the share of training time the checkpoints cost, background upload "
        "included.\n\n"
        + _table(["run", "reports", "median step ms", "reporting step ms", "report call alone ms", "report_stall",
                  "amortized_stall"], rows)
    )


def _tables(r: dict) -> str:
    t = r["tables"]
    churn, unscaled = t["churn"], t["unscaled"]
    rows = []
    for name, label in (("ours", "ours: jobs/churn.yaml (MLP 128-128)"), ("ours_tabm", "ours: the same job, model tabm"),
                        ("lightgbm", "LightGBM, default parameters, 100 rounds"),
                        ("linear", "logistic regression, standardized + one-hot"), ("truth", "the truth's own probabilities")):
        v = churn[name]["validation"]
        rows.append([label, v["auc"], v["accuracy"], churn[name].get("samples_per_s", "")])
    regression = [[label, unscaled[name]["validation"]["r2"]] for name, label in (
        ("ours", "ours: MLP 128-128, defaults (standardized inputs and target)"),
        ("lightgbm", "LightGBM, default parameters, 100 rounds"), ("linear", "ridge regression, standardized"))]
    ours, numeric = churn["ours"], churn["ours_numeric"]
    return (
        "## Typed tables (issue 10)\n\n"
        "`python -m benchmarks.tables`'s cases, on the same training/validation split (ours: 20% held out per "
        "row group). churn: jobs/churn.yaml's generated table (strings with a long tail, nulls, skew, a "
        "timestamp, an embedding, tags, a string label with nulls). Metrics at the run's last epoch.\n\n"
        + _table(["churn", "val AUC", "val accuracy", "samples/s"], rows)
        + "\n\nunscaled: numbers on scales from 0.01 to ~10^5, a nonlinear target.\n\n"
        + _table(["unscaled", "val R²"], regression)
        + f"\n\nStatistics pass (fitting the preprocessing on the workers before the first step): "
          f"{ours['preprocessing_fit_s']:.2f} s against an epoch of {ours['epoch_s']:.2f} s (churn, 2 workers). "
          f"Samples/s with every column kind (embeddings, bags): {_fmt(ours['samples_per_s'])}; with the two "
          f"numeric columns only: {_fmt(numeric['samples_per_s'])} "
          f"({ours['samples_per_s'] / numeric['samples_per_s']:.2f}×)."
    )


def _trees(r: dict) -> str:
    measured = (r.get("sections_measured") or {}).get("trees")
    when = f" Measured {measured}, apart from the rest of this report." if measured else ""
    rows = []
    for kind, cases in r["trees"].items():
        for name, label in (("plain", f"{kind} in one process (2 threads)"), ("ours_1w", "ours, 1 worker × 2 CPUs"),
                            ("ours_2w", "ours, 2 workers × 1 CPU")):
            c = cases[name]
            rows.append([label, c["rows_per_s"], c["validation"]["r2"], c["data_peak_mb"], c["shard_mb"],
                         c["data_peak_mb"] / c["shard_mb"]])
    return (
        "## Gradient-boosted trees (issue 14)\n\n"
        "`python -m benchmarks.trees`'s cases on the same generated table (16 numeric columns with nulls, a "
        "long-tailed string, a boolean) and the same validation file; the same parameters and rounds. rows/s: "
        "training rows × rounds ÷ seconds (ours: the median round, its per-round metrics included). Memory: "
        "peak RSS above the RSS before reading data (ours: the largest worker); shard: the Arrow bytes of "
        "the row groups a worker reads (the whole table in one process)." + when + "\n\n"
        + _table(["run", "rows/s", "val R²", "memory MiB", "shard MiB", "memory ÷ shard"], rows)
    )


def _sweeps(r: dict) -> str:
    measured = (r.get("sections_measured") or {}).get("sweeps")
    when = f" Measured {measured}, apart from the rest of this report." if measured else ""
    rows = [[label, c["wall_s"], c["best_val_loss"], c["trials"], c["stopped_early"], c["failed"]]
            for label, c in (("hand-written Ray Tune + Train V2", r["sweeps"]["handwritten"]),
                             ("ours (`orchestrator tune`)", r["sweeps"]["ours"]))]
    return (
        "## Sweeps (issue 15)\n\n"
        "`python -m benchmarks.sweeps`'s cases: the same 8-trial random search (seeded) with ASHA on val_loss "
        "over lr (loguniform) and the MLP's widths (3 choices), 6 epochs, 2 trials at once, 1 worker of 0.9 CPU "
        "each, on the same generated table; each case in its own process with its own Ray. Wall: from before "
        "Ray starts to the end of the sweep. Best: the lowest val_loss of a trial that trained all its "
        "epochs." + when + "\n\n"
        + _table(["sweep", "wall s", "best val_loss", "trials", "stopped early", "failed"], rows)
    )


def _small(r: dict) -> str:
    small = r["small"]
    measured = (r.get("sections_measured") or {}).get("small")
    when = f" Measured {measured}, apart from the rest of this report." if measured else ""
    phase_names = ("prepare", "ray", "worker_group", "setup", "first_step", "training", "validation",
                   "checkpointing", "shutdown")
    rows = []
    for label, key in (("plain torch script (limit)", "plain"), ("ours cold", "ours_cold"),
                       ("ours cold, 1 worker × 2 CPUs", "ours_cold_1w"),
                       ("ours warm, 1st run after `up`", "ours_warm_1"), ("ours warm, 2nd run", "ours_warm_2")):
        if key not in small:  # a report of a run from before the 1-worker case
            continue
        c = small[key]
        phases = c.get("phases") or {}
        rows.append([label, c["time_to_first_step_s"], c["after_first_step_s"], c["process_wall_s"], c["val_auc"],
                     c.get("checkpoints", "-"), *(phases.get(name, "-") for name in phase_names)])
    return (
        "## Small jobs (issue 12)\n\n"
        "`python -m benchmarks.small`'s cases (see its docstring): a 569-row, 30-feature table, MLP 64-64, batch 32, "
        "60 epochs with validation every epoch; ours on 2 workers × 1 CPU with the job's defaults (one more cold "
        "run on 1 worker × 2 CPUs: the same batches in the same order). Time to first "
        "step counts from the process's spawn; after the first step runs to the end of the run (ours: its summary). "
        f"`orchestrator up` itself took {small['up_s']} s before the warm runs.{when}\n\n"
        + _table(["run", "time to first step s", "after first step s", "process wall s", "val AUC",
                  "checkpoints", *phase_names], rows)
    )


def _misses(r: dict, dates: dict[str, str]) -> str:
    """Each missed target: the ANALYSIS.md section on it and when that was measured, and this run's own
    figures that bear on it."""
    missed = [t for t in targets(r) if not t.passed]
    if not missed:
        return "## Misses\n\nEvery target passed."
    run_day = r["date"][:10]
    sections = []
    for t in missed:
        if t.key not in dates:
            text = f"[ANALYSIS.md](ANALYSIS.md) has no section on `{t.key}` yet."
        else:
            older = f", before this run ({run_day}): check that it still holds" if dates[t.key] < run_day else ""
            text = f"Why: [ANALYSIS.md](ANALYSIS.md), `{t.key}`, measured {dates[t.key]}{older}."
        if t.key in ("reader", "reader10") and "ours_unshuffled" in r["reader"]["1x"]:
            size = "1x" if t.key == "reader" else "10x"
            row = r["reader"][size]
            text += (f"\n\nIn this run at {size[:-1]}×: ours with the shuffle off read "
                     f"{row['ours_unshuffled']['rows_per_s'] / row['raw']['rows_per_s']:.2f}× raw "
                     f"(steady {row['ours_unshuffled']['steady_rows_per_s'] / row['raw']['steady_rows_per_s']:.2f}×); "
                     f"with it on, steady {row['ours']['steady_rows_per_s'] / row['raw']['steady_rows_per_s']:.2f}×.")
        if t.key == "reader":
            text += "\n\n" + _profile_table(r["reader"]["profile_ours_1x"])
        sections.append(f"### {t.what}: MISS, ratio {t.ratio:.3g} (goal {t.goal:g})\n\n{text}")
    return "## Misses\n\n" + "\n\n".join(sections)


def _retries(r: dict) -> str:
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if "retried_after" in node:
                found.append(f"- {path}: {node['retried_after']}")
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)

    walk(r, "")
    if not found:
        return "Every measurement succeeded on its first attempt."
    return ("## Retried measurements\n\nThese failed and were run again; the figures are those of the attempt that succeeded:\n\n"
            + "\n".join(found))


def _profile_table(profile: dict) -> str:
    rows = [[p["function"], p["calls"], p["tottime_s"], p["cumtime_s"]] for p in profile["top"]]
    return (f"cProfile of our reader's second epoch over the 1× data in this run, prefetch off "
            f"(total {profile['total_s']} s), by own time:\n\n"
            + _table(["function", "calls", "own s", "cumulative s"], rows))


def main() -> None:
    """Re-render RESULTS.md from a saved results.json (the figures of one run): python -m benchmarks.report."""
    import argparse
    import json
    import pathlib

    from benchmarks.common import REPO, WORK

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", nargs="?", type=pathlib.Path, default=WORK / "results.json")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "RESULTS.md")
    options = parser.parse_args()
    options.out.write_text(render(json.loads(options.results.read_text())))


if __name__ == "__main__":
    main()
