"""Finding Parquet files and reading their footers once, on the driver → `DatasetIndex`.

This module owns discovery (a file, a directory, a glob on any fsspec
filesystem), reading every footer exactly once, and checking that the files
can serve the job: same types for the needed columns, a numeric label and
numeric features, no nulls the statistics know of, at least one row. Every
problem found is reported in one DataError.

It reads no row data and knows nothing about ranks or torch: splitting the
row groups between ranks is `data/plan.py`, reading rows is `data/reader.py`.
The `DatasetIndex` it returns is small and picklable because it travels to
every worker inside the train loop config.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from orchestrator import settings, storage
from orchestrator.data.index import DatasetIndex, RowGroup
from orchestrator.errors import DataError, first_line

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_GLOB_CHARS = ("*", "?", "[")
_HIDDEN_PREFIXES = ("_", ".")
_MAX_LISTED_PROBLEMS = 50


def scan(url: str, label: str, features: Sequence[str] | None = None) -> DatasetIndex:
    """Find the Parquet files at `url`, read their footers once and check them for this job.

    `url` is a file, a directory (every `*.parquet`, `*.pq`, `*.parq` below it,
    skipping names that start with `_` or `.`) or a glob. `features` None means
    every column except the label, in the first file's schema order. Raises one
    DataError listing every problem found.
    """
    url = storage.absolute(url)
    files = discover(url)
    arrow_fs, _ = storage.arrow_filesystem(url)
    footers = _read_footers(arrow_fs, files)

    problems = [f"{path}: {footer}" for path, footer in zip(files, footers) if isinstance(footer, str)]
    readable = [(path, md) for path, md in zip(files, footers) if isinstance(md, pq.FileMetaData)]
    if not readable:
        raise _data_error(url, problems)

    schemas = [(path, md.schema.to_arrow_schema()) for path, md in readable]
    if features is None:
        features = [name for name in schemas[0][1].names if name != label]
    features = tuple(features)
    problems += _check_column_list(label, features)
    types = _check_schemas(schemas, label, features, problems)
    _check_types(types, label, features, problems)
    _check_nulls(readable, (label, *features), problems)

    row_groups, num_rows = _row_groups(files, footers)
    if not problems and num_rows == 0:
        problems.append(f"the dataset has no rows at all ({len(files)} file(s), 0 rows)")
    if problems:
        raise _data_error(url, problems)

    return DatasetIndex(
        url=url,
        files=tuple(files),
        row_groups=row_groups,
        features=features,
        label=label,
        label_is_integer=_is_integer(types[label]),
        label_range=_label_range(footers, label, row_groups),
        num_rows=num_rows,
    )


def discover(url: str) -> list[str]:
    """Sorted, deduplicated Parquet file paths at `url` (usable in its arrow filesystem); DataError if none."""
    fs, path = storage.fsspec_filesystem(url)
    try:
        if any(ch in path for ch in _GLOB_CHARS):
            found: list[str] = []
            for match, info in fs.glob(path, detail=True).items():
                found += _parquet_below(fs, match) if info["type"] == "directory" else [match]
            what = f"files matching the glob {path!r}"
        else:
            try:
                info = fs.info(path)
            except FileNotFoundError:
                raise DataError(f"Cannot read data at {url!r}: the path does not exist.") from None
            found = _parquet_below(fs, path) if info["type"] == "directory" else [path]
            what = f"files ending {', '.join(PARQUET_SUFFIXES)} below the directory (names starting _ or . skipped)"
    except OSError as exc:
        raise DataError(f"Cannot list data at {url!r}: {exc}") from None
    if not found:
        raise DataError(f"No Parquet files at {url!r}: looked for {what} and found none.")
    return sorted(set(found))


def _parquet_below(fs, root: str) -> list[str]:
    """Parquet files anywhere below directory `root`, skipping hidden or `_`-prefixed names."""
    root = root.rstrip("/")
    files = []
    for path, info in fs.find(root, detail=True).items():
        parts = posixpath.relpath(path, root).split("/") if root else path.split("/")
        if info["type"] != "file" or any(p.startswith(_HIDDEN_PREFIXES) for p in parts):
            continue
        if parts[-1].lower().endswith(PARQUET_SUFFIXES):
            files.append(path)
    return files


def _read_footers(arrow_fs: pyarrow.fs.FileSystem, files: list[str]) -> list[pq.FileMetaData | str]:
    """Each file's footer, or a string saying why it cannot be read; in a thread pool (I/O bound)."""

    def read(path: str) -> pq.FileMetaData | str:
        try:
            return pq.read_metadata(path, filesystem=arrow_fs)
        except (pa.ArrowException, OSError) as exc:
            return f"cannot read the Parquet footer; the file is not Parquet or is corrupt ({first_line(exc)})"

    threads = max(1, min(settings.FOOTER_READ_THREADS.get_int(), len(files)))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="parquet-footer") as pool:
        return list(pool.map(read, files))


