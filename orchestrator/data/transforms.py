"""Each column kind's fitted state, and the transform that applies it: frozen data in, numpy out.

Owns: reading an Arrow column as numpy (missing values as NaN, values as string keys, UTC
epoch seconds, vectors as matrices); the fitted state of one column of each kind
(`NumericStats`, `BooleanStats`, `DatetimeStats`, `VectorStats`, `VocabularyStats`) and of
the label (`LabelStats`); and on each, the pure function (fitted state, Arrow column) →
numpy that applies it, vectorised (no Python loop per row), with the bounds that keep values
unseen in training finite.

Leaves to `preprocess` how these states are fitted, the assembly of a whole table and the
JSON; to `summaries` the hash. What each kind's transform does is listed in `preprocess`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.data.summaries import QUANTILE_POINTS, stable_hash
from orchestrator.errors import DataError

Column = pa.Array | pa.ChunkedArray

VALUE_BOUND = 1e4  # |standardized value| at most: a training value past it lies 10^4 std out
ROBUST_CLIP = 5.0  # robust scaling's bound, in IQRs from the median
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the bound of transform `none`
TINY = 1e-12  # a std or IQR below this fraction of the centre's size means a constant column
KNOTS = np.linspace(0.0, 1.0, QUANTILE_POINTS)  # probabilities of the quantile transform's knots
P_CLIP = 1e-7  # the quantile transform's probabilities stay in [P_CLIP, 1 - P_CLIP]: ±5.2 at most
_CYCLES = {"month": 12, "weekday": 7, "hour": 24}
_UNIT_S = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


# ---- reading Arrow columns ------------------------------------------------------------

def arrow(column: Column) -> pa.Array:
    """`column` as one array, a dictionary decoded to its values."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def floats(column: Column) -> np.ndarray:
    """float64 values (bools as 0/1), NaN for null; a view of a float64 column without nulls (read-only)."""
    array = pc.cast(arrow(column), pa.float64())
    if array.null_count:
        array = pc.fill_null(array, math.nan)
    return array.to_numpy(zero_copy_only=False)


def keys(column: Column) -> pa.Array:
    """Each value as a string (integers in decimal, bools as true/false); nulls stay null."""
    return pc.cast(arrow(column), pa.string())


def seconds(column: Column) -> np.ndarray:
    """UTC epoch seconds as float64, NaN for null. Arrow keeps a zoned timestamp in UTC; a
    naive one is taken as UTC; a date is its midnight."""
    array = arrow(column)
    if pa.types.is_timestamp(array.type):
        return floats(pc.cast(array, pa.int64())) / _UNIT_S[array.type.unit]
    if pa.types.is_date32(array.type):
        return floats(pc.cast(array, pa.int32())) * 86400.0
    return floats(pc.cast(array, pa.int64())) / 1000.0  # date64: milliseconds


def list_lengths(array: pa.Array) -> np.ndarray:
    """int64 elements in each row of a list array; 0 for a null row."""
    lengths = pc.fill_null(pc.list_value_length(array), 0)
    return lengths.to_numpy(zero_copy_only=False).astype(np.int64)


def matrix(column: Column, length: int | None, name: str) -> tuple[np.ndarray, int | None]:
    """[n, length] float64 of vector column `name` (all NaN for a null row) and its length,
    learned from the first non-null row when `length` is None. DataError when a row has
    another length."""
    array = arrow(column)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    lengths = list_lengths(array)[valid]
    if length is None and lengths.size:
        length = int(lengths[0])
    wrong = np.flatnonzero(lengths != length)
    if wrong.size:
        raise DataError(f"vector column '{name}' has a row of {lengths[wrong[0]]} values where every row "
                        f"needs {length}: make its lists one length, or leave it out with "
                        f"data.exclude: [{name}]")
    out = np.full((len(array), length or 0), math.nan)
    if length:
        out[valid] = floats(pc.list_flatten(array)).reshape(-1, length)
    return out, length


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """sign(x)·log1p(|x|): log-like at both ends, identity-like near 0."""
    return np.sign(x) * np.log1p(np.abs(x))


