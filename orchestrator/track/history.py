"""The metric history: one row per (step, name), kept by every rank and saved in every checkpoint.

Owns the schema of `metrics.parquet` and the `History` that grows step by
step inside the worker loop. Restored from the checkpoint a group resumes
from, so replayed steps are recorded once and no step is missing, whatever
failed. Knows nothing about Ray or the driver.
"""

from __future__ import annotations

import pyarrow as pa

# metrics.parquet: one row per (step, name). Names: train/loss and train/lr at every
# step; train/samples_per_s at log points; epoch/train_loss, epoch/samples_per_s and
# val/loss, val/accuracy or val/r2 at each epoch's last step.
HISTORY_SCHEMA = pa.schema(
    [("step", pa.int64()), ("epoch", pa.int64()), ("name", pa.string()), ("value", pa.float64()), ("time", pa.float64())]
)


class History:
    """The run's metric rows, one per (step, name), kept by each rank and saved in every checkpoint.

    Restored from the checkpoint a run resumes from, so replayed steps are
    recorded once and no step is ever missing, whatever failed.
    """

    def __init__(self, table: pa.Table | None = None):
        self._columns: dict[str, list] = {name: [] for name in HISTORY_SCHEMA.names}
        if table is not None:
            for name in HISTORY_SCHEMA.names:
                self._columns[name] = table.column(name).to_pylist()

    def add(self, step: int, epoch: int, values: dict[str, float], at: float) -> list[dict]:
        """Append one row per value; returns the rows (for exporters and the driver)."""
        rows = [{"step": step, "epoch": epoch, "name": name, "value": float(value), "time": at}
                for name, value in values.items()]
        for row in rows:
            for name in HISTORY_SCHEMA.names:
                self._columns[name].append(row[name])
        return rows

    def table(self) -> pa.Table:
        return pa.table(self._columns, schema=HISTORY_SCHEMA)