def _check_column_list(label: str, features: tuple[str, ...]) -> list[str]:
    """Problems with the requested column names themselves, before looking at any file."""
    problems = []
    if not features:
        problems.append(f"no feature columns: the data has no column besides the label {label!r}")
    if label in features:
        problems.append(f"the label column {label!r} is also listed as a feature")
    duplicates = sorted({f for f in features if features.count(f) > 1})
    if duplicates:
        problems.append(f"feature columns listed more than once: {', '.join(duplicates)}")
    return problems


def _check_schemas(schemas, label: str, features: tuple[str, ...], problems: list[str]) -> dict[str, pa.DataType]:
    """Each needed column's type, taken from the first file that has it; mismatches go to problems."""
    types: dict[str, pa.DataType] = {}
    where: dict[str, str] = {}
    for path, schema in schemas:
        for role, name in [("label", label)] + [("feature", f) for f in dict.fromkeys(features)]:
            index = schema.get_field_index(name)
            if index < 0:
                available = ", ".join(schema.names)
                problems.append(f"{path}: {role} column {name!r} is missing; available columns: {available}")
                continue
            dtype = schema.field(index).type
            if name not in types:
                types[name], where[name] = dtype, path
            elif dtype != types[name]:
                problems.append(
                    f"{path}: column {name!r} has type {dtype}, but {types[name]} in {where[name]} "
                    "(the first file that has it)"
                )
    return types


def _is_integer(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_boolean(dtype)


def _check_types(types: dict[str, pa.DataType], label: str, features: tuple[str, ...], problems: list[str]) -> None:
    """The label and every feature must be integer, floating point or boolean."""
    for role, name in [("label", label)] + [("feature", f) for f in dict.fromkeys(features)]:
        dtype = types.get(name)
        if dtype is not None and not (_is_integer(dtype) or pa.types.is_floating(dtype)):
            problems.append(
                f"{role} column {name!r} has Arrow type {dtype}; allowed: integer, floating point or boolean"
            )


def _column_indexes(md: pq.FileMetaData) -> dict[str, int]:
    """Top-level leaf column name → its index in the row-group column chunks."""
    return {md.schema.column(i).path: i for i in range(md.num_columns)}


def _check_nulls(readable, columns: tuple[str, ...], problems: list[str]) -> None:
    """Nulls in the needed columns, as far as the footer statistics know (absent stats count as none)."""
    for path, md in readable:
        indexes = _column_indexes(md)
        for name in dict.fromkeys(columns):
            j = indexes.get(name)
            if j is None:
                continue
            nulls = 0
            for i in range(md.num_row_groups):
                stats = md.row_group(i).column(j).statistics
                if stats is not None and stats.has_null_count:
                    nulls += stats.null_count
            if nulls:
                problems.append(f"{path}: column {name!r} has {nulls} null value(s); nulls are not allowed")


def _row_groups(files: list[str], footers) -> tuple[tuple[RowGroup, ...], int]:
    """Every non-empty row group in file order with its global first-row id, and the total rows."""
    row_groups = []
    next_row = 0
    for f, md in enumerate(footers):
        if not isinstance(md, pq.FileMetaData):
            continue
        for i in range(md.num_row_groups):
            rows = md.row_group(i).num_rows
            if rows > 0:
                row_groups.append(RowGroup(file=f, index=i, num_rows=rows, first_row=next_row))
                next_row += rows
    return tuple(row_groups), next_row


def _label_range(footers, label: str, row_groups: tuple[RowGroup, ...]) -> tuple[float, float] | None:
    """(min, max) of the label over every row group's statistics; None if any row group lacks them."""
    label_column = {}
    low, high = float("inf"), float("-inf")
    for rg in row_groups:
        md = footers[rg.file]
        if rg.file not in label_column:
            label_column[rg.file] = _column_indexes(md)[label]
        stats = md.row_group(rg.index).column(label_column[rg.file]).statistics
        if stats is None or not stats.has_min_max:
            return None
        try:
            low, high = min(low, float(stats.min)), max(high, float(stats.max))
        except (TypeError, ValueError):
            return None
    return (low, high) if row_groups else None


def _data_error(url: str, problems: list[str]) -> DataError:
    """One DataError listing every problem (the first fifty, then a count of the rest)."""
    shown = problems[:_MAX_LISTED_PROBLEMS]
    lines = "\n".join(f"  - {p}" for p in shown)
    rest = len(problems) - len(shown)
    more = f"\n  ... and {rest} more problem(s) of the same kinds" if rest else ""
    return DataError(f"The data at {url!r} cannot serve this job ({len(problems)} problem(s)):\n{lines}{more}")
