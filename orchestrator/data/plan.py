"""Pure shard arithmetic: which rows each rank trains on, batch by batch.

Owns the order of an epoch and its split over ranks, and nothing that touches
files. The reader asks this module *which* rows to read; it never decides.

The epoch, as a function of (seed, epoch) only:

1. Rows are held out for validation per row group, deterministically from the
   row group's first row id (the same rows in every epoch and every run).
2. Row groups are permuted with a generator seeded by (seed, epoch); their
   training rows, concatenated in that order, form the epoch's *stream*.
3. The stream is cut into `lanes` contiguous pieces. Global batch `b` takes
   the `b`-th chunk of `lane_rows[l]` rows from each lane `l`; the chunk sizes
   add up to the global batch. Each lane is shuffled within windows of
   `window_rows` rows, seeded by (seed, epoch, lane, window).
4. Ranks own contiguous runs of lanes. A rank reads only its lanes, so only
   the row groups under them.

Because lanes do not depend on the world size, the *set* of rows in global
batch `b` is the same for 1, 2 or 4 workers, and the cursor (epoch, batch)
says exactly what comes next at any world size: an elastic resize or a resume
at another size just hands the remaining batches of each lane to a new owner.
Every rank takes one chunk per lane it owns for every global batch, so every
rank runs the same number of steps per epoch; at most `batch_size - 1` rows
of an epoch are dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from orchestrator.data.index import DatasetIndex
from orchestrator.errors import DataError

# Fixed salt so the held-out rows depend on the data alone, not on train.seed:
# runs with different seeds are compared on the same validation rows.
_HOLDOUT_SALT = 0x5EED_0F_DA7A


@dataclass(frozen=True)
class Cursor:
    """Where training stands in the data: the next global batch of an epoch."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_dict(cls, raw: dict) -> "Cursor":
        return cls(epoch=int(raw["epoch"]), batch=int(raw["batch"]))


def holdout_count(num_rows: int, fraction: float) -> int:
    """How many of a row group's `num_rows` rows are held out for validation."""
    return int(round(num_rows * fraction)) if fraction else 0


def holdout_rows(first_row: int, num_rows: int, fraction: float) -> np.ndarray:
    """Sorted local indices of the rows of one row group held out for validation."""
    k = holdout_count(num_rows, fraction)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng([_HOLDOUT_SALT, first_row])
    return np.sort(rng.choice(num_rows, size=k, replace=False)).astype(np.int64)


def train_rows(first_row: int, num_rows: int, fraction: float) -> np.ndarray:
    """Sorted local indices of the rows of one row group used for training."""
    keep = np.ones(num_rows, dtype=bool)
    keep[holdout_rows(first_row, num_rows, fraction)] = False
    return np.flatnonzero(keep).astype(np.int64)


def lane_rows(batch_size: int, lanes: int) -> tuple[int, ...]:
    """Rows each lane gives to every global batch; they sum to `batch_size`."""
    base, extra = divmod(batch_size, lanes)
    return tuple(base + (1 if lane < extra else 0) for lane in range(lanes))


