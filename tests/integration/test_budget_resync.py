"""Spending caps shared by several processes on one database (BudgetBook.resync).

A gateway and its workers each keep a `BudgetBook`: a worker counts the calls of the runs
it hosts, the gateway checks caps before accepting a message. Neither sees the other's
calls until `resync()` re-reads the stored ones (`model_calls`), so a space over its cap
on one worker is refused everywhere after the next re-read. Each book here has its own
`Database` on the same file or server, as two processes would; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from mercury.core.budget import Scope, Spent
from mercury.pipeline.background import every
from mercury.pipeline.budget import BudgetBook
from mercury.storage import Database, get_or_create_space
from tests.integration.test_budget_book import Clock, call, config, spend
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2027, 5, 12, 9, 30, tzinfo=UTC)


@pytest.fixture
async def other_db(db: Database, db_url: str) -> AsyncIterator[Database]:
    """A second connection pool on the migrated database: the other process's."""
    other = Database(db_url)
    try:
        yield other
    finally:
        await other.dispose()


@contextlib.asynccontextmanager
async def writes_held(db_url: str) -> AsyncIterator[None]:
    """Hold off every new model_calls row (reads go on) until the block ends: a store
    that lands after a concurrent read, made certain instead of left to timing."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        held = sqlite3.connect(url.database, isolation_level=None)
        held.execute("BEGIN IMMEDIATE")  # the write lock; WAL readers are not blocked
        try:
            yield
        finally:
            held.rollback()
            held.close()
        return
    locker = Database(db_url)
    try:
        async with locker.engine.connect() as conn:
            # SHARE conflicts with INSERT's ROW EXCLUSIVE, not with SELECT's ACCESS SHARE.
            await conn.execute(text("LOCK TABLE model_calls IN SHARE MODE"))
            yield
            await conn.rollback()
    finally:
        await locker.dispose()


async def books(
    db: Database, other_db: Database, **caps: object
) -> tuple[BudgetBook, BudgetBook, Clock]:
    """Worker A's book and the gateway's (B), loaded from the same database."""
    for space in ("a", "b"):
        await get_or_create_space(db, space)
    clock = Clock(T0)
    cfg = config(**caps)
    worker, gateway = BudgetBook(cfg, db, clock=clock), BudgetBook(cfg, other_db, clock=clock)
    await worker.load()
    await gateway.load()
    return worker, gateway, clock


async def test_a_workers_spending_reaches_the_gateway_at_the_next_resync(
    db: Database, other_db: Database
) -> None:
    worker, gateway, _ = await books(db, other_db, space_day="$1", user_day="$0.5")
    await spend(
        worker,
        call("a", 100, 0.6, user="slack:U1", run="w-run-1"),
        call("a", 100, 0.5, user="slack:U2", run="w-run-1"),
    )
    assert (await worker.check("a")).scope is Scope.SPACE_DAY
    # The gateway has not re-read yet: it does not know, and would accept the message.
    assert gateway.spent("a")[Scope.SPACE_DAY] == Spent()
    assert (await gateway.check("a", "slack:U1")).allowed

    await gateway.resync()
    verdict = await gateway.check("a")
    assert (verdict.allowed, verdict.scope) == (False, Scope.SPACE_DAY)
    assert verdict.spent == Spent(1.1, 200)
    spent = gateway.spent("a", "slack:U1")
    assert spent[Scope.SPACE_MONTH] == Spent(1.1, 200)
    assert spent[Scope.INSTANCE_DAY] == Spent(1.1, 200)
    assert spent[Scope.USER_DAY] == Spent(0.6, 100)
    # Another space is not touched by it.
    assert (await gateway.check("b")).allowed
    assert gateway.spent("b")[Scope.SPACE_DAY] == Spent()


async def test_a_resync_counts_both_processes_once(db: Database, other_db: Database) -> None:
    worker, gateway, _ = await books(db, other_db, space_day="1000 tokens")
    await spend(worker, call("a", 300, None, run="w-run-1"))
    await spend(gateway, call("a", 200, None, run="g-run-1"))
    # Each knows only its own so far.
    assert worker.spent("a")[Scope.SPACE_DAY].tokens == 300
    assert gateway.spent("a")[Scope.SPACE_DAY].tokens == 200

    # Re-read twice: the stored calls replace the counts, they are not added again.
    for _ in range(2):
        await worker.resync()
        await gateway.resync()
        assert worker.spent("a")[Scope.SPACE_DAY].tokens == 500
        assert gateway.spent("a")[Scope.SPACE_DAY].tokens == 500

    # A call counted but not stored yet: resync waits for this process's own writes.
    worker.count(call("a", 500, None, run="w-run-2"))
    await worker.resync()
    assert worker.spent("a")[Scope.SPACE_DAY].tokens == 1000
    await gateway.resync()
    assert (await gateway.check("a")).scope is Scope.SPACE_DAY


async def test_a_call_counted_during_a_resync_is_not_lost_nor_counted_twice_for_its_run(
    db: Database, other_db: Database, db_url: str
) -> None:
    worker, gateway, _ = await books(db, other_db, space_day="$10", task_run="$1")
    await spend(worker, call("a", 100, 2.0, run="w-run-1"))
    # A task run the gateway's process hosts (an all-in-one process, say).
    gateway.begin_run("g-task-run")
    await spend(gateway, call("a", 10, 0.4, run="g-task-run", task=7))

    async with writes_held(db_url):
        resync = asyncio.create_task(gateway.resync())
        await asyncio.sleep(0)  # the resync is now reading the stored calls
        # Counted now; its row is stored only after the read is over.
        stored = gateway.count(call("a", 10, 0.4, run="g-task-run", task=7))
        await resync
        assert stored is not None and not stored.done()
        spent = gateway.spent("a", run_id="g-task-run")
        # Read: worker's 2.0 + the first 0.4; the call made meanwhile is on top, once.
        assert spent[Scope.SPACE_DAY].usd == pytest.approx(2.8)
        assert spent[Scope.INSTANCE_DAY].usd == pytest.approx(2.8)
        # The run's own count is never re-read: both its calls, each once.
        assert spent[Scope.TASK_RUN] == Spent(pytest.approx(0.8), 20)
    await gateway.drain()

    # Stored now: the next re-read finds it, still once.
    await gateway.resync()
    spent = gateway.spent("a", run_id="g-task-run")
    assert spent[Scope.SPACE_DAY].usd == pytest.approx(2.8)
    assert spent[Scope.TASK_RUN] == Spent(pytest.approx(0.8), 20)
    # One more call takes the run over its $1 cap, and only then.
    assert (await gateway.check("a", task_id=7, run_id="g-task-run")).allowed
    await spend(gateway, call("a", 10, 0.4, run="g-task-run", task=7))
    verdict = await gateway.check("a", task_id=7, run_id="g-task-run")
    assert verdict.scope is Scope.TASK_RUN
    assert verdict.spent == Spent(pytest.approx(1.2), 30)
    # The worker, re-reading, sees every stored call of the space exactly once.
    await worker.resync()
    assert worker.spent("a")[Scope.SPACE_DAY].usd == pytest.approx(3.2)


async def test_a_periodic_resync_keeps_re_reading(db: Database, other_db: Database) -> None:
    worker, gateway, _ = await books(db, other_db, space_day="$1")
    loop = asyncio.create_task(every(0.05, gateway.resync, what="resync", wait_first=True))
    try:
        for usd in (0.3, 0.8):
            await spend(worker, call("a", 10, usd, run="w-run-1"))
            seen = worker.spent("a")[Scope.SPACE_DAY].usd
            async with asyncio.timeout(10):
                while gateway.spent("a")[Scope.SPACE_DAY].usd != pytest.approx(seen):
                    await asyncio.sleep(0.02)
        assert (await gateway.check("a")).scope is Scope.SPACE_DAY
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert loop.cancelled()
