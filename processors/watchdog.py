"""A worker that stops serving and stops making progress exits, so its supervisor starts it again.

Seen here under overlapping rebalances, and once at a second worker's join: Faust's table recovery
stayed stuck (no changelog record arrived, with records to go) and the worker answered 503 for
minutes while it still held its partitions, so no other worker could take them over. A fresh
process recovers in seconds. Recovery that is slow but moving (a large changelog) is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import faust

from meterline.processors.views import serving

log = logging.getLogger(__name__)

EXIT_CRASHED = 70  # EX_SOFTWARE: the usage agent crashed
EXIT_STUCK = 75  # EX_TEMPFAIL: try again


# A recovery with records to go that receives none for this long is stalled: a healthy one reads
# thousands a second, and Faust itself warns after 30 s ("No event received for active tp").
RECOVERY_STALL_SECONDS = 30.0


class StuckWatch:
    """Pure: says when "not serving" has lasted `limit_seconds` without recovery progress, or when a
    recovery with records to go has not moved for RECOVERY_STALL_SECONDS (or the limit, if shorter)."""

    def __init__(self, limit_seconds: float, stall_seconds: float = RECOVERY_STALL_SECONDS):
        self.limit_seconds = limit_seconds
        self.stall_seconds = min(stall_seconds, limit_seconds)
        self._since: float | None = None
        self._unchanged_since: float | None = None  # when `remaining` last changed
        self._remaining: int | None = None

    def stuck(self, is_serving: bool, remaining: int, now: float) -> str | None:
        """Why the worker is stuck, or None. `remaining`: changelog records still to recover; fewer
        than last time is progress."""
        if is_serving:
            self._since = self._unchanged_since = self._remaining = None
            return None
        if self._since is None or (self._remaining is not None and remaining < self._remaining):
            self._since = now
        if self._unchanged_since is None or remaining != self._remaining:  # a recovery that starts gets the whole stall time
            self._unchanged_since = now
        self._remaining = remaining
        if remaining > 0 and now - self._unchanged_since >= self.stall_seconds:
            return f"its recovery has records to go and has not moved for {self.stall_seconds:.0f} s"
        if now - self._since >= self.limit_seconds:
            return f"it has not served for {self.limit_seconds:.0f} s and its recovery does not move"
        return None


def await_chain(task: asyncio.Task[object]) -> list[str]:
    """Where `task` waits: each coroutine it awaits, outermost first, as "file:line function".

    `Task.get_stack` gives only the outermost frame of a suspended coroutine; the chain of awaits
    down to the future it waits on is what says where a worker is stuck.
    """
    places: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None and len(places) < 50:
        frame = (getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                 or getattr(awaited, "ag_frame", None))
        if frame is not None:
            places.append(_place(frame))
        awaited = (getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
                   or getattr(awaited, "ag_await", None))
    return places


def _place(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"


def where_everything_waits() -> str:
    """Every asyncio task of this thread's loop by its await chain, and every other thread's top frames."""
    lines = []
    for task in sorted(asyncio.all_tasks(), key=lambda task: task.get_name()):
        lines.append(f"task {task.get_name()}: " + " <- ".join(reversed(await_chain(task))))
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident():
            stack: list[str] = []
            top: FrameType | None = frame
            while top is not None and len(stack) < 8:
                stack.append(_place(top))
                top = top.f_back
            lines.append(f"thread {names.get(ident, ident)}: " + " <- ".join(stack))
    return "\n".join(lines)


def exit_now(code: int) -> None:
    """Exit this worker at once, logs flushed: a clean stop would wait for events it cannot finish."""
    logging.shutdown()
    os._exit(code)


async def watch_recovery(app: faust.App, limit_seconds: float, interval: float = 1.0,
                         exit: Callable[[int], object] | None = None) -> None:
    """Exit the process (code 75) once the worker is stuck (StuckWatch)."""
    watch = StuckWatch(limit_seconds)
    exit = exit or exit_now
    while True:
        await asyncio.sleep(interval)
        remaining = app.tables.recovery.active_remaining_total()
        reason = watch.stuck(serving(app), remaining, time.monotonic())
        if reason:
            # Exiting at any instant is safe: nothing unacknowledged is committed (README.md).
            log.critical("the worker is stuck: %s (rebalancing=%s, in_recovery=%s, %d changelog records to go); "
                         "it exits so it can be started again; where it waits:\n%s", reason, app.rebalancing,
                         app.in_recovery, remaining, where_everything_waits())
            exit(EXIT_STUCK)
            return
