"""StuckWatch: a worker that stops serving and stops recovering gives up after its limit."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from meterline.processors.app import create_faust_app
from meterline.processors.watchdog import EXIT_STUCK, StuckWatch, await_chain, watch_recovery, where_everything_waits
from meterline.settings import Settings

LIMIT = 10.0
STALL = 4.0


@pytest.mark.parametrize(("samples", "expected"), [
    # (serving, changelog records remaining, now) ... -> stuck at the last sample?
    ([(False, 0, 0.0), (False, 0, 9.9)], False),  # not yet the limit
    ([(False, 0, 0.0), (False, 0, 10.0)], True),  # the limit, nothing to recover and still not serving
    ([(False, 9, 0.0), (False, 5, 3.0), (False, 3, 6.0), (False, 1, 9.0), (False, 0, 12.0)], False),  # moving
    ([(False, 9, 0.0), (False, 5, 3.0), (False, 5, 6.9)], False),  # progress at 3 s restarts the stall clock
    ([(False, 9, 0.0), (False, 5, 3.0), (False, 5, 7.0)], True),  # records to go, none for the stall time
    ([(False, 0, 0.0), (False, 0, 2.0), (False, 7, 3.0), (False, 7, 6.9)], False),  # a recovery that starts late
    ([(False, 0, 0.0), (False, 0, 2.0), (False, 7, 3.0), (False, 7, 7.0)], True),  # gets the whole stall time
    ([(False, 5, 0.0), (False, 7, 3.0), (False, 9, 6.0), (False, 11, 9.0), (False, 13, 10.0)], True),
    # ^ more to go each time is never progress: the limit holds although the count keeps changing
    ([(False, 5, 0.0), (True, 5, 3.0), (False, 5, 4.0), (False, 5, 7.9)], False),  # serving resets it
    ([(False, 5, 0.0), (True, 5, 3.0), (False, 5, 4.0), (False, 5, 8.0)], True),
    ([(True, 0, 0.0), (True, 0, 100.0)], False),
])
def test_stuck_after_limit_or_stall_without_progress(samples: list[tuple[bool, int, float]], expected: bool) -> None:
    watch = StuckWatch(LIMIT, STALL)
    verdicts = [watch.stuck(serving, remaining, now) for serving, remaining, now in samples]
    assert (verdicts[-1] is not None) is expected
    assert not any(verdicts[:-1])  # it never gave up earlier


def test_the_stall_time_is_never_longer_than_the_limit() -> None:
    watch = StuckWatch(3.0, 30.0)
    assert watch.stuck(False, 5, 0.0) is None
    assert "has records to go" in (watch.stuck(False, 5, 3.0) or "")


def test_a_worker_that_never_serves_exits_with_75_and_says_why(caplog: pytest.LogCaptureFixture,
                                                                tmp_path: Path) -> None:
    # A real Faust app, built and never started: it never serves and has nothing to recover.
    app = create_faust_app(Settings(home=tmp_path))
    codes: list[int] = []
    with caplog.at_level(logging.CRITICAL):
        asyncio.run(asyncio.wait_for(watch_recovery(app, 0.05, interval=0.01, exit=codes.append), 5))
    assert codes == [EXIT_STUCK]
    assert "has not served" in caplog.text and "0 changelog records to go" in caplog.text
    assert "where it waits" in caplog.text


def test_a_stuck_worker_says_where_each_task_waits() -> None:
    async def inner(gate: asyncio.Event) -> None:
        await gate.wait()

    async def outer(gate: asyncio.Event) -> None:
        await inner(gate)

    async def main() -> tuple[list[str], str]:
        gate = asyncio.Event()
        task = asyncio.create_task(outer(gate), name="the-waiting-task")
        await asyncio.sleep(0)  # it runs up to its wait
        chain, everything = await_chain(task), where_everything_waits()
        gate.set()
        await task
        return chain, everything

    chain, everything = asyncio.run(main())
    assert [place.split()[-1] for place in chain[:3]] == ["outer", "inner", "wait"]
    assert "task the-waiting-task: " in everything and "inner <- " in everything
