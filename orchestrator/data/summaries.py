"""Mergeable summaries of one row group's column, and a hash that is the same everywhere.

Owns what one row group contributes to fitting, as small frozen data (`NumericPartial`,
`BooleanPartial`, `VocabularyPartial`, `VectorPartial`, `LabelPartial`), and the arithmetic
that makes fitting a reduction: moments (count, mean, sum of squared deviations) merged with
Chan et al.'s pairwise update; a quantile sketch per row group, two sketches merged into one of
at most MERGED_POINTS (exact while the values are few, else the quantiles of their weighted union);
value counts with their memory bound, and the vocabulary chosen from merged counts; and
`stable_hash`, a 64-bit hash of strings computed with numpy, the same in every process and
on every machine. Each merge, fed the same pieces in the same order, gives the same bits;
`data.preprocess` feeds them along its fixed merge tree.

Leaves to `data.preprocess` which summaries each column kind needs, reading Arrow columns
into them, and the fitted state. No Ray, no torch, no files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import DataError

# Points in one row group's quantile sketch (2 KiB per numeric column per row group).
# A row group with at most this many values keeps them all, so its quantiles are exact;
# a larger one keeps its values at the probabilities (i + 0.5) / QUANTILE_POINTS, each
# standing for count / QUANTILE_POINTS values. The merged quantiles are those of that
# weighted sample: off from the exact ones by at most about 1 / QUANTILE_POINTS in rank.
QUANTILE_POINTS = 256
# Distinct values of one column a vocabulary partial may hold, in one row group or merged
# over many: partials are gathered onto every worker. Past it, the column needs `hash_buckets`.
VOCABULARY_SCAN_LIMIT = 200_000


# ---- one row group's summary of one column, as data -------------------------------------

@dataclass(frozen=True)
class NumericPartial:
    """One row group's numeric (or datetime: epoch seconds) column."""

    count: int  # finite values
    missing: int  # null, NaN, +inf, -inf
    mean: float  # of the values, after sign(x)·log1p(|x|) for transform log1p
    m2: float  # sum of squared deviations from `mean`
    low: float | None  # smallest finite raw value; None when count is 0
    high: float | None
    sketch: tuple[float, ...]  # summaries.sketch of the raw finite values


@dataclass(frozen=True)
class BooleanPartial:
    """One row group's boolean column."""

    count: int
    missing: int


@dataclass(frozen=True)
class VocabularyPartial:
    """One row group's categorical values or tags elements, as strings, with their counts."""

    value_type: str  # Arrow type of one value (a dictionary's values, a list's elements)
    count: int  # non-null values or elements
    missing: int  # null values or elements
    values: tuple[str, ...]  # () with hash_buckets
    counts: tuple[int, ...]
    longest: int = 1  # tags: the most elements in one row; categorical: 1


@dataclass(frozen=True)
class VectorPartial:
    """One row group's vector column."""

    length: int | None  # None when every row was null
    missing: int  # rows null or holding a non-finite element
    count: tuple[int, ...]  # per dimension: finite elements
    mean: tuple[float, ...]
    m2: tuple[float, ...]


@dataclass(frozen=True)
class LabelPartial:
    """One row group's label: moments (regression) or classes with their counts (classification)."""

    null_labels: int  # null labels (and NaN or inf ones)
    count: int  # usable labels
    mean: float  # regression
    m2: float
    values: tuple  # classification: the classes seen, as Python values
    counts: tuple[int, ...]


# ---- the arithmetic ------------------------------------------------------------------------

Moments = tuple  # (count, mean, m2): scalars, or arrays of one value per dimension


def moments(x: np.ndarray) -> Moments:
    """(count, mean, m2) of the finite values of `x` along axis 0, m2 being the sum of squared
    deviations from the mean; a 2-D `x` gives one of each per column."""
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    everywhere = bool(finite.all())  # then the masks change nothing: skip them (same values, same sums)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: inf moments, refused by the caller
        mean = (x if everywhere else np.where(finite, x, 0.0)).sum(axis=0) / np.maximum(count, 1)
        deviation = x - mean
        if not everywhere:
            deviation[~finite] = 0.0
        m2 = (deviation * deviation).sum(axis=0)
    return count, mean, m2


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of two disjoint sets of values (Chan, Golub and LeVeque's pairwise update),
    stable where the sum-of-squares formula cancels. Not commutative in its last bits: merge in
    a fixed order."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    share = np.where(n > 0, nb / np.maximum(n, 1), 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        delta = mb - ma
        return n, ma + delta * share, sa + sb + delta * delta * na * share


_SKETCH_PROBS = (np.arange(QUANTILE_POINTS) + 0.5) / QUANTILE_POINTS
# Points a merged sketch keeps: more than a row group's, so that re-summarizing at each level
# of the merge tree (a few dozen levels at most) adds little to the leaves' 1/QUANTILE_POINTS.
MERGED_POINTS = 4 * QUANTILE_POINTS
_MERGED_PROBS = (np.arange(MERGED_POINTS) + 0.5) / MERGED_POINTS


def sketch(values: np.ndarray) -> tuple[float, ...]:
    """One row group's quantile sketch of its finite `values` (see QUANTILE_POINTS): all of them
    sorted when they are few, else their Hazen quantiles at (i + 0.5) / QUANTILE_POINTS."""
    if values.size <= QUANTILE_POINTS:
        return tuple(np.sort(values).tolist())
    # np.quantile's "hazen" method, computed from one sort: numpy's SIMD sort is ~10x faster than the
    # partitions np.quantile makes for 256 points. Same virtual index and interpolation as numpy's.
    ordered = np.sort(values)
    index = np.clip(ordered.size * _SKETCH_PROBS - 0.5, 0, ordered.size - 1)
    below = np.floor(index).astype(np.int64)
    above = np.minimum(below + 1, ordered.size - 1)
    a, b, t = ordered[below], ordered[above], index - below
    return tuple(np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t).tolist())


