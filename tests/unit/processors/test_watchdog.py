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


@pytest.mark.parametrize(("samples", "expected"), [
    # (serving, changelog records remaining, now) ... -> stuck at the last sample?
    ([(False, 5, 0.0), (False, 5, 9.9)], False),  # not yet the limit
    ([(False, 5, 0.0), (False, 5, 10.0)], True),  # the limit, no progress
    ([(False, 0, 0.0), (False, 0, 30.0)], True),  # nothing to recover and still not serving
    ([(False, 9, 0.0), (False, 5, 8.0), (False, 5, 17.9)], False),  # progress at 8 s restarts the clock
    ([(False, 9, 0.0), (False, 5, 8.0), (False, 5, 18.0)], True),
    ([(False, 5, 0.0), (False, 7, 8.0), (False, 7, 10.0)], True),  # more to go is not progress
    ([(False, 5, 0.0), (True, 5, 8.0), (False, 5, 12.0), (False, 5, 21.9)], False),  # serving resets it
    ([(False, 5, 0.0), (True, 5, 8.0), (False, 5, 12.0), (False, 5, 22.0)], True),
    ([(True, 0, 0.0), (True, 0, 100.0)], False),
])
def test_stuck_after_limit_without_progress(samples: list[tuple[bool, int, float]], expected: bool) -> None:
    watch = StuckWatch(LIMIT)
    verdicts = [watch.stuck(serving, remaining, now) for serving, remaining, now in samples]
    assert verdicts[-1] is expected
    assert not any(verdicts[:-1])  # it never gave up earlier


def test_a_worker_that_never_serves_exits_with_75_and_says_why(caplog: pytest.LogCaptureFixture,
                                                                tmp_path: Path) -> None:
    # A real Faust app, built and never started: it never serves and has nothing to recover.
    app = create_faust_app(Settings(home=tmp_path))
    codes: list[int] = []
    with caplog.at_level(logging.CRITICAL):
        asyncio.run(asyncio.wait_for(watch_recovery(app, 0.05, interval=0.01, exit=codes.append), 5))
    assert codes == [EXIT_STUCK]
    assert "has not served" in caplog.text and "0 changelog records to go" in caplog.text


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
