"""The driver's relay: each progress record goes to the caller, into run.json and to the exporters.

Exporters see every metric's steps only increase: rows replayed after a
restart are dropped here. An exporter that raises is dropped with a warning;
tracking never stops training.
"""

from __future__ import annotations

import time
from typing import Callable

from orchestrator.track.metadata import record_in_metadata
from orchestrator.track.records import Kind


class Relay:
    """On the driver: passes each record on, folds it into run.json, and feeds exporters new rows.

    Exporters see every metric's steps only increase: rows replayed after a
    restart are dropped here. An exporter that raises is dropped with a
    warning; tracking never stops training.
    """

    def __init__(self, meta: dict, exporters: list, on_record: Callable[[dict], None]):
        self.meta, self.exporters, self.on_record = meta, list(exporters), on_record
        self._last_step: dict[str, int] = {}
        self._pending: dict = {}  # what a failed group said, until the next group starts

    def __call__(self, record: dict) -> None:
        record_in_metadata(self.meta, record, self._pending)
        rows = [r for r in record.get("rows") or () if r["step"] > self._last_step.get(r["name"], -1)]
        for row in rows:
            self._last_step[row["name"]] = row["step"]
        if rows:
            self._each_exporter(lambda exporter: exporter.log(rows))
        self.on_record(record)

    def close(self) -> None:
        self._each_exporter(lambda exporter: exporter.close())

    def _each_exporter(self, call: Callable) -> None:
        for exporter in list(self.exporters):
            try:
                call(exporter)
            except Exception as error:  # an outage of a tracker must not stop training
                self.exporters.remove(exporter)
                self.on_record({"kind": Kind.WARNING, "time": time.time(),
                                "message": f"{type(exporter).__name__} stopped exporting: {error}"})
