"""How a rank's work ends when the data or the job is at fault: once, named, without Ray Train's retries.

Owns the rule both worker functions (networks, trees) follow. A mistake every
rank finds alike while building (data the preprocessing cannot fit, a loss
the classes cannot meet) ends the run: rank 0 posts it as FATAL and every
rank returns. A data error one rank meets alone while training (a corrupt
page) fails the group once, posted as FATAL; the RunBoard keeps the first
FATAL, and the group Ray Train restarts returns at once instead of meeting
the same error `failure.max_failures` times.
"""

from __future__ import annotations

from typing import Callable, Protocol

import ray

from orchestrator.errors import DataError, OrchestratorError
from orchestrator.track.records import Kind


class Worker(Protocol):
    """A rank's training state, built before anything trains: `run` trains it to the end."""

    def run(self) -> None: ...


def run_once(board, rank: int, build: Callable[[], Worker]) -> None:
    """Build this rank's worker and run it, under the rule in the module doc."""
    if ray.get(board.fatal.remote()) is not None:
        return  # an earlier group met a mistake in the data or the job: retrying cannot help
    try:
        worker = build()
    except OrchestratorError as error:  # the data or the job at fault, found alike on every rank
        if rank == 0:
            board.post.remote({"kind": Kind.FATAL, "message": str(error), "error_class": type(error).__name__})
        return
    try:
        worker.run()
    except DataError as error:  # met by this rank alone: the group fails, and the next one stops at once
        board.post.remote({"kind": Kind.FATAL, "message": str(error), "error_class": "DataError"})
        raise
