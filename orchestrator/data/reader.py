"""Reading one rank's rows: Parquet row groups → numpy → torch, with prefetch.

Owns I/O and decoding for the rows `plan` assigns to a rank: it opens each
file once, reads whole row groups with column projection (only the job's
feature and label columns), keeps only the row groups the current shuffle
windows still need, and gathers each batch straight into one preallocated
tensor. A background thread keeps up to `prefetch_batches` batches ready so
reading and decoding overlap with compute.

It knows nothing of DDP or checkpoints: the loop asks for the next batch,
and `state()` / `restore()` carry the cursor that checkpoints store.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator import settings, storage
from orchestrator.data import plan as planning
from orchestrator.data.plan import Cursor, EpochPlan
from orchestrator.data.source import DatasetIndex

_OPEN_FILES = 8  # Parquet files kept open per reader (footers parsed once per file)


class EndOfEpoch(Exception):
    """The current epoch has no more batches; the cursor now points at the next epoch."""


@dataclass(frozen=True)
class Batch:
    """One rank's rows of one global batch."""

    features: torch.Tensor  # [rows, features] float32
    labels: torch.Tensor  # [rows] float32 or int64
    ids: torch.Tensor  # [rows] int64 global row ids (for audits of the sample order)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class _Decoded:
    features: np.ndarray  # [rows, features] float32, rows = the kept rows of the row group
    labels: np.ndarray
    ids: np.ndarray


class RowGroupSource:
    """Reads and decodes row groups of one dataset; one open handle per recent file."""

    def __init__(self, index: DatasetIndex, label_dtype: str):
        self.index = index
        self.columns = [*index.features, index.label]
        self.label_dtype = np.dtype(label_dtype)
        self._local = storage.is_local(index.url)
        self._fs = index.filesystem() if self._local else storage.fsspec_filesystem(index.url)[0]
        self._files: dict[int, pq.ParquetFile] = {}

    def _file(self, file: int) -> pq.ParquetFile:
        if file not in self._files:
            if len(self._files) >= _OPEN_FILES:
                self._files.pop(next(iter(self._files))).close()
            path = self.index.files[file]
            if self._local:
                handle = self._fs.open_input_file(path)
            else:  # remote: large read-ahead blocks instead of many small range requests
                block = settings.REMOTE_BLOCK_SIZE_MB.get_int() << 20
                handle = pa.PythonFile(self._fs.open(path, "rb", block_size=block, cache_type="readahead"), mode="r")
            # pre_buffer coalesces the projected column chunks of a row group into few reads.
            self._files[file] = pq.ParquetFile(handle, pre_buffer=True)
        return self._files[file]

    def read(self, position: int, rows: np.ndarray | None) -> _Decoded:
        """Decode row group `position` of the index, keeping local rows `rows` (None: all)."""
        rg = self.index.row_groups[position]
        table = self._file(rg.file).read_row_group(rg.index, columns=self.columns)
        count = rg.num_rows if rows is None else len(rows)
        features = np.empty((count, len(self.index.features)), dtype=np.float32)
        for j, name in enumerate(self.index.features):
            column = table.column(name).to_numpy()
            features[:, j] = column if rows is None else column[rows]
        labels = table.column(self.index.label).to_numpy()
        labels = (labels if rows is None else labels[rows]).astype(self.label_dtype, copy=False)
        local = np.arange(rg.num_rows, dtype=np.int64) if rows is None else rows
        return _Decoded(features, labels, local + rg.first_row)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


