"""A rank whose training thread stops making progress is ended like a dead one.

Ray Train's health check notices a process that stops answering (SIGSTOP, a
lost node); it cannot notice one that answers while its training thread is
stuck: in a read that never returns, in a collective whose peer is stuck, in
an upload that hangs. The training thread calls `Watchdog.beat` as it moves
on (each batch, step, validation batch, checkpoint); when no beat comes for
`failure.hang_timeout_s`, the watchdog's own thread posts a STALL record
with what the rank was doing and the stack of every Python thread, then
ends the process with os._exit, so that Ray Train restarts the group from
the newest verified checkpoint exactly as after a crash.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Callable

import ray

from orchestrator.track.records import Kind

STALL_EXIT_CODE = 75  # a process the watchdog ended (EX_TEMPFAIL: retrying can help)
_MAX_STACK_CHARS = 20_000


class Watchdog:
    """Ends this process when `beat` is not called for `timeout_s` seconds once `start`ed, after
    handing `post` its STALL record (`post` returns once the record is delivered)."""

    def __init__(self, timeout_s: float, post: Callable[[dict], None]):
        self.timeout_s, self.post = timeout_s, post
        self._last = time.monotonic()
        self._doing, self._step = "starting", 0
        self._watched = threading.get_ident()  # the training thread: it builds the watchdog
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, doing: str, step: int = 0) -> None:
        """The training thread moved on and is now `doing` (at optimizer step or round `step`)."""
        self._last, self._doing, self._step = time.monotonic(), doing, step

    def start(self) -> None:
        """Begin watching (idempotent); the clock starts now."""
        if self._thread is None:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="orchestrator-watchdog", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop watching: the training thread is done."""
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(min(self.timeout_s / 4, 1.0)):
            idle = time.monotonic() - self._last
            if idle < self.timeout_s:
                continue
            try:
                self.post({"kind": Kind.STALL, "doing": self._doing, "step": self._step, "idle_s": round(idle, 1),
                           "last_beat_at": time.time() - idle, "stack": thread_stacks(first=self._watched)})
            finally:
                os._exit(STALL_EXIT_CODE)  # like a crash: Ray Train restarts the group


def posting_to(board, rank: int) -> Callable[[dict], None]:
    """A `post` for rank `rank`'s watchdog: the record, with the rank, on the run's board, waited for."""
    return lambda record: ray.get(board.post.remote({**record, "rank": rank}), timeout=10)


def thread_stacks(first: int | None = None) -> str:
    """Every Python thread's stack but the caller's, the thread `first` leading; cut to a bounded size."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = sys._current_frames()
    order = sorted((ident for ident in frames if ident != threading.get_ident()), key=lambda ident: ident != first)
    text = "\n".join(f'Thread "{names.get(ident, ident)}" (most recent call last):\n'
                     + "".join(traceback.format_stack(frames[ident])) for ident in order)
    return text if len(text) <= _MAX_STACK_CHARS else text[:_MAX_STACK_CHARS] + "\n[... cut]"
