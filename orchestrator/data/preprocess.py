"""Fitted preprocessing: statistics learned from the training rows, as data, and the pure
transform that applies them to an Arrow table.

Owns: one row group's statistics (`fit_partial` → `Partial`), their merge into the fitted
state (`combine` → `Preprocessing`), the transform of a table into numpy blocks
(`transform` → `Encoded`), the model's input shape (`Preprocessing.input_description`),
the label's classes or standardization, and the JSON that stores all of it (never pickle).

Fitting is a reduction over row groups. A partial holds one row group's training rows'
statistics; partials merge (`merge`) along a fixed binary tree over the row groups
(`tree_nodes`, `reduce`, `assemble`). Since the unit and the tree are fixed, the result is
the same bits whatever number of workers computed which nodes: each rank computes the nodes
inside its own range and gathers the others', O(log row groups) partials each, so the
memory of fitting does not grow with the data (a vocabulary: at most
VOCABULARY_SCAN_LIMIT values per column). `combine` does the whole tree in one process.

A value is missing when it is null, NaN, +inf or -inf. Per kind:
- numeric: missing → the training median, plus a 0/1 `name__missing` column only when the
  training rows had a missing value; then `standard` ((x - mean) / std), `robust`
  ((x - median) / IQR, clipped to ±5; an IQR of 0 falls back to the std),
  `quantile` (onto a standard normal, interpolating between the fitted quantiles; ±5.2 at
  most), `log1p` (sign(x)·log1p(|x|), then standardized) or `none`. A std of 0 counts as 1.
- boolean: 0/1, missing → 0 (+ indicator when seen).
- categorical: id 0 = missing, 1 = rare or unseen, 2.. = the vocabulary, most frequent
  first; with `hash_buckets` N: 2 + stable_hash(value) % N.
- datetime: UTC epoch seconds as a numeric `standard` column, plus sin and cos of the month,
  the weekday and (timestamps only) the hour, all 0 when missing. Naive timestamps are UTC.
- vector: each dimension standardized (log1p first if asked); a missing vector or element
  → 0 after scaling, + one indicator when seen.
- tags: each row a bag of element ids (the categorical ids), padded with 0 to the longest
  bag of the training rows (at most MAX_TAGS_PER_ROW; a longer row keeps its first ones), so
  a batch is one int64 matrix for an EmbeddingBag with padding_idx 0; a null or empty list is
  an empty bag, a null element id 0.
Scaled outputs are clipped to ±transforms.VALUE_BOUND (`none` to float32's range), so values
never seen in training give neither inf nor NaN. The label: classes sorted by value → 0..K-1, with
-1 for a null or unseen class; or a standardized regression target.

Leaves to `data.columns` each column's kind, to `summaries` the mergeable arithmetic and its
bounds, to `transforms` each column's fitted state and transform, and to the caller reading
row groups, gathering partials across ranks and dropping unlabelled rows (`label_mask`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.data import summaries
from orchestrator.data.columns import ColumnPlan
from orchestrator.data.summaries import (
    BooleanPartial,
    LabelPartial,
    NumericPartial,
    VectorPartial,
    VocabularyPartial,
    merge_counts,
    merge_moments,
    merge_sketches,
    moments,
    quantiles,
    select_vocabulary,
    sketch,
    value_counts,
)
from orchestrator.data.transforms import (
    KNOTS,
    TINY,
    BooleanStats,
    Column,
    DatetimeStats,
    LabelStats,
    NumericStats,
    VectorStats,
    VocabularyStats,
    arrow,
    floats,
    keys,
    list_lengths,
    matrix,
    seconds,
    signed_log1p,
    usable,
)
from orchestrator.errors import DataError
from orchestrator.job.columns import embedding_dim

FORMAT_VERSION = 1  # of the JSON; from_json refuses another
MAX_TAGS_PER_ROW = 64  # a tags column's padded width at most


@dataclass(frozen=True)
class Partial:
    """One row group's statistics: small, picklable and JSON-able, to be gathered across ranks."""

    rows: int
    columns: tuple  # one *Partial per feature plan, in plan order
    label: LabelPartial | None

    def to_json(self) -> str:
        """JSON from which `from_json` rebuilds an equal Partial (moments that overflowed are Infinity)."""
        return _dumps(self, strict=False)

    @classmethod
    def from_json(cls, text: str) -> Partial:
        """The Partial `to_json` wrote; DataError for malformed text."""
        return _loads(text, cls)


