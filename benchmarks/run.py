"""Run every benchmark side by side on the same generated data and write benchmarks/RESULTS.md.

    python -m benchmarks.run            # the full run (about 12 minutes on 2 cores)
    python -m benchmarks.run --quick    # tiny data: checks that everything runs

Every measurement is a child process (see common.run_child), run one after
another so none competes with another for the CPUs. Order:

1. data: 1× and 10× datasets (benchmarks/data.py), written once and reused;
2. reader (reader.py): raw pyarrow (plain and memory-mapped), ours (shuffled and
   not), Ray Data at 1× and 10×, each after
   a pass that warms the page cache with that dataset; a cProfile of ours;
3. end to end (e2e.py): plain loop, Ray Train + Ray Data, torchrun 2 procs,
   ours 1 and 2 workers, one epoch of the 1× data; 3 interleaved rounds, medians;
4. recovery (recovery.py): ours vs plain Ray Train, two kills each;
5. checkpoint stall (stall.py): ours (ASYNC) vs plain SYNC (and plain ASYNC);
   3 interleaved rounds, medians;
6. typed tables (tables.py): ours (shipped job, and TabM) vs LightGBM and a
   standardized linear model on the same split, the statistics pass, samples/s
   with embeddings vs numeric columns only;
7. trees (trees.py): ours (XGBoost and LightGBM, 1 and 2 workers) vs the same
   library in one plain process: rows/s, memory above the data-free RSS, val R²;
8. sweeps (sweeps.py): `orchestrator tune` vs a hand-written Ray Tune + Ray
   Train V2 script, the same 8-trial space with ASHA: wall time, best val_loss,
   trials stopped early;
9. small jobs (small.py): a 569-row table, 60 epochs: a plain torch script vs
   ours cold and ours warm (joining `orchestrator up`): time to first step,
   time after it, shutdown.

`--only sweeps` (or any section) measures that section alone and merges it into
the last full run's results.json before writing the report.

The raw figures go to benchmarks/.work/results.json, the report to
benchmarks/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import statistics
import sys
import time

from benchmarks import data, report
from benchmarks.common import RAY_CPUS, REPO, WORK, module_argv, run_child

READERS = ("raw", "raw_mmap", "ours", "ours_unshuffled", "raydata")


def measure_readers(datasets: dict[str, pathlib.Path], repeats: int) -> dict:
    """{size: {reader: result}}; all but Ray Data keep the run with the median rows/s of `repeats`."""
    results: dict[str, dict] = {}
    for size, directory in datasets.items():
        data.warm_page_cache(directory)
        results[size] = {}
        for reader in READERS:
            times = 1 if reader == "raydata" else repeats
            runs = [_child("reader", reader, f"reader-{reader}-{size}", data=str(directory)) for _ in range(times)]
            runs.sort(key=lambda r: r["rows_per_s"])
            results[size][reader] = {**runs[len(runs) // 2], "runs_rows_per_s": [r["rows_per_s"] for r in runs]}
    results["profile_ours_1x"] = _child("reader", "profile_ours", "reader-profile", data=str(datasets["1x"]))
    return results


E2E_RUNS = ("plain_loop", "ray_data_train", "torchrun_2p", "ours_1w", "ours_2w")
STALL_RUNS = ("ours", "plain_sync", "plain_async")


def measure_e2e(directory: pathlib.Path, repeats: int) -> dict:
    """{run: figures}, `repeats` interleaved rounds: samples/s and time to first step are medians over rounds."""
    rounds = []
    for _ in range(repeats):
        results = {
            "plain_loop": _child("e2e", "plain_loop", "e2e-plain", data=str(directory)),
            "ray_data_train": _child("e2e", "ray_data_train", "e2e-raydata", data=str(directory)),
            "torchrun_2p": _torchrun(directory),
            "ours_1w": _child("e2e", "ours", "e2e-ours-1w", data=str(directory), workers=1),
            "ours_2w": _child("e2e", "ours", "e2e-ours-2w", data=str(directory), workers=2),
        }
        for result in results.values():
            result["time_to_first_step_s"] = round(result["first_step_time"] - result["spawn_time"], 3)
        rounds.append(results)
    return {name: _medians([r[name] for r in rounds], ("samples_per_s", "time_to_first_step_s")) for name in E2E_RUNS}


def measure_recovery(directory: pathlib.Path) -> dict:
    return {name: _child("recovery", name, f"recovery-{name}", data=str(directory)) for name in ("ours", "plain")}


def measure_stall(directory: pathlib.Path, repeats: int) -> dict:
    """{run: figures}, `repeats` interleaved rounds; every figure is its median over rounds."""
    rounds = [{name: _child("stall", name, f"stall-{name}", data=str(directory)) for name in STALL_RUNS}
              for _ in range(repeats)]
    figures = ("median_step_ms", "report_step_ms", "report_call_ms", "report_stall", "amortized_stall")
    return {name: _medians([r[name] for r in rounds], figures) for name in STALL_RUNS}


def measure_tables(size: str) -> dict:
    """{table: {case: result}} for benchmarks/tables.py (one run each: the metrics are deterministic)."""
    from benchmarks import tables

    results: dict[str, dict] = {}
    for table in ("churn", "unscaled"):
        data = str(tables.ensure(table, size))
        results[table] = {
            "ours": _child("tables", "ours", f"tables-ours-{table}", table=table, data=data),
            "lightgbm": _child("tables", "lightgbm", f"tables-lightgbm-{table}", table=table, data=data),
            "linear": _child("tables", "linear", f"tables-linear-{table}", table=table, data=data),
        }
    churn = str(tables.ensure("churn", size))
    results["churn"]["ours_tabm"] = _child("tables", "ours", "tables-ours-churn-tabm", table="churn", data=churn,
                                           model={"kind": "tabm"})
    results["churn"]["ours_numeric"] = _child("tables", "ours", "tables-ours-churn-numeric", table="churn",
                                              data=churn, features=["income", "age"])
    results["churn"]["truth"] = _child("tables", "truth", "tables-truth-churn", data=churn)
    return results


def measure_trees(size: str) -> dict:
    """{library: {case: result}} for benchmarks/trees.py (one run each)."""
    from benchmarks import trees

    train, validation = (str(path) for path in trees.ensure(size))
    paths = {"train": train, "validation": validation, "size": size}
    return {kind: {
        "plain": _child("trees", "plain", f"trees-plain-{kind}", kind=kind, **paths),
        "ours_1w": _child("trees", "ours", f"trees-ours-{kind}-1w", kind=kind, workers=1, **paths),
        "ours_2w": _child("trees", "ours", f"trees-ours-{kind}-2w", kind=kind, workers=2, **paths),
    } for kind in ("xgboost", "lightgbm")}


def measure_sweeps(size: str) -> dict:
    """{case: result} for benchmarks/sweeps.py: ours and the hand-written Tune + Train V2 script."""
    from benchmarks import sweeps

    data = str(sweeps.ensure(size))
    return {case: _child("sweeps", case, f"sweeps-{case}", data=data, size=size) for case in ("handwritten", "ours")}


def measure_small(size: str) -> dict:
    """{case: result} for benchmarks/small.py: the plain script, ours cold, and ours warm (two runs joining
    a local Ray that `orchestrator up` started here, stopped afterwards on every path)."""
    import tempfile

    from benchmarks import small
    from orchestrator.driver import local_ray

    data = small.ensure()
    results = {
        "plain": _child("small", "plain", "small-plain", data=data),
        "ours_cold": _child("small", "ours", "small-ours-cold", data=data, name="small-cold"),
        "ours_cold_1w": _child("small", "ours", "small-ours-cold-1w", data=data, name="small-cold-1w", workers=1),
    }
    state = tempfile.mkdtemp(prefix="orc-bench-state-")
    warm_env = {"ORCHESTRATOR_STATE_DIR": state}
    previous = os.environ.get("ORCHESTRATOR_STATE_DIR")
    os.environ["ORCHESTRATOR_STATE_DIR"] = state
    try:
        up_started = time.time()
        local_ray.start(RAY_CPUS)
        results["up_s"] = round(time.time() - up_started, 2)
        for run in (1, 2):
            results[f"ours_warm_{run}"] = _child("small", "ours", f"small-ours-warm-{run}", env=warm_env,
                                                 data=data, name=f"small-warm-{run}")
    finally:
        local_ray.stop()
        if previous is None:
            os.environ.pop("ORCHESTRATOR_STATE_DIR", None)
        else:
            os.environ["ORCHESTRATOR_STATE_DIR"] = previous
    for result in results.values():
        if isinstance(result, dict):
            result["time_to_first_step_s"] = round(result["first_step_time"] - result["spawn_time"], 3)
    return results


def _medians(runs: list[dict], keys: tuple[str, ...]) -> dict:
    """The run with the median `keys[0]`, each of `keys` replaced by its median over runs (every run's value
    kept under "runs"); "ttfs_run" is the run with the median time to first step, for its breakdown."""
    def median_run(key: str) -> dict:
        return sorted(runs, key=lambda run: run[key])[len(runs) // 2]

    chosen = dict(median_run(keys[0]))
    present = [key for key in keys if key in chosen]
    chosen.update({key: statistics.median(run[key] for run in runs) for key in present})
    chosen["runs"] = {key: [run[key] for run in runs] for key in present}
    if "time_to_first_step_s" in present:
        chosen["ttfs_run"] = median_run("time_to_first_step_s")
    return chosen


def _child(module: str, case: str, label: str, env: dict[str, str] | None = None, **args) -> dict:
    out = WORK / "out" / f"{label}.json"
    return _run(label, module_argv(module, case, out, **args), out, env=env)


def _torchrun(directory: pathlib.Path) -> dict:
    out = WORK / "out" / "e2e-torchrun.json"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *module_argv("e2e", "torchrun_worker", out, data=str(directory))[1:]]
    return _run("e2e-torchrun", argv, out)


def _run(label: str, argv: list[str], out: pathlib.Path, attempts: int = 3, env: dict[str, str] | None = None) -> dict:
    """One measurement; a failed one is retried (up to `attempts` in all) and its failures kept in the results."""
    print(f"  {label} …", end="", flush=True)
    failures = []
    while True:
        try:
            result = run_child(argv, out, env=env)
            break
        except RuntimeError as error:
            failures.append(str(error).splitlines()[0])
            if len(failures) == attempts:
                raise
            print(" failed, retrying …", end="", flush=True)
    if failures:
        result["retried_after"] = " | ".join(failures)
    print(f" {result['process_wall_s']:.1f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, to check that everything runs")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="the report (default benchmarks/RESULTS.md; "
                        "--quick writes benchmarks/.work/RESULTS-quick.md)")
    parser.add_argument("--only", choices=SECTIONS, help="measure this section alone, merged into the last "
                        "run's results.json")
    options = parser.parse_args(argv)
    out = options.out or (WORK / "RESULTS-quick.md" if options.quick else REPO / "benchmarks" / "RESULTS.md")
    (WORK / "out").mkdir(parents=True, exist_ok=True)
    if options.only:
        _only(options.only, options.quick, out)
        return
    started = time.time()
    prefix = "quick-" if options.quick else ""
    layouts = data.layouts(options.quick)
    print("data …", flush=True)
    datasets = {size: data.ensure(prefix + size, layout) for size, layout in layouts.items()}
    results = {
        "command": "python -m benchmarks.run" + (" --quick" if options.quick else ""),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": report.machine(),
        "layouts": {size: layout.describe() for size, layout in layouts.items()},
        "data_s": round(time.time() - started, 1),
    }
    print("reader …", flush=True)
    results["reader"] = measure_readers(datasets, repeats=3)
    print("end to end …", flush=True)
    results["e2e"] = measure_e2e(datasets["1x"], repeats=3)
    print("recovery …", flush=True)
    results["recovery"] = measure_recovery(datasets["1x"])
    print("stall …", flush=True)
    results["stall"] = measure_stall(datasets["1x"], repeats=3)
    print("tables …", flush=True)
    results["tables"] = measure_tables("quick" if options.quick else "full")
    print("trees …", flush=True)
    results["trees"] = measure_trees("quick" if options.quick else "full")
    print("sweeps …", flush=True)
    results["sweeps"] = measure_sweeps("quick" if options.quick else "full")
    print("small jobs …", flush=True)
    results["small"] = measure_small("quick" if options.quick else "full")
    results["total_s"] = round(time.time() - started, 1)
    (WORK / ("results-quick.json" if options.quick else "results.json")).write_text(json.dumps(results, indent=2))
    out.write_text(report.render(results))
    print(f"wrote {out} in {results['total_s']:.0f} s ({shlex.join(sys.argv)})")


SECTIONS = ("tables", "trees", "sweeps", "small")  # the sections --only can measure alone


def _only(section: str, quick: bool, out: pathlib.Path) -> None:
    """Measure `section` alone and merge it into the last run's results (its own date kept apart)."""
    path = WORK / ("results-quick.json" if quick else "results.json")
    results = json.loads(path.read_text())
    size = "quick" if quick else "full"
    print(f"{section} …", flush=True)
    results[section] = {"tables": measure_tables, "trees": measure_trees, "sweeps": measure_sweeps,
                        "small": measure_small}[section](size)
    results.setdefault("sections_measured", {})[section] = datetime.datetime.now().astimezone().isoformat(
        timespec="seconds")
    path.write_text(json.dumps(results, indent=2))
    out.write_text(report.render(results))
    print(f"wrote {out} ({section} measured now, the rest from {results['date']})")


if __name__ == "__main__":
    main()
