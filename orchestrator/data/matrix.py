"""The fitted preprocessing as gradient-boosted trees read a table: raw values, NaN for missing.

Trees need neither scaling nor imputation, and both libraries split natively on
categories and send missing values down a learned branch. So from the same fitted
state (`preprocess.Preprocessing`) that networks use, a tree model gets:

    numeric, boolean     the value itself (float32); null, NaN or ±inf → NaN
    vector[d]            one column per dimension, raw; a missing element → NaN
    datetime             seconds since the earliest training value, then the
                         month (0-11), weekday (0-6) and hour (0-23) it shows;
                         missing → NaN in each
    categorical          a native category: 0 for a value rare or unseen in
                         training (or its hash bucket), 1.. for the vocabulary
                         (most frequent first); null → NaN
    tags                 an 0/1 column for each of the TAG_INDICATORS most frequent
                         values (or hash buckets), and the row's element count;
                         a null row → NaN in each

The label is the raw target (float32, NaN for none) for regression, and the
class id (-1 for none or a class training never had) for classification.
One fitted state, one column order: `tree_features` names the columns, and
`tree_matrix` fills them for any table with the feature columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.data.partials import require_columns
from orchestrator.data.plan import contiguous_share, holdout_count
from orchestrator.data.preprocess import Preprocessing
from orchestrator.data.transforms import (
    BooleanStats,
    DatetimeStats,
    NumericStats,
    VectorStats,
    VocabularyStats,
    arrow,
    cycle_positions,
    floats,
    keys,
    list_lengths,
    matrix,
    seconds,
)

TAG_INDICATORS = 32  # a tags column's most frequent values that get a 0/1 column each


@dataclass(frozen=True)
class TreeFeatures:
    """The columns of `tree_matrix`: names, and which are native categories (with how many)."""

    names: tuple[str, ...]
    categories: tuple[int, ...]  # per column: 0 for a number, else the categories it can hold

    @property
    def categorical(self) -> tuple[int, ...]:
        """Positions of the categorical columns."""
        return tuple(i for i, count in enumerate(self.categories) if count)


@dataclass(frozen=True, eq=False)
class TreeMatrix:
    """One table for a tree model: features float32 [rows, columns], labels, and the row count."""

    features: np.ndarray
    labels: np.ndarray | None  # float32 raw target (NaN: none) or int64 class ids (-1: none)


def _indicators(stats: VocabularyStats) -> int:
    return min(TAG_INDICATORS, stats.cardinality - 2)


def _width(pre: Preprocessing) -> int:
    return len(tree_features(pre).names)


def tree_features(pre: Preprocessing) -> TreeFeatures:
    """The columns `tree_matrix` produces from tables under `pre`, in order."""
    names, categories = [], []
    for stats in pre.columns:
        if isinstance(stats, VocabularyStats) and stats.kind == "categorical":
            names.append(stats.name)
            categories.append(stats.cardinality - 1)
            continue
        if isinstance(stats, VocabularyStats):
            shown = stats.values[:_indicators(stats)] if stats.values else range(_indicators(stats))
            own = [f"{stats.name}={value}" if stats.values else f"{stats.name}#{value}" for value in shown]
            own.append(f"{stats.name}__count")
        elif isinstance(stats, DatetimeStats):
            own = [stats.name, *(f"{stats.name}__{part}" for part in stats.parts)]
        elif isinstance(stats, VectorStats):
            own = [f"{stats.name}__{i}" for i in range(stats.length)]
        else:
            own = [stats.name]
        names += own
        categories += [0] * len(own)
    return TreeFeatures(tuple(names), tuple(categories))


def _block(stats, column) -> np.ndarray:
    """[n, this column's width] float64 for one feature column (see the module doc)."""
    if isinstance(stats, (NumericStats, BooleanStats)):
        x = floats(column)
        return np.where(np.isfinite(x), x, np.nan)[:, None]
    if isinstance(stats, VectorStats):
        x, _ = matrix(column, stats.length, stats.name)
        return np.where(np.isfinite(x), x, np.nan)
    if isinstance(stats, DatetimeStats):
        s = seconds(column)
        missing = ~np.isfinite(s)
        s = np.where(missing, 0.0, s)
        parts = cycle_positions(s, stats.parts)
        block = np.column_stack([s - stats.seconds.low, *(parts[part] for part in stats.parts)])
        block[missing] = np.nan
        return block
    if stats.kind == "categorical":
        ids = stats.ids(keys(column)).astype(np.float64)  # 0 missing, 1 rare or unseen, 2.. vocabulary
        return np.where(ids == 0, np.nan, ids - 1)[:, None]
    array = arrow(column)
    k, null = _indicators(stats), ~array.is_valid().to_numpy(zero_copy_only=False)
    lengths = list_lengths(array)
    ids = stats.ids(keys(pc.list_flatten(array)))
    rows = np.repeat(np.arange(len(array)), lengths)
    block = np.zeros((len(array), k + 1))
    shown = (ids >= 2) & (ids < 2 + k)
    block[rows[shown], ids[shown] - 2] = 1.0
    block[:, k] = lengths
    block[null] = np.nan
    return block


def tree_matrix(pre: Preprocessing, table: pa.Table, out: np.ndarray | None = None) -> TreeMatrix:
    """`table` as a tree model reads it under `pre`: vectorised, no loop over rows. Every feature
    column must be present (DataError naming the absent ones); the label is encoded when present.
    Each column lands in `out` (float32 [rows, columns], e.g. a slice of a larger matrix) when
    given, else in a new array: no intermediate copy of the whole table."""
    require_columns(table, [stats.name for stats in pre.columns], "building the tree model's matrix")
    features = out if out is not None else np.empty((table.num_rows, _width(pre)), np.float32)
    at = 0
    for stats in pre.columns:
        block = _block(stats, table[stats.name])
        features[:, at:at + block.shape[1]] = block
        at += block.shape[1]
    labels = None
    if pre.label is not None and pre.label.name in table.column_names:
        if pre.label.task == "regression":
            y = floats(table[pre.label.name])
            labels = np.where(np.isfinite(y), y, np.nan).astype(np.float32)
        else:
            labels = pre.label.encode(table[pre.label.name])
    return TreeMatrix(features, labels)


_WIDTH = {"numeric": 1, "boolean": 1, "categorical": 1, "datetime": 4, "tags": TAG_INDICATORS + 1}
_UNKNOWN_VECTOR_LENGTH = 16  # a variable-length list in the schema: its length is learned later


def planned_width(plans) -> int:
    """The columns `tree_matrix` will have, from the column plans alone (before any row is read):
    exact but for datetimes (counted with all their parts) and vectors without a length in the schema."""
    width = 0
    for plan in plans:
        if plan.role != "feature":
            continue
        if plan.kind == "vector":
            length = plan.vector_length
            if length is None and plan.arrow_type.rstrip().endswith("]"):
                length = int(plan.arrow_type.rstrip()[:-1].rsplit("[", 1)[1])
            width += length or _UNKNOWN_VECTOR_LENGTH
        else:
            width += _WIDTH.get(plan.kind, 1)
    return width


def bytes_per_worker(index, holdout_fraction: float, workers: int, validation_rows: int, probe_rows: int) -> int:
    """An estimate, from the footers, of the memory the largest share of a tree model's group holds:
    its float32 matrix, the library's binned copy (a byte a value), and the validation rows and
    train probe every rank holds as float32."""
    groups = index.row_groups
    largest = max(sum(groups[p].num_rows - holdout_count(groups[p].num_rows, holdout_fraction)
                      for p in contiguous_share(len(groups), workers, rank)) for rank in range(workers))
    width = planned_width(index.columns)
    return width * (largest * (4 + 1) + (validation_rows + probe_rows) * 4)


def memory_problem(index, holdout_fraction: float, workers: int, validation_rows: int, probe_rows: int,
                   cluster_memory: float, largest_node_memory: float) -> str | None:
    """Why `workers` workers cannot hold a tree model's data in `cluster_memory` bytes shared evenly
    (None when they can, or when the cluster does not say): the estimate (`bytes_per_worker`) against
    each worker's share, and how many workers it would take, each on a node as large as the largest."""
    need = bytes_per_worker(index, holdout_fraction, workers, validation_rows, probe_rows)
    budget = cluster_memory / workers
    if not cluster_memory or need <= budget:
        return None
    largest = largest_node_memory or budget
    enough = next((w for w in range(workers, len(index.row_groups) + 1)
                   if bytes_per_worker(index, holdout_fraction, w, validation_rows, probe_rows) <= largest), None)
    gib = 1 << 30
    advice = (f"it needs at least {enough} workers, each on a node offering {largest / gib:.2f} GiB" if enough else
              "even one worker alone on the largest node cannot hold the rows every worker holds")
    return (f"each of {workers} worker(s) would hold about {need / gib:.2f} GiB (its share of the "
            f"{index.num_rows:,} rows × {planned_width(index.columns)} columns as float32 and binned, plus the "
            f"{validation_rows:,} validation rows and {probe_rows:,}-row train probe every worker holds), but "
            f"the cluster offers {cluster_memory / gib:.2f} GiB of memory, {budget / gib:.2f} GiB a worker: {advice}")
