"""Fitted preprocessing: statistics learned from the training rows, as data, and the pure
transform that applies them to an Arrow table.

Owns: turning the merged statistics of the training rows (`data.partials`) into the fitted
state (`combine`, `finish` → `Preprocessing`), the transform of a table into numpy blocks
(`transform` → `Encoded`), the model's input shape (`Preprocessing.input_description`),
the label's classes or standardization, and the JSON that stores all of it (never pickle).

Fitting is a reduction over row groups along a fixed merge tree (`data.partials`): the
root partial is the same bits at any world size, and `finish` turns it into the fitted
state; `combine` does the whole tree in one process.

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

Leaves to `data.columns` each column's kind, to `partials` one row group's
statistics and the merge tree, to `summaries` the mergeable arithmetic and its bounds, to
`transforms` each column's fitted state and transform, and to the caller reading row groups,
gathering partials across ranks and dropping unlabelled rows (`label_mask`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from orchestrator.data import codec
from orchestrator.data.columns import ColumnPlan
from orchestrator.data.partials import Partial, reduce, require_columns
from orchestrator.data.summaries import (
    BooleanPartial,
    LabelPartial,
    NumericPartial,
    VectorPartial,
    VocabularyPartial,
    merge_counts,
    merge_moments,
    quantiles,
    select_vocabulary,
)
from orchestrator.data.transforms import (
    KNOTS,
    TINY,
    BooleanStats,
    DatetimeStats,
    LabelStats,
    NumericStats,
    VectorStats,
    VocabularyStats,
    usable,
)
from orchestrator.errors import DataError
from orchestrator.job.columns import embedding_dim

FORMAT_VERSION = 1  # of the JSON; from_json refuses another
MAX_TAGS_PER_ROW = 64  # a tags column's padded width at most


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
    fitted (no value in the training rows, one class only, overflowing values); vectors of two
    lengths, or a vocabulary past its bound, are refused as the partials merge (`partials.merge`)."""
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

    def missing_counts(self) -> dict[str, int]:
        """Training values each feature was missing (null, NaN or ±inf: filled as its kind says), for the
        features that had any."""
        counts = {s.name: (s.seconds.missing if isinstance(s, DatetimeStats) else s.missing) for s in self.columns}
        return {name: count for name, count in counts.items() if count}

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
        require_columns(table, [self.label.name], "finding the labelled rows")
        return usable(table[self.label.name])

    def destandardize(self, values: np.ndarray) -> np.ndarray:
        """Regression predictions back in the label's units."""
        return self.label.destandardize(values)

    def to_json(self) -> str:
        """Strict JSON (no NaN), from which `from_json` rebuilds an equal Preprocessing."""
        return codec.dumps(self)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """The Preprocessing `to_json` wrote; DataError for another format version or malformed text."""
        pre = codec.loads(text, cls, _TYPES)
        if pre.version != FORMAT_VERSION:
            raise DataError(f"the preprocessing was saved in format version {pre.version}; this orchestrator "
                            f"reads version {FORMAT_VERSION}: refit it with this version")
        return pre


def transform(pre: Preprocessing, table: pa.Table) -> Encoded:
    """`table` through the fitted preprocessing: vectorised, no loop over rows. Every feature
    column must be present (DataError naming the absent ones); the label is encoded when present."""
    require_columns(table, [stats.name for stats in pre.columns], "the transform")
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


_TYPES = codec.types(NumericStats, BooleanStats, DatetimeStats, VectorStats, VocabularyStats, LabelStats,
                     Preprocessing)
