"""Why a benchmark target is missed: the evidence, as text keyed by the target's key in `report.targets`.

Written from profiles and experiments on this machine (dated in each text); `report.render` puts a
missed target's text under "Diagnosis of the misses". A text is revised when the code it explains changes.
"""

from __future__ import annotations

# Why a target is missed, from profiles taken on this machine on 2026-11-21 (py-spy 0.4.3 on the Ray
# worker, cProfile, and small experiments named in each text); see benchmarks/README.md for how.
_READER = (
    "Ours decodes exactly as raw does (read_row_group with the same column projection, to_numpy, one [rows, 32] "
    "copy per row group), and with its in-lane shuffle off (the 'shuffle_window_rows 1' row) it reads as fast "
    "as raw. The gap is the shuffle, which raw does not do: for every 8,192-row window of a lane, one "
    "permutation (numpy's Generator seeded by (seed, epoch, lane, window), ~90 µs) and a random gather of the "
    "window's rows (np.take of features, labels and ids, ~125 µs). In cProfile over the 10× data on 2026-11-21 "
    "these were 0.56 s of a 2.86 s pass (window_permutation 0.235 s, take 0.321 s; read_row_group 1.12 s and "
    "the column copy 0.65 s, as in raw), i.e. ~27 ns per row added to raw's ~95 ns. Batches themselves cost "
    "almost nothing: a block of 64 batches is assembled with one strided copy per lane and each batch is a "
    "view of it. At 1× the pass is half a second, so the first batch weighs more: it needs a window in each of "
    "the 8 lanes (8 row groups decoded, where raw decodes one); the steady rows/s columns compare without it. "
    "The shuffle is the price of a seeded, world-size-independent sample order; data written pre-shuffled can "
    "turn it off (`data.shuffle_window_rows: 1`) and read at raw's speed. History: 0.23× raw (a window "
    "permutation regenerated per batch and lane), 0.44× (each window gathered once, 1889135), then blocks of "
    "batches as views, np.take from stream-order slices of row groups, row groups memory-mapped one at a time."
)
_E2E = (
    "Experiments on 2026-11-21, each a separate process on this machine: (1) Ray Train's worker itself costs "
    "~8%: the plain loop's code on a fixed batch (no reader) trained at 301-316 K samples/s inside a "
    "TorchTrainer worker (1 × 2 CPUs) against 330-346 K in a plain process, whatever the controller's poll "
    "interval (0.5 s or Ray's 2 s). (2) Ours's reader is not the gap: in a plain process the plain loop fed by "
    "`ShardReader` (shuffled) trained at 329-383 K samples/s against 322-334 K fed by the raw reader, in the "
    "main thread or another thread. (3) Ours's loop adds ~50 µs a step (gradient-norm check for non-finite "
    "gradients, reseed, loss bookkeeping: ~2%). So ours can reach ~0.9× at best inside Ray Train here. (4) "
    "The rest is this shared machine's noise, larger than the margin: the same TorchTrainer run measured "
    "277-355 K samples/s back to back, and the plain loop ran at 291-400 K across today's runs (rounds listed "
    "above; in separate series ours-1w ran at 0.84-1.01× the plain loop per round). Changed on 2026-11-21: the "
    "prefetch thread no longer runs on CPU workers reading local files (with torch's 2 OpenMP threads on both "
    "cores it preempted one of them in every parallel region: 0.77× with it, ~0.92× without), batches are "
    "views of blocks, and losses are summed inside torch (reduction='sum', ~5% of this MLP's step)."
)
_E2E2 = (
    "py-spy on rank 0 (2 workers × 1 CPU): forward + backward (with DDP's all-reduce) + AdamW take ~88% of "
    "the training thread; the inline reader, the gradient-norm check (non-finite detection) and `_reseed` "
    "the rest. torchrun's processes run nothing but the step and a reader that does not shuffle. On this "
    "shared machine both move by 10-25% from round to round (rounds listed above); in separate series today "
    "ours-2w ran at 0.86-1.21× torchrun per round, 0.97× by median."
)
_TTFS = (
    "Columns (a)-(d) of the end-to-end table split the time to first step. Ray's fixed start — (a) `ray.init` "
    "(2.5-3.3 s here) plus Ray Train's controller actor, 5-6.5 s in today's runs, and (b) the worker group "
    "startup, 2.2-5 s "
    "(new worker processes each import torch + ray.train.torch, ~2.1 s of imports on this machine, then the "
    "process group) — is ~80% of ours's time and the peer pays it too. Ours gains only the peer's Ray Data "
    "start-up before its first batch ((d): ~4 s vs ~0.2 s). A ratio ≤ 0.5 means ≤ half the peer's time, "
    "which is less than (a) + (b) alone on this machine: not reachable while every run starts an embedded Ray "
    "and a Ray Train worker group. Closing it needs a Ray that is already running (joining RAY_ADDRESS removes "
    "`ray.init` from (a)) or lighter worker imports; with 2 workers on 2 cores (b) grows (two processes import "
    "at once). Tried on 2026-11-21 and dropped: warming Ray's idle workers with a task that imports torch "
    "before the group starts, since Ray starts actors (Ray Train's workers) in fresh processes, not in idle "
    "workers that ran tasks (measured: the actors' pids differed and their imports took as long)."
)
_RECOVERY = (
    "The recovery table splits each recovery. Ray Train restarts the whole worker group in new processes after "
    "any worker dies, and that restart ('group startup', 2.9-5 s in today's runs: two processes importing torch "
    "and ray.train.torch at once on 2 cores, then the process group) is 60-80% of the recovery for both. Detection "
    "is where ours can gain: its controller poll is 0.5 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) against Ray's "
    "default 2 s, so ours detects in ≤ 0.5 s while the plain script takes 0.1-2 s depending on when the kill "
    "falls in its poll. Restore + first step take ~1-1.5 s in both (ours verifies checksums and builds its "
    "reader). So ≤ 0.5× is not reachable while recovery is a Ray Train group restart; it would need workers "
    "that survive a peer's death (restarting only the dead rank), which Ray Train V2 does not do. Where ours "
    "does win is the work it keeps: 0 steps lost against 50 per kill for the plain script, which resumed from "
    "the checkpoint before the one it had just reported, or from scratch (Ray registers a report only at its "
    "controller's next poll)."
)
_STALL = (
    "A reporting step costs ours several milliseconds on top of a median step of ~5 ms (table above). "
    "`ray.train.report` itself takes ~3.7 ms of the training thread even in ASYNC mode (plain ASYNC: 'report "
    "call alone' ≈ 4.2 ms, of which torch.save ≈ 0.6 ms): before handing the upload to its thread it "
    "synchronizes the checkpoint's directory name across ranks through Ray. Ours adds `checkpoint.save` "
    "(~1.6 ms measured outside Ray: two torch.save, a sha256 of each file, the manifest, the metrics history as "
    "Parquet) and copying state dicts, and its uploader thread then runs during the next steps on the same 2 "
    "cores. A per-step stall ≤ 5% would need the whole report to cost ≤ ~0.25 ms, a fifteenth of "
    "`ray.train.report` alone: not reachable while every checkpoint goes through `ray.train.report` on the "
    "training thread and a step takes 5 ms. Amortized over the 50-step interval, checkpoints cost ours about as "
    "much as Ray's own ASYNC upload and ~30× less than SYNC, whose report waits for the controller's next poll "
    "(~250-320 ms per report); the amortized figure is at the 5% line and moves across it from round to round "
    "(rounds listed above). Ours's median step is longer than plain's because `log_every_n_steps: 1` (needed "
    "to time single steps) makes every step a log point, and each log point calls "
    "`ray.train.get_preemption_info` (a barrier: 11% of the training thread in py-spy). Checkpointing less "
    "often than every 50 × 5 ms = 0.25 s lowers the amortized cost proportionally."
)
# Misses whose text refers to another's ("see above"): used in full when that other one passed.
SEE_ABOVE = {"reader10": "reader", "ttfs2": "ttfs", "stall_amortized": "stall"}
DIAGNOSES: dict[str, str] = {
    "reader": _READER,
    "reader10": "See the 1× reader miss above: the same causes.",
    "e2e1": _E2E,
    "e2e2": _E2E2,
    "ttfs": _TTFS,
    "ttfs2": "See the 1-worker time to first step above; (b) is longer with 2 worker processes starting on 2 cores.",
    "recovery": _RECOVERY,
    "stall": _STALL,
    "stall_amortized": "See the per-reporting-step stall above.",
}
