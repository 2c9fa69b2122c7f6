"""What every benchmark shares: paths, the model, a plain pyarrow reader, Ray start-up, child processes.

Each measurement runs in its own child process (`run_child`), so peak memory
and warm caches never leak from one measurement into the next. A child is a
module with `child_main({case: function})`: it runs one case and writes its
result as JSON, with the child's own peak RSS (VmHWM) added.

The plain pyarrow reader here is the "limit" and the data path of every peer
script that is not Ray Data: whole row groups with column projection,
`to_numpy`, one column-stacked copy, `torch.from_numpy`, and slices of the
batch size (a remainder carried to the next row group).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import warnings
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work"
FEATURES = tuple(f"x{i}" for i in range(32))
LABEL = "y"
BATCH = 1024
RAY_CPUS = 2
HIDDEN = (256, 256)

# Settings a child must not inherit from whoever started the benchmark.
_SCRUBBED_ENV = ("RAY_ADDRESS", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "OMP_NUM_THREADS")

# Labels come from Arrow as a read-only view; nothing writes to them, so torch's warning is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


# -- measuring inside a child -------------------------------------------------------

def proc_status_mb(field: str, pid: int | str = "self") -> float:
    """A memory line of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = now) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def child_main(cases: dict[str, Callable[..., dict]]) -> None:
    """Entry point of a benchmark module run as a child: `python -m benchmarks.X CASE --args J --out F`.

    A case returns its result dict, or None in a process that does not report.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=sorted(cases))
    parser.add_argument("--args", default="{}", help="keyword arguments of the case, as JSON")
    parser.add_argument("--out", required=True, help="where the result JSON goes")
    options = parser.parse_args()
    args = json.loads(options.args)
    if "data" in args:  # Ray workers run elsewhere: they need an absolute path
        args["data"] = str(pathlib.Path(args["data"]).resolve())
    result = cases[options.case](**args)
    if result is None:  # a process that is not the one reporting (torchrun's rank 1)
        return
    result.setdefault("peak_rss_mb", round(proc_status_mb("VmHWM"), 1))
    result["child_end_time"] = time.time()
    pathlib.Path(options.out).write_text(json.dumps(result))


# -- running a child from the parent ---------------------------------------------------

def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without Ray/thread settings, with the repo importable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV and not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # A local Ray the user started with `orchestrator up` is joined only by the cases that ask for one.
    env["ORCHESTRATOR_STATE_DIR"] = str(WORK / "no-local-ray")
    env.update(extra or {})
    return env


def run_child(argv: list[str], out: pathlib.Path, *, env: dict[str, str] | None = None,
              timeout_s: float = 900) -> dict:
    """Run `argv` (which writes its result to `out`) and return the result with the spawn time added.

    `spawn_time` (time.time() just before the process starts) is the zero of
    every "time to first step as the user experiences it".
    """
    out.unlink(missing_ok=True)
    spawn_time = time.time()
    done = subprocess.run(argv, cwd=REPO, env=child_env(env), capture_output=True, text=True, timeout=timeout_s)
    wall_s = time.time() - spawn_time
    out.with_suffix(".log").write_text(done.stdout + done.stderr)  # the child's whole output, for a post-mortem
    if done.returncode != 0 or not out.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
        raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}); see {out.with_suffix('.log')}:\n{tail}")
    result = json.loads(out.read_text())
    result.update(spawn_time=spawn_time, process_wall_s=round(wall_s, 3))
    return result


def module_argv(module: str, case: str, out: pathlib.Path, **args) -> list[str]:
    """The command line that runs `case` of `benchmarks.<module>` as a child."""
    return [sys.executable, "-m", f"benchmarks.{module}", case, "--args", json.dumps(args), "--out", str(out)]


# -- Ray ------------------------------------------------------------------------

def start_ray() -> str:
    """Start a private local Ray (2 CPUs, no dashboard) and name it in RAY_ADDRESS for Ray Train."""
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    return address


def ray_session_dir() -> str | None:
    """The session directory of the Ray this process is connected to (for Ray Train's own logs); None
    before it connects (a run's first records, about its data, come before Ray starts)."""
    import ray

    node = ray._private.worker._global_node  # no public API names the session directory
    return node.get_session_dir_path() if node is not None else None


def ray_train_timeline(session_dir: str) -> dict:
    """From Ray Train's own JSON logs in a session: when its controller first logged, when each worker
    group start began (wall clock), how long each took ("Worker group startup completed in X s"),
    and when each worker launched the train function."""
    def events(pattern: str):
        for log in sorted(pathlib.Path(session_dir, "logs", "train").glob(pattern)):
            for line in log.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                stamp = datetime.datetime.strptime(event["asctime"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                yield stamp, event["message"]

    controller = list(events("ray-train-sys-controller-*.log"))
    workers = list(events("ray-train-sys-worker-*.log"))
    startup = [re.search(r"startup completed in ([0-9.]+)s", m) for _, m in controller]
    return {
        "controller_first_log_time": controller[0][0] if controller else None,
        "group_start_times": [t for t, m in controller if m.startswith("Attempting to start training worker group")],
        "group_startup_s": [float(found.group(1)) for found in startup if found],
        "train_fn_launch_times": sorted(t for t, m in workers if "Launching training function" in m),
    }


# -- the model ------------------------------------------------------------------------

def build_mlp():
    """The benchmark model: MLP 32→256→256→1 with ReLU, identical initial weights everywhere."""
    import torch

    torch.manual_seed(0)
    layers, width = [], len(FEATURES)
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


# -- the plain pyarrow reader -----------------------------------------------------------

def row_groups(files: list[str]) -> list[tuple[str, int, int]]:
    """(file, row-group index, rows) of every row group, in file order."""
    found = []
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        found += [(path, i, metadata.row_group(i).num_rows) for i in range(metadata.num_row_groups)]
    return found


def parquet_files(directory: str | pathlib.Path) -> list[str]:
    return sorted(str(p) for p in pathlib.Path(directory).glob("*.parquet"))


def plain_batches(directory: str, *, batch_rows: int = BATCH, rank: int = 0, world: int = 1,
                  skip_batches: int = 0, memory_map: bool = False) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """(features [batch_rows, 32], labels [batch_rows]) over row groups rank, rank+world, …; full batches only.

    `skip_batches` starts later without reading what it skips (whole row groups are not opened).
    `memory_map` opens files with pyarrow's memory_map=True instead of its default reads.
    """
    import torch

    groups = row_groups(parquet_files(directory))[rank::world]
    skip_rows = skip_batches * batch_rows
    carry_f, carry_l = None, None
    handle, handle_path = None, None  # one open file at a time: an open ParquetFile keeps what it read (peak RSS grew with data)
    for path, index, rows in groups:
        if skip_rows >= rows:
            skip_rows -= rows
            continue
        if handle is None or handle_path != path:
            if handle is not None:
                handle.close()
            handle, handle_path = pq.ParquetFile(path, memory_map=memory_map), path
        table = handle.read_row_group(index, columns=[*FEATURES, LABEL])
        features = np.column_stack([table.column(name).to_numpy() for name in FEATURES])
        labels = table.column(LABEL).to_numpy()
        features, labels, skip_rows = features[skip_rows:], labels[skip_rows:], 0
        if carry_f is not None:
            features, labels = np.concatenate([carry_f, features]), np.concatenate([carry_l, labels])
        full = len(labels) // batch_rows * batch_rows
        tf, tl = torch.from_numpy(features), torch.from_numpy(labels)
        for at in range(0, full, batch_rows):
            yield tf[at:at + batch_rows], tl[at:at + batch_rows]
        carry_f, carry_l = features[full:], labels[full:]
    if handle is not None:
        handle.close()