# ---- fit_partial ------------------------------------------------------------------------

def _numeric_partial(x: np.ndarray, log: bool) -> NumericPartial:
    finite = x[np.isfinite(x)]
    count, mean, m2 = moments(signed_log1p(finite) if log else finite)
    return NumericPartial(count=int(count), missing=int(x.size - count), mean=float(mean), m2=float(m2),
                          low=float(finite.min()) if count else None,
                          high=float(finite.max()) if count else None, sketch=sketch(finite))


def _vocabulary_partial(plan: ColumnPlan, column: Column) -> VocabularyPartial:
    values, longest = arrow(column), 1
    if plan.kind == "tags":
        lengths = list_lengths(values)
        longest = int(lengths.max()) if len(lengths) else 0
        values = arrow(pc.list_flatten(values))
    strings, missing = keys(values), values.null_count
    counted = ((), ()) if plan.hash_buckets else value_counts(
        strings, plan.name, f"set data.columns.{plan.name}.hash_buckets (e.g. 1048576) to hash its values "
                         "instead of keeping a vocabulary")
    return VocabularyPartial(value_type=str(values.type), count=len(strings) - missing, missing=missing,
                             values=counted[0], counts=counted[1], longest=longest)


def _vector_partial(plan: ColumnPlan, column: Column) -> VectorPartial:
    x, length = matrix(column, plan.vector_length, plan.name)
    count, mean, m2 = moments(signed_log1p(x) if plan.transform == "log1p" else x)
    missing = len(x) if length is None else int((~np.isfinite(x).all(axis=1)).sum())
    return VectorPartial(length=length, missing=missing, count=tuple(count.tolist()),
                         mean=tuple(mean.tolist()), m2=tuple(m2.tolist()))


def _label_partial(plan: ColumnPlan, column: Column) -> LabelPartial:
    ok = usable(column)
    null_labels = int(ok.size - ok.sum())
    if plan.kind == "numeric":
        count, mean, m2 = moments(floats(column)[ok])
        return LabelPartial(null_labels, int(count), float(mean), float(m2), (), ())
    values, counts = value_counts(arrow(column).filter(pa.array(ok)), plan.name,
                                  "a classification label holds a few classes; is this the right column, "
                                  "and the right loss?")
    return LabelPartial(null_labels, int(ok.sum()), 0.0, 0.0, values, counts)


_PARTIALS = {
    "numeric": lambda plan, column: _numeric_partial(floats(column), plan.transform == "log1p"),
    "boolean": lambda plan, column: BooleanPartial(len(column) - column.null_count, column.null_count),
    "categorical": _vocabulary_partial,
    "datetime": lambda plan, column: _numeric_partial(seconds(column), False),
    "vector": _vector_partial,
    "tags": _vocabulary_partial,
}


def _require(table: pa.Table, names: Sequence[str], doing: str) -> None:
    absent = [name for name in names if name not in table.column_names]
    if absent:
        raise DataError(f"{doing} needs column(s) {', '.join(map(repr, absent))}, which the table lacks "
                        f"(it has: {', '.join(table.column_names)}); the data must keep the columns the "
                        "preprocessing was fitted on")


def fit_partial(plans: Sequence[ColumnPlan], table: pa.Table) -> Partial:
    """One row group's statistics from `table`, its training rows (only the planned columns are
    read; a missing one is a DataError). Pure: the same table gives the same partial."""
    _require(table, [plan.name for plan in plans], "fitting preprocessing")
    label = next((plan for plan in plans if plan.role == "label"), None)
    return Partial(
        rows=table.num_rows,
        columns=tuple(_PARTIALS[plan.kind](plan, table[plan.name])
                      for plan in plans if plan.role == "feature"),
        label=_label_partial(label, table[label.name]) if label else None,
    )


