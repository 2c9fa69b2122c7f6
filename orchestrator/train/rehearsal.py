"""Rehearsals and audits a job or a test asks for: hooks the loop calls before a step, only when asked.

`failure.inject` makes one rank call os._exit, or block its training thread
for good, once per run (the RunBoard grants the fault once, not after every
restart); `audit_samples` makes every
rank post the row ids it trains on at each step. Off the hot path otherwise:
the loop holds None and skips the call.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import ray

from orchestrator.job import spec
from orchestrator.track.records import Kind


@dataclass(frozen=True)
class Rehearsal:
    """Test and rehearsal hooks, called before a step only when a job asks for one.

    `fault` makes rank `fault.rank` exit or hang once (failure.inject); with
    `audit_samples` every rank posts the row ids it trains on at each step.
    """

    board: object
    rank: int
    fault: spec.FaultInjection | None
    audit_samples: bool

    def before_step(self, step: int, epoch: int, batch) -> None:
        if self.audit_samples:
            self.board.post.remote({"kind": Kind.SAMPLES, "rank": self.rank, "step": step + 1,
                                    "epoch": epoch, "ids": batch.ids.tolist()})
        self.maybe_fail(step + 1)

    def maybe_fail(self, step: int) -> None:
        """If this is the fault's rank and `step` (an optimizer step, or a tree model's boosting round)
        its exit_at_step: os._exit(1); its hang_at_step: block this thread for good. Only the first
        time the run gets there."""
        fault = self.fault
        if not fault or self.rank != fault.rank or step not in (fault.exit_at_step, fault.hang_at_step):
            return
        if ray.get(self.board.claim_fault.remote()):
            if step == fault.exit_at_step:
                os._exit(1)  # a rehearsal of a dead worker: no cleanup, like a real crash
            threading.Event().wait()  # a rehearsal of a stuck read: alive, answering Ray, never moving on