def usable(column: Column) -> np.ndarray:
    """bool per row: a label neither null nor (floats) NaN or infinite."""
    array = arrow(column)
    ok = array.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        ok &= np.isfinite(floats(array))
    return ok


# Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9).
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01, 1.0)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00, 1.0)
_P_TAIL = 0.02425


def normal_quantile(p: np.ndarray) -> np.ndarray:
    """The standard normal's quantile at each probability in (0, 1), vectorised (Acklam)."""
    p = np.asarray(p, dtype=np.float64)
    q = p - 0.5
    r = q * q
    central = q * np.polyval(_A, r) / np.polyval(_B, r)
    t = np.sqrt(-2.0 * np.log(np.minimum(p, 1.0 - p)))
    tail = np.polyval(_C, t) / np.polyval(_D, t)
    return np.where(np.abs(q) <= 0.5 - _P_TAIL, central, np.where(q < 0, tail, -tail))


def _with_indicator(values: np.ndarray, missing: np.ndarray | None, fitted_missing: int) -> np.ndarray:
    """[n, 1 or 2]: the values, then the 0/1 indicator (None: nothing missing) when the training rows had
    a missing value."""
    if not fitted_missing:
        return values[:, None]
    indicator = np.zeros(len(values)) if missing is None else missing.astype(np.float64)
    return np.column_stack([values, indicator])


def cycle_positions(s: np.ndarray, parts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each part's position in its cycle for finite UTC epoch seconds `s`: month 0-11, weekday
    0-6 (Monday 0), hour 0-23, as float64."""
    s = np.floor(s)
    days = np.floor(s / 86400.0)
    position = {
        "month": lambda: (s.astype(np.int64).astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
                          % 12).astype(np.float64),
        "weekday": lambda: (days + 3) % 7,  # 1970-01-01 was a Thursday; Monday is 0
        "hour": lambda: np.floor((s - days * 86400.0) / 3600.0),
    }
    return {part: position[part]() for part in parts}


# ---- the fitted state of one column -------------------------------------------------------

@dataclass(frozen=True)
class NumericStats:
    """A fitted numeric column (and a datetime's epoch seconds)."""

    name: str
    transform: str  # standard | robust | quantile | log1p | none
    count: int  # finite training values
    missing: int  # missing training values; > 0 adds the `name__missing` indicator
    mean: float  # of the training values, after sign·log1p for log1p
    std: float  # population std of the same; 1 for a constant column
    median: float  # what a missing value becomes
    iqr: float  # 75th minus 25th percentile
    low: float  # smallest and largest training value
    high: float
    quantiles: tuple[float, ...]  # at KNOTS, for transform quantile; () otherwise

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) + ((f"{self.name}__missing",) if self.missing else ())

    def block(self, column: Column) -> np.ndarray:
        """[n, len(names)] float64: the transformed values, then the missing indicator if fitted."""
        return self.encode(floats(column))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """`block` of float64 values, NaN or inf for missing."""
        missing = ~np.isfinite(x)
        if missing.any():
            x = np.where(missing, self.median, x)
        else:
            missing = None  # the common case: no copy for the imputation, no indicator to build
        return _with_indicator(self._scale(x), missing, self.missing)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        if self.transform in ("standard", "log1p"):
            # In place after the first operation: each pass over a column costs as much as the arithmetic.
            scaled = np.subtract(signed_log1p(x) if self.transform == "log1p" else x, self.mean)
            scaled /= self.std
            return np.clip(scaled, -VALUE_BOUND, VALUE_BOUND, out=scaled)
        if self.transform == "robust":
            spread = self.iqr if self.iqr > TINY * max(1.0, abs(self.median)) else self.std
            return np.clip((x - self.median) / spread, -ROBUST_CLIP, ROBUST_CLIP)
        if self.transform == "quantile":
            # Averaging the interpolations from both ends puts a value tied across knots in the
            # middle of its run (as scikit-learn's QuantileTransformer does): a zero-inflated
            # column's zeros land on the middle of their share, not on its edge.
            q = np.asarray(self.quantiles)
            p = 0.5 * (np.interp(x, q, KNOTS) - np.interp(-x, -q[::-1], -KNOTS[::-1]))
            return normal_quantile(np.clip(p, P_CLIP, 1 - P_CLIP))
        return np.clip(x, -FLOAT32_MAX, FLOAT32_MAX)


@dataclass(frozen=True)
class BooleanStats:
    """A fitted boolean column: 0/1, missing → 0."""

    name: str
    count: int
    missing: int

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) + ((f"{self.name}__missing",) if self.missing else ())

    def block(self, column: Column) -> np.ndarray:
        """[n, len(names)] float64."""
        x = floats(column)
        missing = np.isnan(x)
        return _with_indicator(np.where(missing, 0.0, x), missing, self.missing)


