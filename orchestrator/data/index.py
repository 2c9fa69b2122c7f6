"""The types that describe a dataset from its Parquet footers: `DatasetIndex` and `RowGroup`.

`data.source` builds them on the driver; `data.plan` (pure arithmetic) and
`data.reader` consume them inside workers. They are small, frozen and
picklable, because they travel to every worker in the train loop's config.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs

from orchestrator import storage


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: the unit of work the plan hands to ranks."""

    file: int  # index into DatasetIndex.files
    index: int  # row-group index inside that file
    num_rows: int
    first_row: int  # global id of the first row; ids count rows across all files in file order


@dataclass(frozen=True)
class DatasetIndex:
    """Everything the plan and the reader need to know about the data, from footers only."""

    url: str  # what the user named (absolute for local paths)
    files: tuple[str, ...]  # paths inside the filesystem of storage.arrow_filesystem(url), sorted
    row_groups: tuple[RowGroup, ...]  # in file order, then row-group order; empty ones left out
    features: tuple[str, ...]
    label: str
    num_rows: int
    # Each feature's kind and transform options, then the label's (data.columns.ColumnPlan); () = not planned.
    columns: tuple = ()
    # Nulls per planned column as the footer statistics count them; None where a file has no count.
    null_counts: tuple[tuple[str, int | None], ...] = ()

    @property
    def label_nulls(self) -> int | None:
        """Rows whose label is null, as far as the footers know."""
        return dict(self.null_counts).get(self.label)

    def filesystem(self) -> pyarrow.fs.FileSystem:
        """The pyarrow filesystem in which `files` live, re-created from `url` on each call."""
        return storage.arrow_filesystem(self.url)[0]
