"""The benchmark datasets: regression rows, 32 float32 features x0…x31 and a float32 label y.

"1×" and "10×" differ only in the number of files: every file has the same
number of row groups of the same size, so a row group (and a batch) is the
same unit of work at both sizes. Row groups hold a multiple of the batch
size, so every plain reader yields exactly rows / 1024 batches and two ranks
get equal halves. A dataset is written once under benchmarks/.work/ and
reused while its layout (recorded in a JSON file beside it) is unchanged.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import FEATURES, LABEL, WORK


@dataclass(frozen=True)
class Layout:
    files: int
    row_groups_per_file: int
    rows_per_group: int

    @property
    def rows(self) -> int:
        return self.files * self.row_groups_per_file * self.rows_per_group

    def describe(self) -> str:
        return (f"{self.rows:,} rows × {len(FEATURES) + 1} float32 columns: {self.files} files × "
                f"{self.row_groups_per_file} row groups × {self.rows_per_group:,} rows")


def layouts(quick: bool) -> dict[str, Layout]:
    """The 1× and 10× layouts (full: 2,097,152 and 20,971,520 rows)."""
    rows_per_group = 4096 if quick else 65_536
    return {"1x": Layout(8, 4, rows_per_group), "10x": Layout(80, 4, rows_per_group)}


def ensure(name: str, layout: Layout) -> pathlib.Path:
    """The directory of dataset `name` with `layout`, written now unless already there."""
    directory = WORK / f"data-{name}"
    stamp = WORK / f"data-{name}.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(layout):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.parquet"):
        old.unlink()
    weights = np.random.default_rng(12345).uniform(-2, 2, size=len(FEATURES))
    for i in range(layout.files):
        _write_file(directory / f"part-{i:05d}.parquet", layout, weights, seed=i)
    stamp.write_text(json.dumps(asdict(layout)))
    return directory


def _write_file(path: pathlib.Path, layout: Layout, weights: np.ndarray, seed: int) -> None:
    rows = layout.row_groups_per_file * layout.rows_per_group
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES)), dtype=np.float32)
    y = (x @ weights.astype(np.float32) + 0.5 + rng.normal(0, 0.1, rows).astype(np.float32)).astype(np.float32)
    table = pa.table({**{name: x[:, j] for j, name in enumerate(FEATURES)}, LABEL: y})
    temporary = path.with_name("." + path.name + ".tmp")
    pq.write_table(table, temporary, row_group_size=layout.rows_per_group)
    temporary.rename(path)


def warm_page_cache(directory: pathlib.Path) -> None:
    """Read every file once so each reader starts from the same (cached) state."""
    for path in sorted(directory.glob("*.parquet")):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