@dataclass(frozen=True)
class DatetimeStats:
    """A fitted datetime column: its standardized epoch seconds and the cycles it shows."""

    name: str
    seconds: NumericStats  # transform standard
    parts: tuple[str, ...]  # month, weekday (and hour for timestamps), each as sin and cos

    @property
    def names(self) -> tuple[str, ...]:
        cycles = tuple(f"{self.name}__{part}_{f}" for part in self.parts for f in ("sin", "cos"))
        return self.seconds.names + cycles

    def block(self, column: Column) -> np.ndarray:
        """[n, len(names)] float64; a missing value's sin and cos are 0."""
        s = seconds(column)
        missing = ~np.isfinite(s)
        s = np.floor(np.where(missing, 0.0, s))
        position = cycle_positions(s, self.parts)
        angles = [2 * np.pi * position[part] / _CYCLES[part] for part in self.parts]
        cycles = [np.where(missing, 0.0, f(angle)) for angle in angles for f in (np.sin, np.cos)]
        return np.column_stack([self.seconds.encode(np.where(missing, math.nan, s)), *cycles])


@dataclass(frozen=True)
class VectorStats:
    """A fitted vector column: per-dimension mean and std."""

    name: str
    transform: str  # standard | log1p | none
    length: int
    missing: int  # training rows null or with a non-finite element; > 0 adds the indicator
    mean: tuple[float, ...]  # per dimension, after sign·log1p for log1p
    std: tuple[float, ...]

    @property
    def names(self) -> tuple[str, ...]:
        dims = tuple(f"{self.name}__{i}" for i in range(self.length))
        return dims + ((f"{self.name}__missing",) if self.missing else ())

    def block(self, column: Column) -> np.ndarray:
        """[n, len(names)] float64; a missing element becomes its dimension's mean before scaling."""
        x, _ = matrix(column, self.length, self.name)
        finite = np.isfinite(x)
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        x = np.where(finite, signed_log1p(x) if self.transform == "log1p" else x, mean)
        if self.transform == "none":
            scaled = np.clip(x, -FLOAT32_MAX, FLOAT32_MAX)
        else:
            scaled = np.clip((x - mean) / std, -VALUE_BOUND, VALUE_BOUND)
        indicator = ~finite.all(axis=1)
        return np.column_stack([scaled, indicator.astype(np.float64)] if self.missing else [scaled])


