"""Finding Parquet files and reading their footers once, on the driver → `DatasetIndex`.

This module owns discovery (a file, a directory, a glob on any fsspec
filesystem), reading every footer exactly once, and checking that the files
can serve the job: the columns planned (`data.columns`: each column's kind
from its Arrow type or the job's override), the same types in every file, at
least one row; nulls counted from the footer statistics. Every problem found
is reported in one DataError.

It reads no row data and knows nothing about ranks or torch: splitting the
row groups between ranks is `data/plan.py`, reading rows is `data/reader.py`.
The `DatasetIndex` it returns is small and picklable because it travels to
every worker inside the train loop config.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute
import pyarrow.fs
import pyarrow.parquet as pq

from orchestrator import settings, storage
from orchestrator.data.columns import plan_columns
from orchestrator.data.index import DatasetIndex, RowGroup
from orchestrator.errors import DataError, first_line
from orchestrator.job.columns import ColumnSpec

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_GLOB_CHARS = ("*", "?", "[")
_HIDDEN_PREFIXES = ("_", ".")
_MAX_LISTED_PROBLEMS = 50


def scan(url: str, label: str, features: Sequence[str] | None = None, *, exclude: Sequence[str] = (),
         overrides: Mapping[str, ColumnSpec] | None = None, classification: bool = False) -> DatasetIndex:
    """Find the Parquet files at `url`, read their footers once and plan the job's columns.

    `url` is a file, a directory (every `*.parquet`, `*.pq`, `*.parq` below it,
    skipping names that start with `_` or `.`) or a glob. `features` None means
    every column except the label and `exclude`, in the first file's schema
    order. Each column gets its kind (`data.columns.plan_columns`: inferred from
    its Arrow type, or the `overrides`); the label's kind follows
    `classification`. Nulls are data, counted from the footers' statistics.
    Raises one DataError listing every problem found.
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
    try:
        plans = plan_columns(schemas[0][1], label, features, exclude, overrides or {}, classification=classification)
    except DataError as error:
        raise DataError(f"{schemas[0][0]}: {error}") from None
    names = tuple(plan.name for plan in plans if plan.role == "feature")
    _check_schemas(schemas, label, names, problems)

    row_groups, num_rows = _row_groups(files, footers)
    if not problems and num_rows == 0:
        problems.append(f"the dataset has no rows at all ({len(files)} file(s), 0 rows)")
    if problems:
        raise _data_error(url, problems)

    return DatasetIndex(
        url=url,
        files=tuple(files),
        row_groups=row_groups,
        features=names,
        label=label,
        num_rows=num_rows,
        columns=plans,
        null_counts=tuple((plan.name, _null_count(readable, plan.name)) for plan in plans),
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


def _null_count(readable, name: str) -> int | None:
    """Nulls in top-level column `name` by the footer statistics; None when a row group has no count
    (always for nested columns such as lists, whose leaves count elements)."""
    total = 0
    for _, md in readable:
        leaves = {md.schema.column(i).path: i for i in range(md.num_columns)}
        j = leaves.get(name)
        if j is None:
            return None
        for i in range(md.num_row_groups):
            stats = md.row_group(i).column(j).statistics
            if stats is None or not stats.has_null_count:
                return None
            total += stats.null_count
    return total


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


def _data_error(url: str, problems: list[str]) -> DataError:
    """One DataError listing every problem (the first fifty, then a count of the rest)."""
    shown = problems[:_MAX_LISTED_PROBLEMS]
    lines = "\n".join(f"  - {p}" for p in shown)
    rest = len(problems) - len(shown)
    more = f"\n  ... and {rest} more problem(s) of the same kinds" if rest else ""
    return DataError(f"The data at {url!r} cannot serve this job ({len(problems)} problem(s)):\n{lines}{more}")


def sample_cardinalities(index: DatasetIndex) -> dict[str, tuple[int, int]]:
    """For each categorical or tags feature: (distinct values, rows) in the dataset's first row group —
    a lower bound on its cardinality, read for `orchestrator validate` (one row group, those columns only)."""
    names = [p.name for p in index.columns if p.role == "feature" and p.kind in ("categorical", "tags")]
    if not names or not index.row_groups:
        return {}
    first = index.row_groups[0]
    with index.filesystem().open_input_file(index.files[first.file]) as handle:
        table = pq.ParquetFile(handle).read_row_group(first.index, columns=names)
    found = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pa.compute.list_flatten(column)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        found[name] = (len(pa.compute.unique(column.drop_null())), first.num_rows)
    return found


def schema_names(index: DatasetIndex) -> list[str]:
    """The column names of the dataset's first file (footer only)."""
    with index.filesystem().open_input_file(index.files[0]) as handle:
        return pq.ParquetFile(handle).schema_arrow.names
