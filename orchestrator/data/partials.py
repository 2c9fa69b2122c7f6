"""One row group's statistics for fitting, and how they merge: a fixed tree over the row groups.

Owns `fit_partial` (one row group's training rows → `Partial`: small, picklable, JSON-able, to be
gathered across ranks) and the merge tree: partials merge (`merge`) along a fixed binary tree over
the row groups [0, n), node [lo, hi) merging [lo, mid) and [mid, hi) with mid = (lo + hi) // 2.
Every node is a function of its row groups alone, so a rank may compute the nodes inside its own
range (`tree_nodes`, `reduce`) and gather the others' (`assemble`): the root is the same bits at
any world size, and no rank holds more than O(log n) partials of its own. Memory does not grow
with the data: per numeric column a sketch of at most summaries.MERGED_POINTS points, per
vocabulary at most summaries.VOCABULARY_SCAN_LIMIT values.

Leaves to `summaries` the arithmetic of each merge, to `transforms` reading Arrow columns, and
to `preprocess` turning the root into the fitted state. No Ray, no torch, no files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.data import codec, summaries
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
    sketch,
    value_counts,
)
from orchestrator.data.transforms import (
    Column,
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


@dataclass(frozen=True)
class Partial:
    """One row group's statistics: small, picklable and JSON-able, to be gathered across ranks."""

    rows: int
    columns: tuple  # one *Partial per feature plan, in plan order
    label: LabelPartial | None

    def to_json(self) -> str:
        """JSON from which `from_json` rebuilds an equal Partial (moments that overflowed are Infinity)."""
        return codec.dumps(self, strict=False)

    @classmethod
    def from_json(cls, text: str) -> Partial:
        """The Partial `to_json` wrote; DataError for malformed text."""
        return codec.loads(text, cls, _TYPES)


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


def require_columns(table: pa.Table, names: Sequence[str], doing: str) -> None:
    """A DataError naming the columns of `names` that `table` lacks (what was `doing`, what it has)."""
    absent = [name for name in names if name not in table.column_names]
    if absent:
        raise DataError(f"{doing} needs column(s) {', '.join(map(repr, absent))}, which the table lacks "
                        f"(it has: {', '.join(table.column_names)}); the data must keep the columns the "
                        "preprocessing was fitted on")


def fit_partial(plans: Sequence[ColumnPlan], table: pa.Table) -> Partial:
    """One row group's statistics from `table`, its training rows (only the planned columns are
    read; a missing one is a DataError). Pure: the same table gives the same partial."""
    require_columns(table, [plan.name for plan in plans], "fitting preprocessing")
    label = next((plan for plan in plans if plan.role == "label"), None)
    return Partial(
        rows=table.num_rows,
        columns=tuple(_PARTIALS[plan.kind](plan, table[plan.name])
                      for plan in plans if plan.role == "feature"),
        label=_label_partial(label, table[label.name]) if label else None,
    )


# ---- the merge tree (see the module doc): partials of row groups [lo, hi) -----------------------

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


_TYPES = codec.types(NumericPartial, BooleanPartial, VocabularyPartial, VectorPartial, LabelPartial, Partial)
