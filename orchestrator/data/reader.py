"""Reading one rank's rows: Parquet row groups → fitted preprocessing → numpy → torch.

Owns I/O and decoding for the rows `plan` assigns to a rank: it reads whole
row groups with column projection (only the job's feature and label columns),
turns each through the fitted preprocessing (`data.preprocess.transform`: a
numeric block and a block of integer codes per row) once, as it is decoded,
keeps only the row groups the current shuffle windows still need, gathers
each lane's window once in shuffled order, and assembles blocks of
consecutive batches with one copy per lane, so a batch is a view of a block.
A background thread can keep batches ready (`prefetch_batches`) where reading
waits on a GPU or a network rather than on the CPUs training uses. Training
data small enough (`decoded_mb` within data.in_memory_mb) is *resident*: each
row group is decoded once and kept for every later epoch, and only the cheap
per-epoch shuffle and block assembly run again, so the batches are the same
as streaming's, row for row.

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
from orchestrator.data.index import DatasetIndex
from orchestrator.data.partials import (
    Partial,
    assemble,
    fit_partial,
    reduce,
    tree_nodes,
)
from orchestrator.data.plan import Cursor, EpochPlan, Layout
from orchestrator.data.preprocess import Preprocessing, finish, transform
from orchestrator.errors import DataError, first_line

_OPEN_FILES = 8  # remote Parquet files kept open per reader
_FOOTERS = 64  # parsed footers of local files kept per reader
_UNSHUFFLED_RUN_ROWS = 8192  # rows of a lane taken at once when shuffle_window_rows is 1


def _remember(cache: dict, key, value, limit: int):
    """Put `value` in the insertion-ordered `cache`; returns the entry evicted to stay within `limit`."""
    if key in cache:
        return None
    cache[key] = value
    return cache.pop(next(iter(cache))) if len(cache) > limit else None


def decoded_mb(index: DatasetIndex | None, preprocessing: Preprocessing, label_dtype: str = "float32") -> float:
    """MiB that every row of `index` takes decoded (numeric block, codes, label, row id); 0 for None."""
    if index is None:
        return 0.0
    shape = preprocessing.input_description()
    per_row = shape.numeric_width * 4 + shape.code_width * 8 + np.dtype(label_dtype).itemsize + 8
    return sum(rg.num_rows for rg in index.row_groups) * per_row / 2**20


def default_prefetch(url: str, device_type: str) -> int:
    """Batches to read ahead in a background thread when the job leaves data.prefetch_batches unset.

    A CPU worker reading local files reads inline (0): Ray gives torch one
    thread per CPU of the worker, so a reader thread can only take turns with
    them, and measured on 2 cores it slowed training by ~15%. Where reading
    waits on something else, a thread keeps 4 batches ready: a GPU worker (the
    host reads while the device computes) or remote storage (the network).
    """
    return 4 if device_type != "cpu" or not storage.is_local(url) else 0


class EndOfEpoch(Exception):
    """The current epoch has no more batches; the cursor now points at the next epoch."""


@dataclass(frozen=True)
class Batch:
    """One rank's rows of one global batch, as the model and the loss take them."""

    numeric: torch.Tensor  # [rows, numeric width] float32 (Encoded.numeric)
    codes: torch.Tensor  # [rows, code width] int64 (Encoded.codes)
    labels: torch.Tensor  # [rows] float32 (NaN: no label) or int64 class ids (-1: no label)
    ids: torch.Tensor  # [rows] int64 global row ids (for audits of the sample order)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class _Decoded:
    numeric: np.ndarray  # rows = the kept rows of the row group
    codes: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


