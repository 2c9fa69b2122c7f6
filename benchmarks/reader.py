"""Reader throughput and memory: raw pyarrow (the limit), our ShardReader, Ray Data (the peer).

Each case runs in its own child process, reads one full pass over a dataset
in batches of 1024 rows (features and labels as torch tensors) and reports:

- rows/s over the whole pass (from the first read call to the last batch),
- steady rows/s (after the first batch) and the time to the first batch,
- peak RSS of the process (VmHWM) and its RSS before the first read call, so
  that "growth" = peak − before shows what reading itself holds.

raw       `common.plain_batches`: row groups in file order, column projection,
          to_numpy, one column stack, torch.from_numpy, slices of 1024.
raw_mmap  the same with files memory-mapped (pyarrow's memory_map=True), as
          ours maps local files: information, not a target.
ours      `orchestrator.data.reader.ShardReader`, world size 1, batch 1024,
          default lanes (8), shuffle window (8192 rows) and prefetch (0: the
          automatic choice for local files on a CPU), each row group through
          the fitted preprocessing (every column standardized, the default);
          the footer scan (`data.source.scan`) and the statistics pass that
          fits the preprocessing are timed separately.
ours_unshuffled  the same with shuffle_window_rows 1 (row groups permuted, rows
          within lanes in file order): what the in-lane shuffle costs.
raydata   `ray.data.read_parquet(dir).iter_torch_batches(batch_size=1024)` on a
          private 2-CPU Ray; batches are dicts of 33 column tensors (not
          stacked into a matrix, which would cost Ray Data more). Ray's start
          is timed separately. Its decoding runs in Ray worker processes, whose
          memory is not in this process's peak RSS (see `ray_processes_peak_rss_mb`).
profile_ours  cProfile of our reader with prefetch_batches=0: the evidence for a miss.
"""

from __future__ import annotations

import glob
import os
import pathlib
import time

from benchmarks.common import (
    BATCH,
    LABEL,
    child_main,
    plain_batches,
    proc_status_mb,
    start_ray,
)


def _timed_pass(batches) -> dict:
    """Drain an iterator of batches; rows are counted from each batch's leading dimension."""
    before_mb = proc_status_mb("VmRSS")
    started = time.perf_counter()
    first = None
    rows = 0
    for batch in batches:
        rows += _rows(batch)
        if first is None:
            first = time.perf_counter()
    ended = time.perf_counter()
    elapsed = ended - started
    return {
        "rows": rows,
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(rows / elapsed),
        "first_batch_s": round(first - started, 3),
        "steady_rows_per_s": round((rows - BATCH) / max(ended - first, 1e-9)),
        "rss_before_mb": round(before_mb, 1),
        "peak_rss_mb": round(proc_status_mb("VmHWM"), 1),
    }


def _rows(batch) -> int:
    if isinstance(batch, dict):
        return int(batch[LABEL].shape[0])
    if isinstance(batch, tuple):
        return int(batch[1].shape[0])
    return len(batch)


def raw(data: str) -> dict:
    import torch  # noqa: F401  (imported before the baseline RSS, as in the other cases)

    return _timed_pass(plain_batches(data))


def raw_mmap(data: str) -> dict:
    import torch  # noqa: F401  (imported before the baseline RSS, as in the other cases)

    return _timed_pass(plain_batches(data, memory_map=True))


def ours_unshuffled(data: str) -> dict:
    return ours(data, window_rows=1)


def ours(data: str, window_rows: int = 8192) -> dict:
    from orchestrator.data import source
    from orchestrator.data.plan import Layout
    from orchestrator.data.reader import EndOfEpoch, ShardReader

    started = time.perf_counter()
    index = source.scan(data, LABEL)
    scan_s = time.perf_counter() - started
    started = time.perf_counter()
    pre = _fitted(index)
    fit_s = time.perf_counter() - started
    reader = ShardReader(index, Layout(seed=0, batch_size=BATCH, lanes=8, window_rows=window_rows), pre,
                         world_size=1, rank=0)

    def batches():
        while True:
            try:
                yield reader.next_batch()
            except EndOfEpoch:
                return

    result = _timed_pass(batches())
    reader.close()
    return {**result, "scan_s": round(scan_s, 3), "fit_s": round(fit_s, 3)}


def _fitted(index):
    """The preprocessing a run fits (every column standardized, the default), on one process."""
    from orchestrator.data.reader import fit_in_process

    return fit_in_process(index, 0.0)


def raydata(data: str) -> dict:
    started = time.perf_counter()
    start_ray()
    import ray

    ray_start_s = time.perf_counter() - started
    result = _timed_pass(_ray_data_batches(data))
    result["ray_processes_peak_rss_mb"] = _ray_processes_peak_rss_mb()
    ray.shutdown()
    return {**result, "ray_start_s": round(ray_start_s, 3)}


def _ray_data_batches(data: str):
    """The peer as a user writes it; read_parquet (file listing) counts toward the first batch."""
    import ray

    yield from ray.data.read_parquet(data).iter_torch_batches(batch_size=BATCH)


def _ray_processes_peak_rss_mb() -> float:
    """Sum of each descendant process's peak RSS (gcs, raylet, Ray workers): an upper bound, as
    peaks differ in time and shared object-store pages count in every process that maps them."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    total, stack = 0.0, list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            total += proc_status_mb("VmHWM", pid)
        except (OSError, KeyError):
            continue
    return round(total, 1)


def profile_ours(data: str, top: int = 8) -> dict:
    """cProfile of our reader's second epoch, without its prefetch thread (so the profiler sees the work)."""
    import cProfile
    import pstats

    from orchestrator.data import source
    from orchestrator.data.plan import Layout
    from orchestrator.data.reader import EndOfEpoch, ShardReader

    index = source.scan(data, LABEL)
    reader = ShardReader(index, Layout(seed=0, batch_size=BATCH, lanes=8, window_rows=8192), _fitted(index),
                         world_size=1, rank=0, prefetch_batches=0)

    def one_epoch() -> None:
        try:
            while True:
                reader.next_batch()
        except EndOfEpoch:
            pass

    one_epoch()  # warm-up: first-call imports and allocations stay out of the profile
    profiler = cProfile.Profile()
    profiler.enable()
    one_epoch()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return {"total_s": round(total, 3), "top": [
        {"function": f"{pathlib.Path(file).name}:{line}({name})", "calls": calls, "tottime_s": round(tottime, 3),
         "cumtime_s": round(cumtime, 3)} for (file, line, name), (_, calls, tottime, cumtime, _) in rows]}


if __name__ == "__main__":
    child_main({"raw": raw, "raw_mmap": raw_mmap, "ours": ours, "ours_unshuffled": ours_unshuffled,
                "raydata": raydata, "profile_ours": profile_ours})