# ---- combine ----------------------------------------------------------------------------
# Each _combine_<kind> returns the column's fitted state (transforms.<Kind>Stats), or None
# with its problems added.

def _all_missing(plan: ColumnPlan, missing: int) -> str:
    what = "element" if plan.kind == "tags" else "value"
    return (f"column '{plan.name}' has no {what} in the training rows ({missing} missing: null, NaN or "
            f"inf): leave it out with data.exclude: [{plan.name}], or fill it in the data")


def _merged(parts: Sequence[Any]) -> tuple[int, float, float]:
    """(count, mean, m2) of every part's moments, merged in the order given."""
    total: tuple = (0, 0.0, 0.0)
    for part in parts:
        total = merge_moments(total, (part.count, part.mean, part.m2))
    return int(total[0]), float(total[1]), float(total[2])


def _spread(count: int, m2: float, centre: float) -> float:
    """The population std, or 1 for a constant column."""
    std = math.sqrt(m2 / count) if count else 0.0
    return std if std > TINY * max(1.0, abs(centre)) else 1.0


def _too_large(name: str) -> str:
    return (f"column '{name}': its values are too large for float64 moments (the std overflows): "
            f"set data.columns.{name}.transform: log1p, or scale the column in the data")


def _combine_numeric(plan: ColumnPlan, parts: Sequence[NumericPartial], problems: list[str]) -> Any:
    count, mean, m2 = _merged(parts)
    missing = sum(part.missing for part in parts)
    if count == 0:
        problems.append(_all_missing(plan, missing))
        return None
    transform, std = plan.transform or "standard", _spread(count, m2, mean)
    if not (math.isfinite(mean) and math.isfinite(std)):
        if transform == "standard":
            problems.append(_too_large(plan.name))
            return None
        mean, std = 0.0, 1.0  # robust, quantile and none do not scale by them (nor log1p's overflow)
    low = min(part.low for part in parts if part.count)
    high = max(part.high for part in parts if part.count)
    probs = np.r_[0.25, 0.5, 0.75, KNOTS if transform == "quantile" else []]
    q = quantiles([(part.count, part.sketch) for part in parts], probs, low, high)
    return NumericStats(name=plan.name, transform=transform, count=count, missing=missing, mean=mean, std=std,
                        median=float(q[1]), iqr=float(q[2] - q[0]), low=low, high=high,
                        quantiles=tuple(q[3:].tolist()))


def _combine_boolean(plan: ColumnPlan, parts: Sequence[BooleanPartial], problems: list[str]) -> Any:
    count, missing = sum(part.count for part in parts), sum(part.missing for part in parts)
    if count == 0:
        problems.append(_all_missing(plan, missing))
        return None
    return BooleanStats(plan.name, count, missing)


def _combine_datetime(plan: ColumnPlan, parts: Sequence[NumericPartial], problems: list[str]) -> Any:
    fitted = _combine_numeric(dataclasses.replace(plan, transform="standard"), parts, problems)
    cycles = ("month", "weekday") + (() if plan.arrow_type.startswith("date") else ("hour",))
    return DatetimeStats(plan.name, fitted, cycles) if fitted else None


def _combine_vector(plan: ColumnPlan, parts: Sequence[VectorPartial], problems: list[str]) -> Any:
    lengths = sorted({part.length for part in parts if part.length is not None})
    missing = sum(part.missing for part in parts)
    if len(lengths) > 1:
        problems.append(f"vector column '{plan.name}' has rows of {lengths[0]} and of {lengths[1]} values in "
                        "the training rows: every row needs one length (or leave it out with data.exclude)")
        return None
    if not lengths:
        problems.append(_all_missing(plan, missing))
        return None
    total = (np.zeros(lengths[0], np.int64), np.zeros(lengths[0]), np.zeros(lengths[0]))
    for part in parts:
        if part.length is not None:
            total = merge_moments(total, (np.array(part.count), np.array(part.mean), np.array(part.m2)))
    count, mean, m2 = total
    if not count.all():
        problems.append(f"vector column '{plan.name}': dimension {int(np.argmin(count))} has no finite value "
                        "in the training rows")
        return None
    std = tuple(_spread(int(c), float(s), float(mu)) for c, mu, s in zip(count, mean, m2))
    if not all(map(math.isfinite, std + tuple(mean))) and plan.transform != "none":
        problems.append(_too_large(plan.name))
        return None
    return VectorStats(plan.name, plan.transform or "standard", lengths[0], missing, tuple(mean.tolist()), std)


