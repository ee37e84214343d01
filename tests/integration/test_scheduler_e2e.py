"""Scheduled tasks end to end: `mercury run` as a real process with the real agent image on
the Docker engine, the fake model server on loopback, and the web chat showing what the
scheduler says. Tasks are put into the site's SQLite database by the test, as the CLI does.

The scheduler ticks every second and retries after 1 s (then 2 s), so both stories take
seconds; what is asserted is read from the chat and the database, never from a clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from mercury.storage import Database, default_sqlite_url, repo
from mercury.storage.tasks import TaskRecord, add_task, get_task
from tests.fakes.model_server import Error, FakeModelServer
from tests.integration.mercury_site import Mercury, echo_responder

pytestmark = pytest.mark.docker

SCHEDULER = {"tick": 1, "retries": {"attempts": 2, "backoff": "1s"}}


def _db(m: Mercury) -> Database:
    return Database(default_sqlite_url(m.data_dir))


def add(m: Mercury, space: str, prompt: str, **schedule: Any) -> TaskRecord:
    """A task due now in `space`, added to the running Mercury's database (as the CLI does)."""

    async def go() -> TaskRecord:
        db = _db(m)
        try:
            now = datetime.now(UTC)
            return await add_task(db, space, prompt, next_run_at=now, created_by="operator",
                                  **schedule)  # fmt: skip
        finally:
            await db.dispose()

    return asyncio.run(go())


def read(m: Mercury, task_id: int) -> TaskRecord:
    async def go() -> TaskRecord:
        db = _db(m)
        try:
            task = await get_task(db, task_id)
            assert task is not None
            return task
        finally:
            await db.dispose()

    return asyncio.run(go())


def task_jobs(m: Mercury, space: str, task_id: int) -> list[Any]:
    async def go() -> list[Any]:
        db = _db(m)
        try:
            jobs = await repo.list_jobs(db, space_id=space)
            return [j for j in jobs if j.payload.get("task_id") == task_id]
        finally:
            await db.dispose()

    return asyncio.run(go())


def wait_for(what: str, check: Callable[[], Any], m: Mercury, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"waited in vain for {what}\n{m.logs()[-4000:]}")


def texts(m: Mercury, space: str) -> list[str]:
    return [r["text"] for r in m.replies(space)]


def test_a_paused_spaces_task_says_why_once_and_a_failing_one_is_reported_once(
    site: Any, fake: FakeModelServer
) -> None:
    m = site(extra={"scheduler": SCHEDULER})
    m.start()
    fake.responder = echo_responder()

    # A paused space: its task does not run, and the chat says why, once.
    m.post("alpha", "hello")
    m.wait_replies("alpha", 1)
    m.post("alpha", "/pause")
    m.wait_replies("alpha", 2)
    calls = len(fake.requests)
    paused = add(m, "alpha", "paused digest", interval_s=2)
    notice = wait_for(
        "the paused task's notice",
        lambda: [t for t in texts(m, "alpha") if "did not run" in t],
        m,
    )
    assert notice == [
        f'Scheduled task {paused.id} ("paused digest") did not run: this space is paused '
        "until an admin sends /resume."
    ]
    first = read(m, paused.id)
    assert (first.last_outcome, first.last_detail) == ("refused", "the space is paused")
    # Later slots (every 2 s) are refused too, in silence.
    wait_for(
        "two more refused slots",
        lambda: (
            read(m, paused.id).last_outcome_at > first.last_outcome_at  # type: ignore[operator]
            and read(m, paused.id).next_run_at > first.next_run_at
        ),  # type: ignore[operator]
        m,
    )
    assert len([t for t in texts(m, "alpha") if "did not run" in t]) == 1
    assert task_jobs(m, "alpha", paused.id) == []
    assert len(fake.requests) == calls  # no model call for it

    # A task whose model calls all fail: tried 3 times (2 retries), reported once.
    m.post("beta", "hi")
    m.wait_replies("beta", 1)
    fake.responder = lambda body: Error(500)
    failing = add(m, "beta", "failing digest", interval_s=86400)
    report = wait_for(
        "the failure report",
        lambda: [t for t in texts(m, "beta") if "Scheduled task" in t],
        m,
        timeout=240,
    )
    assert report[0].startswith(
        f'Scheduled task {failing.id} ("failing digest") failed after 3 tries. Sorry'
    )
    done = read(m, failing.id)
    assert done.last_outcome == "failed" and done.last_detail == "run failed: error (after 3 tries)"
    assert (done.failures, done.retry_at) == (0, None)  # nothing more to come
    jobs = task_jobs(m, "beta", failing.id)
    assert [j.status.value for j in jobs] == ["failed", "failed", "failed"]
    # One message in the chat for three failed runs: no notice of the tries between.
    assert texts(m, "beta")[1:] == report
    assert done.next_run_at is not None and done.next_run_at > datetime.now(UTC)
    assert m.stop() == 0