class ShardReader:
    """Yields this rank's part of every global batch, epoch after epoch, from a cursor.

    `next_batch()` returns the rank's rows of the next global batch, or raises
    `EndOfEpoch` once when the epoch is used up; the cursor then points at the
    next epoch. Every rank of a world gets the same number of batches per epoch.
    """

    def __init__(
        self,
        index: DatasetIndex,
        *,
        seed: int,
        batch_size: int,
        lanes: int,
        window_rows: int,
        world_size: int,
        rank: int,
        label_dtype: str = "float32",
        holdout_fraction: float = 0.0,
        prefetch_batches: int = 4,
        pin_memory: bool = False,
    ):
        self.index = index
        self.pin_memory = pin_memory
        self.seed = seed
        self.batch_size = batch_size
        self.lanes = lanes
        self.window_rows = window_rows
        self.holdout_fraction = holdout_fraction
        self.label_dtype = label_dtype
        self.prefetch_batches = prefetch_batches
        self.owned = planning.owned_lanes(lanes, world_size, rank)
        self.rows_per_batch = planning.rank_batch_rows(batch_size, lanes, world_size, rank)
        self._cursor = Cursor()
        self._stream: _Prefetcher | None = None

    def plan(self, epoch: int) -> EpochPlan:
        """The layout of `epoch` (the same on every rank and at every world size)."""
        return planning.plan_epoch(
            self.index,
            seed=self.seed,
            epoch=epoch,
            batch_size=self.batch_size,
            lanes=self.lanes,
            window_rows=self.window_rows,
            holdout_fraction=self.holdout_fraction,
        )

    def state(self) -> Cursor:
        """The cursor of the next batch `next_batch()` will return."""
        return self._cursor

    def restore(self, cursor: Cursor) -> None:
        """Continue from `cursor`: the next batch is exactly the one it names."""
        self.close()
        self._cursor = cursor

    def next_batch(self) -> Batch:
        """This rank's rows of the next global batch; raises EndOfEpoch at an epoch's end."""
        if self._stream is None:
            epoch_plan = self.plan(self._cursor.epoch)
            batches = self._batches(epoch_plan, self._cursor.batch)
            self._stream = _Prefetcher(batches, self.prefetch_batches)
        batch = self._stream.next()
        if batch is None:
            self.close()
            self._cursor = Cursor(self._cursor.epoch + 1, 0)
            raise EndOfEpoch()
        self._cursor = Cursor(self._cursor.epoch, self._cursor.batch + 1)
        return batch

    def close(self) -> None:
        """Stop the prefetch thread; the cursor stays where it is."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _batches(self, epoch_plan: EpochPlan, first: int) -> Iterator[Batch]:
        source = RowGroupSource(self.index, self.label_dtype)
        decoded: dict[int, _Decoded] = {}  # row groups the lanes' current and next windows draw from
        windows: dict[int, tuple[int, _Decoded]] = {}  # each owned lane's current window, shuffled
        try:
            for b in range(first, epoch_plan.batches):
                yield self._batch(epoch_plan, b, source, decoded, windows)
                needed = self._needed(epoch_plan, b + 1) if b + 1 < epoch_plan.batches else set()
                for position in [p for p in decoded if p not in needed]:
                    del decoded[position]
        finally:
            source.close()

    def _needed(self, epoch_plan: EpochPlan, batch: int) -> set[int]:
        needed: set[int] = set()
        for lane in self.owned:
            needed.update(epoch_plan.groups_in(*epoch_plan.window_span(lane, batch)).tolist())
        return needed

    def _batch(self, epoch_plan: EpochPlan, b: int, source: RowGroupSource, decoded: dict, windows: dict) -> Batch:
        """This rank's rows of global batch `b`: a slice of each owned lane's shuffled window."""
        n, width = self.rows_per_batch, len(self.index.features)
        # Pinned (page-locked) batches let the loop's non_blocking copies to a GPU overlap compute.
        features = torch.empty((n, width), dtype=torch.float32, pin_memory=self.pin_memory)
        labels = torch.empty(n, dtype=getattr(torch, self.label_dtype), pin_memory=self.pin_memory)
        ids = torch.empty(n, dtype=torch.int64)
        out = (features.numpy(), labels.numpy(), ids.numpy())
        at = 0
        for lane in self.owned:
            first = b * epoch_plan.lane_sizes[lane]
            stop = first + epoch_plan.lane_sizes[lane]
            while first < stop:
                window, offset = divmod(first, epoch_plan.window_rows)
                rows = self._window(epoch_plan, lane, window, source, decoded, windows)
                take = min(stop - first, len(rows.ids) - offset)
                for target, column in zip(out, (rows.features, rows.labels, rows.ids)):
                    target[at : at + take] = column[offset : offset + take]
                at, first = at + take, first + take
        return Batch(features, labels, ids)

    def _window(
        self, epoch_plan: EpochPlan, lane: int, window: int, source: RowGroupSource, decoded: dict, windows: dict
    ) -> _Decoded:
        """A lane's window with its rows gathered once, in shuffled order, so batches take plain slices."""
        current = windows.get(lane)
        if current is not None and current[0] == window:
            return current[1]
        groups, offsets = epoch_plan.locate(epoch_plan.window_positions(lane, window))
        rows = _Decoded(
            np.empty((len(groups), len(self.index.features)), dtype=np.float32),
            np.empty(len(groups), dtype=self.label_dtype),
            np.empty(len(groups), dtype=np.int64),
        )
        for position in np.unique(groups):
            if position not in decoded:
                rg = self.index.row_groups[position]
                kept = None
                if self.holdout_fraction:
                    kept = planning.train_rows(rg.first_row, rg.num_rows, self.holdout_fraction)
                decoded[position] = source.read(int(position), kept)
            where = np.flatnonzero(groups == position)
            picked, group = offsets[where], decoded[position]
            rows.features[where] = group.features[picked]
            rows.labels[where] = group.labels[picked]
            rows.ids[where] = group.ids[picked]
        windows[lane] = (window, rows)
        return rows