def _combine_vocabulary(plan: ColumnPlan, parts: Sequence[VocabularyPartial], problems: list[str]) -> Any:
    count, missing = sum(part.count for part in parts), sum(part.missing for part in parts)
    if count == 0:
        problems.append(_all_missing(plan, missing))
        return None
    values, counts = ((), ()) if plan.hash_buckets else select_vocabulary(
        merge_counts((part.values, part.counts) for part in parts), plan.min_frequency, plan.max_categories)
    cardinality = 2 + (plan.hash_buckets or len(values))
    width = min(MAX_TAGS_PER_ROW, max(1, max(part.longest for part in parts))) if plan.kind == "tags" else 1
    return VocabularyStats(name=plan.name, kind=plan.kind, value_type=parts[0].value_type, values=values,
                           counts=counts, hash_buckets=plan.hash_buckets,
                           embedding_dim=plan.embedding_dim or embedding_dim(cardinality), count=count,
                           missing=missing, width=width)


def _combine_label(plan: ColumnPlan, parts: Sequence[LabelPartial], problems: list[str]) -> LabelStats:
    null_labels = sum(part.null_labels for part in parts)
    if plan.kind == "numeric":
        count, mean, m2 = _merged(parts)
        std = _spread(count, m2, mean)
        if count and not math.isfinite(std):
            problems.append(_too_large(plan.name))
        fitted = LabelStats(plan.name, "regression", count, null_labels, mean, std, (), ())
    else:
        merged = merge_counts((part.values, part.counts) for part in parts)
        classes = tuple(sorted(merged))
        fitted = LabelStats(plan.name, "classification", sum(merged.values()), null_labels, 0.0, 1.0, classes,
                            tuple(merged[c] for c in classes))
        if len(classes) == 1:
            problems.append(f"label column '{plan.name}' has one class only ({classes[0]!r}) in the training "
                            "rows; classification needs at least two")
    if fitted.count == 0:
        problems.append(f"label column '{plan.name}' has no usable value in the training rows "
                        f"({null_labels} null, NaN or inf)")
    return fitted


_COMBINERS = {
    "numeric": _combine_numeric,
    "boolean": _combine_boolean,
    "categorical": _combine_vocabulary,
    "datetime": _combine_datetime,
    "vector": _combine_vector,
    "tags": _combine_vocabulary,
}


def combine(plans: Sequence[ColumnPlan], partials: Sequence[Partial]) -> Preprocessing:
    """The fitted preprocessing from every training row group's partial, given in global
    row-group order, merged along the fixed tree (`reduce`): the same partials give the same
    bits, however many workers computed them. One DataError lists every column that cannot be
    fitted (no value in the training rows, vectors of several lengths, one class only,
    overflowing values)."""
    if not partials:
        raise DataError("no training rows to fit the preprocessing on: every row group is empty or held out "
                        "for validation")
    return finish(plans, reduce(plans, partials.__getitem__, 0, len(partials)))


def finish(plans: Sequence[ColumnPlan], root: Partial) -> Preprocessing:
    """The fitted preprocessing from the merged partial of every training row group (see `combine`)."""
    features = [plan for plan in plans if plan.role == "feature"]
    label = next((plan for plan in plans if plan.role == "label"), None)
    assert len(root.columns) == len(features), "a partial of other plans"
    problems: list[str] = []
    columns = tuple(_COMBINERS[plan.kind](plan, [root.columns[i]], problems) for i, plan in enumerate(features))
    fitted_label = _combine_label(label, [root.label], problems) if label else None
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"The preprocessing cannot be fitted on the training rows "
                        f"({len(problems)} problem(s)):\n{lines}")
    return Preprocessing(columns=columns, label=fitted_label, rows=root.rows)