class RowGroupSource:
    """Reads and decodes row groups of one dataset.

    Local files are memory-mapped for each row group and unmapped right after
    it is decoded, with the file's footer parsed once and kept: mapping reads
    the page cache in place (~20% faster than copying it through read calls),
    and unmapping keeps the file's pages out of this process's RSS. Remote
    files stay open (a few at a time) behind large read-ahead blocks.
    """

    def __init__(self, index: DatasetIndex, preprocessing: Preprocessing | None, label_dtype: str = "float32"):
        self.index, self.preprocessing = index, preprocessing
        self.columns = [*index.features, index.label]
        self.label_dtype = np.dtype(label_dtype)
        self._local = storage.is_local(index.url)
        self._fs = None if self._local else storage.fsspec_filesystem(index.url)[0]
        self._files: dict[int, pq.ParquetFile] = {}  # remote: open files, oldest first
        self._footers: dict[int, pq.FileMetaData] = {}  # local: parsed footers, oldest first

    def _read_table(self, file: int, row_group: int) -> pa.Table:
        path = self.index.files[file]
        if self._local:
            handle = pq.ParquetFile(path, memory_map=True, metadata=self._footers.get(file))
            _remember(self._footers, file, handle.metadata, _FOOTERS)
            try:
                return handle.read_row_group(row_group, columns=self.columns)
            finally:
                handle.close()  # Arrow's buffers keep the mapping alive as long as they need it
        if file not in self._files:
            block = settings.REMOTE_BLOCK_SIZE_MB.get_int() << 20
            stream = pa.PythonFile(self._fs.open(path, "rb", block_size=block, cache_type="readahead"), mode="r")
            # pre_buffer coalesces the projected column chunks of a row group into few requests.
            evicted = _remember(self._files, file, pq.ParquetFile(stream, pre_buffer=True), _OPEN_FILES)
            if evicted is not None:
                evicted.close(force=True)
        return self._files[file].read_row_group(row_group, columns=self.columns)

    def table(self, position: int, rows: np.ndarray | None) -> pa.Table:
        """Row group `position` of the index, its job columns only, keeping local rows `rows` (None: all)."""
        rg = self.index.row_groups[position]
        try:
            table = self._read_table(rg.file, rg.index)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{self.index.files[rg.file]}: row group {rg.index} cannot be read "
                            f"(columns {', '.join(self.columns)}): {first_line(error)}") from None
        return table if rows is None else table.take(pa.array(rows))

    def read(self, position: int, rows: np.ndarray | None) -> _Decoded:
        """Decode row group `position` of the index through the preprocessing, keeping local rows `rows`."""
        rg = self.index.row_groups[position]
        encoded = transform(self.preprocessing, self.table(position, rows))
        labels = encoded.labels
        if self.label_dtype.kind == "f" and labels.dtype.kind == "i":  # bce: class ids as 0./1., NaN for none
            labels = np.where(labels < 0, np.nan, labels).astype(np.float32)
        local = np.arange(rg.num_rows, dtype=np.int64) if rows is None else rows
        return _Decoded(encoded.numeric, encoded.codes, labels.astype(self.label_dtype, copy=False),
                        local + rg.first_row)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close(force=True)
        self._files.clear()
        self._footers.clear()