@dataclass(frozen=True)
class VocabularyStats:
    """A fitted categorical or tags column: id 0 = missing, 1 = rare or unseen, 2.. = `values`
    (or 2 + stable_hash % hash_buckets)."""

    name: str
    kind: str  # categorical | tags
    value_type: str  # Arrow type of one value, to give `values` back their type
    values: tuple[str, ...]  # the vocabulary as strings, most frequent first; () with hash_buckets
    counts: tuple[int, ...]  # training rows (tags: elements) of each value
    hash_buckets: int | None
    embedding_dim: int  # the override, else job.columns.embedding_dim(cardinality)
    count: int  # non-null training values (tags: elements)
    missing: int
    width: int = 1  # tags: ids per row in `padded`; categorical: 1

    @property
    def cardinality(self) -> int:
        """Ids in use, the two reserved ones included."""
        return 2 + (self.hash_buckets or len(self.values))

    @cached_property
    def _value_set(self) -> pa.Array:
        return pa.array(self.values, pa.string())

    def ids(self, values: pa.Array) -> np.ndarray:
        """int64 id of each value of a string array (see `keys`)."""
        if self.hash_buckets:
            ids = (stable_hash(values) % np.uint64(self.hash_buckets)).astype(np.int64) + 2
        else:
            found = pc.fill_null(pc.index_in(values, value_set=self._value_set), -1)
            ids = found.to_numpy(zero_copy_only=False).astype(np.int64) + 2
        ids[~values.is_valid().to_numpy(zero_copy_only=False)] = 0
        return ids

    def block(self, column: Column) -> np.ndarray:
        """int64 [n]: a categorical column's ids."""
        return self.ids(keys(column))

    def bag(self, column: Column) -> tuple[np.ndarray, np.ndarray]:
        """A tags column as EmbeddingBag input: the flat int64 ids of every row's elements, and
        int64 offsets [n] where each row's bag starts (a null or empty row: an empty bag)."""
        array = arrow(column)
        offsets = np.concatenate([[0], np.cumsum(list_lengths(array))])[:-1].astype(np.int64)
        return self.ids(keys(pc.list_flatten(array))), offsets

    def padded(self, column: Column) -> np.ndarray:
        """int64 [n, width]: each row's element ids, then 0s (rows longer than `width` keep their first ones)."""
        ids, offsets = self.bag(column)
        lengths = np.diff(np.r_[offsets, len(ids)])
        rows = np.repeat(np.arange(len(offsets)), lengths)
        slots = np.arange(len(ids)) - np.repeat(offsets, lengths)
        out = np.zeros((len(offsets), self.width), np.int64)
        keep = slots < self.width
        out[rows[keep], slots[keep]] = ids[keep]
        return out

    def original(self) -> tuple:
        """`values` in their column's Python type (int, bool or str)."""
        if self.value_type.startswith(("int", "uint")):
            return tuple(int(v) for v in self.values)
        if self.value_type == "bool":
            return tuple(v == "true" for v in self.values)
        return self.values


@dataclass(frozen=True)
class LabelStats:
    """The fitted label: classes (classification) or mean and std (regression)."""

    name: str
    task: str  # classification | regression
    count: int  # usable training labels
    null_labels: int  # null, NaN or infinite training labels
    mean: float  # regression: the target's mean and std (1 if constant)
    std: float
    classes: tuple  # classification: sorted, as their Python values; id i is classes[i]
    counts: tuple[int, ...]  # training rows of each class

    def encode(self, column: Column) -> np.ndarray:
        """Regression: float32 (y - mean) / std, NaN where null. Classification: int64 class ids,
        -1 for a null label or a class the training rows never had."""
        if self.task == "regression":
            return ((floats(column) - self.mean) / self.std).astype(np.float32)
        array = arrow(column)
        value_set = pa.array(list(self.classes)).cast(array.type)
        found = pc.fill_null(pc.index_in(array, value_set=value_set), -1)
        return found.to_numpy(zero_copy_only=False).astype(np.int64)

    def destandardize(self, values: np.ndarray) -> np.ndarray:
        """Regression predictions back in the label's units: values * std + mean (float64)."""
        return np.asarray(values, dtype=np.float64) * self.std + self.mean

    def class_values(self, ids: np.ndarray) -> list:
        """The class of each id, as its Python value; None for -1."""
        return [self.classes[i] if i >= 0 else None for i in np.asarray(ids).tolist()]
