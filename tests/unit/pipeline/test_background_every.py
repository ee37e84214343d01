"""`every`: the gateway's and workers' pollers go on through a failing step, saying so
once per outage and once when it works again."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from mercury.pipeline.background import BackgroundTask, every


async def test_a_failing_step_is_said_once_per_outage_and_the_loop_goes_on() -> None:
    outcomes = iter([True, False, False, False, True, True, False, True])
    calls = 0
    finished = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        ok = next(outcomes, None)
        if ok is None:
            finished.set()
            return
        if not ok:
            raise ConnectionError("database away")

    task = BackgroundTask()
    with structlog.testing.capture_logs() as captured:
        task.start(every(0.001, step, what="reading the thing"), name="test")
        async with asyncio.timeout(10):
            await finished.wait()
        await task.stop()
    said = [(e["log_level"], e["event"]) for e in captured]
    assert said == [
        ("warning", "reading the thing failed; trying again"),
        ("info", "reading the thing works again"),
        ("warning", "reading the thing failed; trying again"),
        ("info", "reading the thing works again"),
    ]
    assert captured[0]["error"] == "ConnectionError"
    assert calls == 9  # every outcome, then the one that set `finished`


async def test_wait_first_waits_before_the_first_step() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1

    task = asyncio.create_task(every(3600, step, what="x", wait_first=True))
    await asyncio.sleep(0.05)
    assert calls == 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    now = asyncio.create_task(every(3600, step, what="x"))
    async with asyncio.timeout(10):
        while calls == 0:
            await asyncio.sleep(0.01)
    now.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await now
    assert calls == 1