def owned_lanes(lanes: int, world_size: int, rank: int) -> range:
    """The contiguous run of lanes rank `rank` of `world_size` reads."""
    if not 0 <= rank < world_size <= lanes:
        raise ValueError(f"rank {rank} of world size {world_size} with {lanes} lanes")
    return range(rank * lanes // world_size, (rank + 1) * lanes // world_size)


def rank_batch_rows(batch_size: int, lanes: int, world_size: int, rank: int) -> int:
    """Rows rank `rank` contributes to every global batch."""
    sizes = lane_rows(batch_size, lanes)
    return sum(sizes[lane] for lane in owned_lanes(lanes, world_size, rank))


@dataclass(frozen=True)
class EpochPlan:
    """The layout of one epoch's training rows, independent of the world size."""

    epoch: int
    seed: int
    batch_size: int
    window_rows: int
    order: np.ndarray  # row-group positions in the index, in stream order
    counts: np.ndarray  # training rows of each row group in `order`
    lane_sizes: tuple[int, ...]  # rows each lane gives to one global batch

    @cached_property
    def starts(self) -> np.ndarray:
        """Stream position of the first training row of each row group in `order`."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def stream_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def batches(self) -> int:
        """Global batches in this epoch (every rank takes exactly this many steps)."""
        return self.stream_rows // self.batch_size

    @property
    def dropped(self) -> int:
        """Training rows of the epoch no batch takes (fewer than one global batch)."""
        return self.stream_rows - self.batches * self.batch_size

    def lane_start(self, lane: int) -> int:
        """Stream position where `lane` begins."""
        return self.batches * sum(self.lane_sizes[:lane])

    def lane_length(self, lane: int) -> int:
        return self.batches * self.lane_sizes[lane]

    def window_permutation(self, lane: int, window: int) -> np.ndarray:
        """The shuffle of one window of a lane: shuffled position → lane offset in the window."""
        length = self.lane_length(lane)
        size = min(self.window_rows, length - window * self.window_rows)
        rng = np.random.default_rng([self.seed, self.epoch, lane, window])
        return rng.permutation(size).astype(np.int64)

    def chunk_positions(self, lane: int, batch: int) -> np.ndarray:
        """Stream positions of the rows `lane` gives to global batch `batch`, in batch order."""
        size = self.lane_sizes[lane]
        first, stop = batch * size, (batch + 1) * size
        parts = []
        while first < stop:
            window, offset = divmod(first, self.window_rows)
            perm = self.window_permutation(lane, window)
            take = min(stop - first, len(perm) - offset)
            parts.append(window * self.window_rows + perm[offset : offset + take])
            first += take
        positions = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return positions + self.lane_start(lane)

    def window_span(self, lane: int, batch: int) -> tuple[int, int]:
        """Stream range [lo, hi) of every shuffle window the chunk of (`lane`, `batch`) draws from."""
        size = self.lane_sizes[lane]
        first_window = batch * size // self.window_rows
        last_window = max((batch + 1) * size - 1, 0) // self.window_rows
        lo = first_window * self.window_rows
        hi = min((last_window + 1) * self.window_rows, self.lane_length(lane))
        return self.lane_start(lane) + lo, self.lane_start(lane) + hi

    def slots_in(self, lo: int, hi: int) -> tuple[int, int]:
        """The range [first, stop) of slots in `order` whose training rows overlap stream range [lo, hi)."""
        if hi <= lo:
            return 0, 0
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        last = int(np.searchsorted(self.starts, hi - 1, side="right")) - 1
        return first, last + 1

    def groups_in(self, lo: int, hi: int) -> np.ndarray:
        """Row-group positions in the index whose training rows overlap stream range [lo, hi)."""
        return self.order[slice(*self.slots_in(lo, hi))]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map stream positions to (row-group position in the index, training-row offset)."""
        slot = np.searchsorted(self.starts, positions, side="right") - 1
        return self.order[slot], positions - self.starts[slot]


@dataclass(frozen=True)
class Layout:
    """What fixes the order of every epoch, read from a job once (`for_job`)."""

    seed: int
    batch_size: int  # global rows per optimizer step
    lanes: int
    window_rows: int  # rows shuffled together within a lane
    holdout_fraction: float = 0.0  # rows of each row group held out for validation

    @classmethod
    def for_job(cls, job) -> "Layout":
        """The layout of a resolved `JobSpec` (its data.lanes resolved; validation a fraction or a path)."""
        validation = job.data.validation
        return cls(
            seed=job.train.seed,
            batch_size=job.train.batch_size,
            lanes=job.data.lanes,
            window_rows=job.data.shuffle_window_rows,
            holdout_fraction=validation if isinstance(validation, float) else 0.0,
        )

    def plan(self, index: DatasetIndex, epoch: int) -> "EpochPlan":
        """`plan_epoch` of `index` for `epoch` under this layout."""
        return plan_epoch(index, epoch=epoch, **dataclasses.asdict(self))


def plan_epoch(
    index: DatasetIndex,
    *,
    seed: int,
    epoch: int,
    batch_size: int,
    lanes: int,
    window_rows: int,
    holdout_fraction: float = 0.0,
) -> EpochPlan:
    """Lay out epoch `epoch`: a pure function of its arguments, never of the world size.

    Raises DataError when the training rows do not fill one global batch.
    """
    if batch_size < lanes:
        raise ValueError(f"batch_size {batch_size} is smaller than lanes {lanes}")
    counts = np.array(
        [rg.num_rows - holdout_count(rg.num_rows, holdout_fraction) for rg in index.row_groups],
        dtype=np.int64,
    )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(counts)).astype(np.int64)
    plan = EpochPlan(
        epoch=epoch,
        seed=seed,
        batch_size=batch_size,
        window_rows=window_rows,
        order=order,
        counts=counts[order],
        lane_sizes=lane_rows(batch_size, lanes),
    )
    if plan.batches == 0:
        held = f" after holding out {holdout_fraction:g} for validation" if holdout_fraction else ""
        raise DataError(
            f"{index.url} has {plan.stream_rows} training rows{held}, fewer than one global "
            f"batch (train.batch_size = {batch_size}). Lower train.batch_size or add data."
        )
    return plan


def contiguous_share(row_groups: int, world_size: int, rank: int) -> range:
    """The positions of the row groups rank `rank` reads whole, in a contiguous run: the statistics
    pass (every model) and a tree model's training matrix. The shares of all ranks cover each once."""
    return range(row_groups * rank // world_size, row_groups * (rank + 1) // world_size)


def validation_share(total_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """The [start, stop) range of validation rows rank `rank` evaluates; shares cover all rows once."""
    return total_rows * rank // world_size, total_rows * (rank + 1) // world_size