# ---- the merge tree: partials of row groups [lo, hi) ------------------------------------------
# A fixed binary tree over the row groups [0, n): node [lo, hi) merges [lo, mid) and [mid, hi),
# mid = (lo + hi) // 2. Every node is a function of its row groups alone, so a rank may compute
# the nodes inside its own range and the others the rest: the root is the same bits at any world
# size, and no rank ever holds more than O(log n) partials of its own.

def tree_nodes(n: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """The largest nodes of the merge tree over [0, n) that lie inside [lo, hi), left to right."""
    found: list[tuple[int, int]] = []

    def visit(a: int, b: int) -> None:
        if b <= lo or a >= hi or a >= b:
            return
        if lo <= a and b <= hi:
            found.append((a, b))
            return
        visit(a, (a + b) // 2)
        visit((a + b) // 2, b)

    visit(0, n)
    return found


def reduce(plans: Sequence[ColumnPlan], leaf: Callable[[int], Partial], lo: int, hi: int) -> Partial:
    """Node [lo, hi) of the merge tree, from `leaf(i)`, row group i's partial (computed depth first)."""
    if hi - lo == 1:
        return leaf(lo)
    mid = (lo + hi) // 2
    return merge(plans, reduce(plans, leaf, lo, mid), reduce(plans, leaf, mid, hi))


def assemble(plans: Sequence[ColumnPlan], nodes: Mapping[tuple[int, int], Partial], lo: int, hi: int) -> Partial:
    """Node [lo, hi) of the merge tree from `nodes` that cover it (the ranks' `tree_nodes`, gathered)."""
    if (lo, hi) in nodes:
        return nodes[(lo, hi)]
    mid = (lo + hi) // 2
    return merge(plans, assemble(plans, nodes, lo, mid), assemble(plans, nodes, mid, hi))


def merge(plans: Sequence[ColumnPlan], a: Partial, b: Partial) -> Partial:
    """The partial of the row groups of `a` followed by those of `b`. A vocabulary past
    VOCABULARY_SCAN_LIMIT values, or vectors of two lengths, is a DataError naming the column."""
    features = [plan for plan in plans if plan.role == "feature"]
    label = next((plan for plan in plans if plan.role == "label"), None)
    return Partial(
        rows=a.rows + b.rows,
        columns=tuple(_MERGERS[plan.kind](plan, x, y) for plan, x, y in zip(features, a.columns, b.columns)),
        label=_merge_label(label, a.label, b.label) if label else None,
    )


def _merge_numeric(plan: ColumnPlan, a: NumericPartial, b: NumericPartial) -> NumericPartial:
    count, mean, m2 = merge_moments((a.count, a.mean, a.m2), (b.count, b.mean, b.m2))
    lows = [v for v in (a.low, b.low) if v is not None]
    highs = [v for v in (a.high, b.high) if v is not None]
    low, high = (min(lows), max(highs)) if lows else (None, None)
    points = merge_sketches((a.count, a.sketch), (b.count, b.sketch), low, high) if lows else ()
    return NumericPartial(count=int(count), missing=a.missing + b.missing, mean=float(mean), m2=float(m2),
                          low=low, high=high, sketch=points)


def _merge_vocabulary(plan: ColumnPlan, a: VocabularyPartial, b: VocabularyPartial) -> VocabularyPartial:
    counts = merge_counts([(a.values, a.counts), (b.values, b.counts)])
    if len(counts) > summaries.VOCABULARY_SCAN_LIMIT:
        raise DataError(f"column '{plan.name}' has more than {summaries.VOCABULARY_SCAN_LIMIT} distinct values "
                        f"in the training rows, more than a vocabulary may hold: set "
                        f"data.columns.{plan.name}.hash_buckets (e.g. 1048576) to hash its values")
    values = tuple(sorted(counts))
    return VocabularyPartial(value_type=a.value_type, count=a.count + b.count, missing=a.missing + b.missing,
                             values=values, counts=tuple(counts[v] for v in values),
                             longest=max(a.longest, b.longest))


def _merge_vector(plan: ColumnPlan, a: VectorPartial, b: VectorPartial) -> VectorPartial:
    if a.length is None or b.length is None:
        kept = b if a.length is None else a
        return dataclasses.replace(kept, missing=a.missing + b.missing)
    if a.length != b.length:
        raise DataError(f"vector column '{plan.name}' has rows of {a.length} and of {b.length} values in the "
                        "training rows: every row needs one length (or leave it out with data.exclude)")
    count, mean, m2 = merge_moments(*[(np.array(p.count), np.array(p.mean), np.array(p.m2)) for p in (a, b)])
    return VectorPartial(length=a.length, missing=a.missing + b.missing, count=tuple(count.tolist()),
                         mean=tuple(mean.tolist()), m2=tuple(m2.tolist()))


def _merge_label(plan: ColumnPlan, a: LabelPartial, b: LabelPartial) -> LabelPartial:
    if plan.kind == "numeric":
        count, mean, m2 = merge_moments((a.count, a.mean, a.m2), (b.count, b.mean, b.m2))
        return LabelPartial(a.null_labels + b.null_labels, int(count), float(mean), float(m2), (), ())
    counts = merge_counts([(a.values, a.counts), (b.values, b.counts)])
    values = tuple(sorted(counts))
    return LabelPartial(a.null_labels + b.null_labels, a.count + b.count, 0.0, 0.0, values,
                        tuple(counts[v] for v in values))


_MERGERS = {
    "numeric": _merge_numeric,
    "boolean": lambda plan, a, b: BooleanPartial(a.count + b.count, a.missing + b.missing),
    "categorical": _merge_vocabulary,
    "datetime": _merge_numeric,
    "vector": _merge_vector,
    "tags": _merge_vocabulary,
}


# ---- the fitted state of a table, and its transform ------------------------------------------

class Embedding(NamedTuple):
    """One categorical or tags column's embedding table, and where its ids sit in Encoded.codes."""

    name: str
    cardinality: int  # ids, the two reserved ones (missing, rare/unseen) included
    embedding_dim: int
    start: int  # its first column in Encoded.codes
    width: int  # its columns there: 1 for a categorical, the padded bag for tags


@dataclass(frozen=True)
class InputShape:
    """What a model's input encoder must accept from `transform`."""

    numeric_width: int  # columns of Encoded.numeric
    numeric_names: tuple[str, ...]  # their names: income, income__missing, ts__month_sin, ...
    categorical: tuple[Embedding, ...]  # one column each of Encoded.codes, first, in column order
    tags: tuple[Embedding, ...]  # a padded bag each of Encoded.codes, after the categoricals
    classes: int | None  # classification: how many classes; None otherwise

    @property
    def code_width(self) -> int:
        """Columns of Encoded.codes."""
        return len(self.categorical) + sum(t.width for t in self.tags)


@dataclass(frozen=True, eq=False)
class Encoded:
    """One table, transformed: numpy arrays ready to become tensors."""

    numeric: np.ndarray  # float32 [n, numeric_width]: every numeric-ish block, in column order
    # int64 [n, code_width]: each categorical's id, then each tags column's ids padded with 0
    codes: np.ndarray
    # float32 standardized target, or int64 class ids (-1: null or unseen); None without the label column
    labels: np.ndarray | None


@dataclass(frozen=True)
class Preprocessing:
    """Everything fitted on the training rows: saved with the run, applied unchanged by predict."""

    columns: tuple  # one *Stats per feature, in plan order
    label: LabelStats | None
    rows: int  # training rows it was fitted on
    version: int = FORMAT_VERSION

    def input_description(self) -> InputShape:
        """The widths and embedding tables a model needs for `transform`'s output."""
        ids = [s for s in self.columns if isinstance(s, VocabularyStats)]
        names = tuple(name for s in self.columns if not isinstance(s, VocabularyStats) for name in s.names)
        tables, start = {}, 0
        for kind in ("categorical", "tags"):
            tables[kind] = []
            for s in (s for s in ids if s.kind == kind):
                tables[kind].append(Embedding(s.name, s.cardinality, s.embedding_dim, start, s.width))
                start += s.width
        classification = self.label is not None and self.label.task == "classification"
        return InputShape(numeric_width=len(names), numeric_names=names, categorical=tuple(tables["categorical"]),
                          tags=tuple(tables["tags"]), classes=len(self.label.classes) if classification else None)

    def label_mask(self, table: pa.Table) -> np.ndarray:
        """bool per row of `table`: the label is usable (not null, NaN or inf); the rows to keep."""
        if self.label is None:
            raise DataError("this preprocessing was fitted without a label: it cannot tell which rows have one")
        _require(table, [self.label.name], "finding the labelled rows")
        return usable(table[self.label.name])

    def destandardize(self, values: np.ndarray) -> np.ndarray:
        """Regression predictions back in the label's units."""
        return self.label.destandardize(values)

    def to_json(self) -> str:
        """Strict JSON (no NaN), from which `from_json` rebuilds an equal Preprocessing."""
        return _dumps(self)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """The Preprocessing `to_json` wrote; DataError for another format version or malformed text."""
        pre = _loads(text, cls)
        if pre.version != FORMAT_VERSION:
            raise DataError(f"the preprocessing was saved in format version {pre.version}; this orchestrator "
                            f"reads version {FORMAT_VERSION}: refit it with this version")
        return pre


def transform(pre: Preprocessing, table: pa.Table) -> Encoded:
    """`table` through the fitted preprocessing: vectorised, no loop over rows. Every feature
    column must be present (DataError naming the absent ones); the label is encoded when present."""
    _require(table, [stats.name for stats in pre.columns], "the transform")
    n = table.num_rows
    width = sum(len(stats.names) for stats in pre.columns if not isinstance(stats, VocabularyStats))
    # Each block is written straight into its columns (cast to float32 as it lands): no concatenation.
    numeric, at = np.empty((n, width), np.float32, order="F"), 0
    categorical, bags = [], []
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the clip bounds
        for stats in pre.columns:
            column = table[stats.name]
            if isinstance(stats, VocabularyStats) and stats.kind == "tags":
                bags.append(stats.padded(column))
            elif isinstance(stats, VocabularyStats):
                categorical.append(stats.block(column)[:, None])
            else:
                block = stats.block(column)
                numeric[:, at:at + block.shape[1]] = block
                at += block.shape[1]
    has_label = pre.label is not None and pre.label.name in table.column_names
    return Encoded(
        numeric=numeric,
        codes=np.concatenate(categorical + bags, axis=1) if categorical or bags else np.zeros((n, 0), np.int64),
        labels=pre.label.encode(table[pre.label.name]) if has_label else None,
    )


# ---- JSON: tagged dataclasses, tuples as lists --------------------------------------------

_TYPES = {cls.__name__: cls for cls in (
    NumericPartial, BooleanPartial, VocabularyPartial, VectorPartial, LabelPartial, Partial,
    NumericStats, BooleanStats, DatetimeStats, VectorStats, VocabularyStats, LabelStats, Preprocessing)}


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {"type": type(obj).__name__,
                **{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return [_plain(item) for item in obj]
    return obj


def _typed(raw: Any) -> Any:
    if isinstance(raw, dict):
        cls = _TYPES[raw["type"]]
        return cls(**{key: _typed(value) for key, value in raw.items() if key != "type"})
    if isinstance(raw, list):
        return tuple(_typed(item) for item in raw)
    return raw


def _dumps(obj: Any, strict: bool = True) -> str:
    return json.dumps(_plain(obj), allow_nan=not strict)


def _loads(text: str, cls: type) -> Any:
    try:
        obj = _typed(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a valid {cls.__name__} JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, cls):
        raise DataError(f"expected a {cls.__name__} JSON, got a {type(obj).__name__}")
    return obj