class ShardReader:
    """Yields this rank's part of every global batch, epoch after epoch, from a cursor.

    `next_batch()` returns the rank's rows of the next global batch, or raises
    `EndOfEpoch` once when the epoch is used up; the cursor then points at the
    next epoch. Every rank of a world gets the same number of batches per epoch.

    Batches are cut from *blocks*: the rows of about one shuffle window's worth
    of consecutive batches, assembled with one copy per lane, so a batch is a
    view and the per-batch cost is a few Python calls.
    """

    def __init__(
        self,
        index: DatasetIndex,
        layout: Layout,
        preprocessing: Preprocessing,
        *,
        world_size: int,
        rank: int,
        label_dtype: str = "float32",
        prefetch_batches: int = 0,
        pin_memory: bool = False,
        resident: bool = False,
    ):
        self.index, self.layout, self.preprocessing = index, layout, preprocessing
        # With `resident`, every row group read stays decoded here for the next epochs.
        self._resident: dict[int, _Decoded] | None = {} if resident else None
        shape = preprocessing.input_description()
        self.widths = (shape.numeric_width, shape.code_width)
        self.pin_memory = pin_memory
        batch_size, lanes, window_rows = layout.batch_size, layout.lanes, layout.window_rows
        self.holdout_fraction = layout.holdout_fraction
        self.label_dtype = label_dtype
        self.prefetch_batches = prefetch_batches
        self.owned = planning.owned_lanes(lanes, world_size, rank)
        self.rows_per_batch = planning.rank_batch_rows(batch_size, lanes, world_size, rank)
        # Rows of a lane gathered at once: one shuffle window; windows of one row are the identity,
        # so without a shuffle the reader takes unshuffled runs of the default window's size.
        self.gather_rows = window_rows if window_rows > 1 else _UNSHUFFLED_RUN_ROWS
        # Batches per block: one window of the widest lane, so blocks and windows mostly align.
        self.block_batches = max(1, self.gather_rows // max(planning.lane_rows(batch_size, lanes)))
        self._cursor = Cursor()
        self._stream: _Prefetcher | None = None
        self._block: Batch | None = None
        self._at = 0

    def plan(self, epoch: int) -> EpochPlan:
        """The layout of `epoch` (the same on every rank and at every world size)."""
        return self.layout.plan(self.index, epoch)

    def state(self) -> Cursor:
        """The cursor of the next batch `next_batch()` will return."""
        return self._cursor

    def restore(self, cursor: Cursor) -> None:
        """Continue from `cursor`: the next batch is exactly the one it names."""
        self.close()
        self._cursor = cursor

    def next_batch(self) -> Batch:
        """This rank's rows of the next global batch; raises EndOfEpoch at an epoch's end."""
        if self._block is None or self._at == len(self._block.ids):
            if self._stream is None:
                epoch_plan = self.plan(self._cursor.epoch)
                blocks = self._blocks(epoch_plan, self._cursor.batch)
                depth = -(-self.prefetch_batches // self.block_batches)  # blocks to cover the batches asked for
                self._stream = _Prefetcher(blocks, depth)
            self._block, self._at = self._stream.next(), 0
            if self._block is None:
                self.close()
                self._cursor = Cursor(self._cursor.epoch + 1, 0)
                raise EndOfEpoch()
        block, k = self._block, self._at
        self._at += 1
        self._cursor = Cursor(self._cursor.epoch, self._cursor.batch + 1)
        return Batch(block.numeric[k], block.codes[k], block.labels[k], block.ids[k])

    def close(self) -> None:
        """Stop the prefetch thread and drop read-ahead rows; the cursor stays where it is."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._block, self._at = None, 0

    def _blocks(self, epoch_plan: EpochPlan, first: int) -> Iterator[Batch]:
        """Blocks of consecutive batches from batch `first` to the epoch's end, each [batches, rows, ...]."""
        source = RowGroupSource(self.index, self.preprocessing, self.label_dtype)
        # Row groups the lanes' current and next windows draw from; resident: every one read so far.
        decoded: dict[int, _Decoded] = {} if self._resident is None else self._resident
        windows: dict[int, tuple[int, _Decoded]] = {}  # each owned lane's current window, shuffled
        try:
            start = first
            while start < epoch_plan.batches:
                stop = min((start // self.block_batches + 1) * self.block_batches, epoch_plan.batches)
                yield self._assemble(epoch_plan, start, stop, source, decoded, windows)
                if self._resident is None:
                    needed = self._needed(epoch_plan, stop) if stop < epoch_plan.batches else set()
                    for position in [p for p in decoded if p not in needed]:
                        del decoded[position]
                start = stop
        finally:
            source.close()

    def _needed(self, epoch_plan: EpochPlan, batch: int) -> set[int]:
        needed: set[int] = set()
        for lane in self.owned:
            needed.update(epoch_plan.groups_in(*epoch_plan.window_span(lane, batch)).tolist())
        return needed

    def _assemble(
        self, epoch_plan: EpochPlan, start: int, stop: int, source: RowGroupSource, decoded: dict, windows: dict
    ) -> Batch:
        """Batches [start, stop) as one block: each owned lane's chunks, cut from its shuffled windows."""
        count, n = stop - start, self.rows_per_batch
        numeric = self._empty((count, n, self.widths[0]), np.float32)
        codes = self._empty((count, n, self.widths[1]), np.int64)
        labels = self._empty((count, n), self.label_dtype)
        ids = torch.from_numpy(np.empty((count, n), dtype=np.int64))
        out = (numeric.numpy(), codes.numpy(), labels.numpy(), ids.numpy())
        at = 0
        for lane in self.owned:
            size = epoch_plan.lane_sizes[lane]
            first, stop_row = start * size, stop * size
            pieces = []
            while first < stop_row:
                window, offset = divmod(first, self.gather_rows)
                rows = self._window(epoch_plan, lane, window, source, decoded, windows)
                take = min(stop_row - first, len(rows.ids) - offset)
                pieces.append(tuple(column[offset : offset + take] for column in
                                    (rows.numeric, rows.codes, rows.labels, rows.ids)))
                first += take
            for target, *parts in zip(out, *pieces):
                lane_rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
                target[:, at : at + size] = lane_rows.reshape(count, size, *lane_rows.shape[1:])
            at += size
        return Batch(numeric, codes, labels, ids)

    def _empty(self, shape: tuple[int, ...], dtype) -> torch.Tensor:
        if self.pin_memory:  # page-locked, so the loop's non_blocking copies to a GPU overlap compute
            return torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), pin_memory=True)
        # numpy's allocator, not torch's: torch maps a fresh large block on every call, and
        # faulting its pages in cost more than filling them (measured: ~1.4 ms per 8 MiB block).
        return torch.from_numpy(np.empty(shape, dtype=dtype))

    def _window(
        self, epoch_plan: EpochPlan, lane: int, window: int, source: RowGroupSource, decoded: dict, windows: dict
    ) -> _Decoded:
        """A lane's window with its rows gathered once, in shuffled order, so blocks take plain slices."""
        current = windows.get(lane)
        if current is not None and current[0] == window:
            return current[1]
        lo = epoch_plan.lane_start(lane) + window * self.gather_rows
        hi = min(lo + self.gather_rows, epoch_plan.lane_start(lane) + epoch_plan.lane_length(lane))
        # The window's rows in stream order: a view of one row group, or slices of a few joined.
        pieces = []
        for slot in range(*epoch_plan.slots_in(lo, hi)):
            position = int(epoch_plan.order[slot])
            if position not in decoded:
                rg = self.index.row_groups[position]
                kept = None
                if self.holdout_fraction:
                    kept = planning.train_rows(rg.first_row, rg.num_rows, self.holdout_fraction)
                decoded[position] = source.read(position, kept)
            start = int(epoch_plan.starts[slot])
            part = slice(max(lo, start) - start, min(hi, start + int(epoch_plan.counts[slot])) - start)
            group = decoded[position]
            pieces.append((group.numeric[part], group.codes[part], group.labels[part], group.ids[part]))
        in_order = [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in zip(*pieces)]
        if epoch_plan.window_rows > 1:
            permutation = epoch_plan.window_permutation(lane, window)
            in_order = [np.take(column, permutation, axis=0) for column in in_order]
        rows = _Decoded(*in_order)
        windows[lane] = (window, rows)
        return rows


def validation_batches(
    index: DatasetIndex,
    preprocessing: Preprocessing,
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
    source = RowGroupSource(index, preprocessing, label_dtype)
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
                yield Batch(*(torch.from_numpy(column[part]) for column in
                              (decoded.numeric, decoded.codes, decoded.labels, decoded.ids)))
    finally:
        source.close()


def fit_nodes(index: DatasetIndex, holdout_fraction: float, world_size: int,
              rank: int) -> dict[tuple[int, int], Partial]:
    """This rank's nodes of the merge tree (`preprocess.tree_nodes`) over its contiguous share of
    the row groups, each the merged partial of their training rows. Every rank's nodes together
    cover every row group once; `preprocess.assemble` merges them into the same root at any world
    size. Holds O(log row groups) partials at a time."""
    n = len(index.row_groups)
    mine = planning.contiguous_share(n, world_size, rank)
    source = RowGroupSource(index, preprocessing=None)

    def leaf(position: int) -> Partial:
        rg = index.row_groups[position]
        rows = planning.train_rows(rg.first_row, rg.num_rows, holdout_fraction) if holdout_fraction else None
        partial = fit_partial(index.columns, source.table(position, rows))
        # Arrow's allocator would keep every row group's freed buffers: the pass would cost the
        # memory of the whole share, not of one row group.
        pa.default_memory_pool().release_unused()
        return partial

    try:
        return {(a, b): reduce(index.columns, leaf, a, b) for a, b in tree_nodes(n, mine.start, mine.stop)}
    finally:
        source.close()


def fit_in_process(index: DatasetIndex, holdout_fraction: float) -> Preprocessing:
    """The preprocessing a run fits, computed here from every row group (what the workers compute
    together); for tests, benchmarks and tools."""
    n = len(index.row_groups)
    return finish(index.columns, assemble(index.columns, fit_nodes(index, holdout_fraction, 1, 0), 0, n))


class _Prefetcher:
    """Runs an iterator in a daemon thread, at most `depth` items ahead; inline when `depth` is 0."""

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
        """The next item, or None when the iterator is exhausted."""
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