def validation_batches(
    index: DatasetIndex,
    *,
    world_size: int,
    rank: int,
    batch_rows: int,
    holdout_fraction: float | None,
    label_dtype: str = "float32",
) -> Iterator[Batch]:
    """This rank's share of the validation rows, in batches of at most `batch_rows`.

    With `holdout_fraction`, the validation rows are those `plan` holds out of
    `index`; without it, every row of `index` (a separate validation dataset).
    The shares of all ranks cover every validation row exactly once.
    """
    counts = [
        planning.holdout_count(rg.num_rows, holdout_fraction) if holdout_fraction else rg.num_rows
        for rg in index.row_groups
    ]
    start, stop = planning.validation_share(sum(counts), world_size, rank)
    source = RowGroupSource(index, label_dtype)
    try:
        seen = 0
        for position, (rg, count) in enumerate(zip(index.row_groups, counts)):
            lo, hi = max(start - seen, 0), min(stop - seen, count)
            seen += count
            if lo >= hi:
                continue
            rows = None
            if holdout_fraction:
                rows = planning.holdout_rows(rg.first_row, rg.num_rows, holdout_fraction)[lo:hi]
            elif (lo, hi) != (0, count):
                rows = np.arange(lo, hi, dtype=np.int64)
            decoded = source.read(position, rows)
            for at in range(0, len(decoded.ids), batch_rows):
                part = slice(at, at + batch_rows)
                yield Batch(
                    torch.from_numpy(decoded.features[part]),
                    torch.from_numpy(decoded.labels[part]),
                    torch.from_numpy(decoded.ids[part]),
                )
    finally:
        source.close()


class _Prefetcher:
    """Runs a batch iterator in a daemon thread, a bounded number of batches ahead."""

    _DONE = object()

    def __init__(self, batches: Iterator[Batch], depth: int):
        self._batches = batches
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="orchestrator-prefetch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._batches:
                if not self._put(batch):
                    return
            self._put(self._DONE)
        except BaseException as error:  # handed to the consumer, who re-raises it
            self._put(error)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Batch | None:
        """The next batch, or None when the iterator is exhausted."""
        if self._thread is None:
            return next(self._batches, None)
        item = self._queue.get()
        if item is self._DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        else:
            self._batches.close()