def quantiles(sketches: Sequence[tuple[int, Sequence[float]]], probs: np.ndarray, low: float,
              high: float) -> np.ndarray:
    """The quantiles at `probs` of the union of row groups, from each one's (count, sketch):
    every sketch point weighs count / len(sketch); a point sits at the middle of its weight in
    the cumulative order, with `low` at 0 and `high` at 1, and quantiles interpolate linearly
    between points. When every sketch is exact this is numpy's `method="hazen"`."""
    kept = [(count, points) for count, points in sketches if len(points)]
    values = np.concatenate([np.asarray(points, dtype=np.float64) for _, points in kept])
    weights = np.concatenate([np.full(len(points), count / len(points)) for count, points in kept])
    order = np.argsort(values, kind="stable")  # ties keep row-group order: the same bits every time
    values, weights = values[order], weights[order]
    cumulative = np.cumsum(weights)
    positions = (cumulative - weights / 2) / cumulative[-1]
    return np.interp(probs, np.r_[0.0, positions, 1.0], np.r_[low, values, high])


def merge_sketches(a: tuple[int, Sequence[float]], b: tuple[int, Sequence[float]], low: float,
                   high: float) -> tuple[float, ...]:
    """One sketch of the union of two (count, sketch) pairs: every value of both, sorted, while both
    hold all their values and they number at most MERGED_POINTS; else the union's `quantiles` at
    MERGED_POINTS Hazen probabilities (each point then weighs count / MERGED_POINTS)."""
    (count_a, points_a), (count_b, points_b) = a, b
    if len(points_a) == count_a and len(points_b) == count_b and count_a + count_b <= MERGED_POINTS:
        return tuple(sorted((*points_a, *points_b)))
    return tuple(quantiles([a, b], _MERGED_PROBS, low, high).tolist())


def value_counts(values: pa.Array, column: str, fix: str) -> tuple[tuple, tuple[int, ...]]:
    """The distinct non-null `values` (as Python values) and how often each occurs, in order of
    first appearance. DataError naming `column` and the way out `fix` when there are more than
    VOCABULARY_SCAN_LIMIT."""
    counted = pc.value_counts(pc.drop_null(values))
    if len(counted) > VOCABULARY_SCAN_LIMIT:
        raise DataError(f"column '{column}' has {len(counted)} distinct values in one row group, more than "
                        f"the {VOCABULARY_SCAN_LIMIT} a vocabulary may scan: {fix}")
    return tuple(counted.field("values").to_pylist()), tuple(counted.field("counts").to_pylist())


def merge_counts(parts: Iterable[tuple[Sequence, Sequence[int]]]) -> dict:
    """Value → total count over every (values, counts) pair."""
    total: dict = {}
    for values, counts in parts:
        for value, count in zip(values, counts):
            total[value] = total.get(value, 0) + count
    return total


def select_vocabulary(counts: Mapping[str, int], min_frequency: int,
                      max_categories: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The values counted at least `min_frequency` times, most frequent first (ties by value, so
    the choice never depends on the order counts were merged), at most `max_categories`; and
    their counts."""
    kept = sorted((-count, value) for value, count in counts.items() if count >= min_frequency)
    kept = kept[:max_categories]
    return tuple(value for _, value in kept), tuple(-count for count, _ in kept)


_PRIME = np.uint64(0x100000001B3)  # the 64-bit FNV prime, as the polynomial's base
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def stable_hash(keys: pa.Array) -> np.ndarray:
    """A uint64 hash of each string's UTF-8 bytes, the same in every process, run and machine
    (unlike Python's `hash`): h = sum((byte_i + 1) * P**(len - 1 - i)) mod 2**64, mixed with
    (length + 1) and finished with splitmix64. Vectorised over the bytes; a null hashes as ''."""
    keys = pc.fill_null(keys.cast(pa.large_string()), "")
    _, offsets_buffer, data_buffer = keys.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[keys.offset:keys.offset + len(keys) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    positions = np.arange(offsets[0], offsets[-1])
    powers = np.cumprod(np.r_[np.uint64(1), np.full(max(int(lengths.max(initial=0)) - 1, 0), _PRIME)])
    exponents = np.repeat(ends, lengths) - 1 - positions  # bytes after each one in its string
    terms = (data[positions].astype(np.uint64) + np.uint64(1)) * powers[exponents]
    running = np.r_[np.uint64(0), np.cumsum(terms, dtype=np.uint64)]  # wraps modulo 2**64, as intended
    z = running[ends - offsets[0]] - running[starts - offsets[0]]
    z ^= (lengths.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
