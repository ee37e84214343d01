"""Heartbeats in the database (storage/adapter_status.py, migration 0012) and the writer
(pipeline/heartbeat.py), on a real SQLite file and a real PostgreSQL (test_storage's `db`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect

from mercury.adapters.base import AdapterState
from mercury.pipeline.heartbeat import Heartbeat
from mercury.storage import Database, current_revision, downgrade, upgrade
from mercury.storage.adapter_status import (
    PRUNE_AFTER,
    AdapterStatus,
    ProcessInfo,
    prune_processes,
    read_processes,
    write_heartbeat,
)
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def info(pid_id: str, instance: str = "main", pid: int = 100) -> ProcessInfo:
    return ProcessInfo(
        id=pid_id,
        instance=instance,
        host="box",
        pid=pid,
        version="1.2.3",
        interval_s=15.0,
        started_at=T0,
    )


async def test_a_heartbeat_is_written_and_read_back_with_its_adapters(db: Database) -> None:
    web = AdapterStatus("web", True, last_event_at=T0 + timedelta(seconds=5))
    tg = AdapterStatus(
        "telegram",
        False,
        last_error="start failed: Unauthorized\nsecond line",
        last_error_at=T0 + timedelta(seconds=7),
    )
    await write_heartbeat(db, info("mercury-a"), {"web": web, "telegram": tg}, now=T0)

    [p] = await read_processes(db)
    assert (p.id, p.instance, p.host, p.pid, p.version) == (
        "mercury-a",
        "main",
        "box",
        100,
        "1.2.3",
    )
    assert p.started_at == T0 and p.updated_at == T0 and p.stopped_at is None
    assert p.interval_s == 15.0
    by_name = {a.adapter: a for a in p.adapters}
    assert sorted(by_name) == ["telegram", "web"]
    assert by_name["web"].connected and by_name["web"].last_event_at == T0 + timedelta(seconds=5)
    assert not by_name["telegram"].connected
    assert by_name["telegram"].last_error == "start failed: Unauthorized"  # one line
    assert by_name["telegram"].last_error_at == T0 + timedelta(seconds=7)


async def test_a_later_beat_updates_the_same_rows_and_a_stop_is_marked(db: Database) -> None:
    me = info("mercury-a")
    await write_heartbeat(db, me, {"web": AdapterStatus("web", True)}, now=T0)
    later = T0 + timedelta(seconds=15)
    event = T0 + timedelta(seconds=12)
    await write_heartbeat(db, me, {"web": AdapterStatus("web", True, event)}, now=later)
    [p] = await read_processes(db)
    assert p.updated_at == later and p.started_at == T0
    assert [(a.adapter, a.last_event_at, a.updated_at) for a in p.adapters] == [
        ("web", event, later)
    ]

    stop = later + timedelta(seconds=3)
    await write_heartbeat(db, me, {"web": AdapterStatus("web", False)}, now=stop, stopped=True)
    [p] = await read_processes(db)
    assert p.stopped_at == stop and not p.adapters[0].connected


async def test_two_processes_keep_their_own_rows(db: Database) -> None:
    gateway, worker = info("mercury-gw", pid=1), info("mercury-wk", pid=2)
    await write_heartbeat(db, gateway, {"web": AdapterStatus("web", True)}, now=T0)
    await write_heartbeat(db, worker, {"web": AdapterStatus("web", False)}, now=T0 + timedelta(1))
    await write_heartbeat(db, info("other-x", instance="other"), {}, now=T0)

    procs = await read_processes(db, instance="main")
    assert [(p.id, p.pid) for p in procs] == [("mercury-wk", 2), ("mercury-gw", 1)]  # newest first
    assert [a.connected for a in procs[0].adapters] == [False]
    assert [a.connected for a in procs[1].adapters] == [True]
    assert {p.id for p in await read_processes(db)} == {"mercury-gw", "mercury-wk", "other-x"}


async def test_long_silent_processes_are_pruned_but_never_the_caller(db: Database) -> None:
    await write_heartbeat(db, info("old"), {"web": AdapterStatus("web", True)}, now=T0)
    await write_heartbeat(db, info("me"), {}, now=T0)
    await write_heartbeat(db, info("recent"), {}, now=T0 + PRUNE_AFTER)
    now = T0 + PRUNE_AFTER + timedelta(seconds=1)

    assert await prune_processes(db, now=now, keep="me") == 1
    assert {p.id for p in await read_processes(db)} == {"me", "recent"}
    assert await prune_processes(db, now=now, keep="me") == 0


@dataclass
class FakeAdapter:
    """Just the `state` an adapter shows (AdapterState), changed by the test."""

    state: AdapterState = field(default_factory=AdapterState)


async def test_the_heartbeat_writes_at_start_each_tick_and_at_stop(db: Database) -> None:
    clock = [T0]
    web = FakeAdapter(AdapterState(connected=True))
    beat = Heartbeat(
        db,
        process_id="mercury-hb",
        instance="main",
        adapters={"web": web},
        interval=3600,  # the loop never ticks by itself here; beat() is the tick
        clock=lambda: clock[0],
    )
    await beat.start()
    try:
        [p] = await read_processes(db)
        assert (
            p.updated_at == T0 and p.adapters[0].connected and p.adapters[0].last_event_at is None
        )

        clock[0] = T0 + timedelta(seconds=20)
        web.state = AdapterState(connected=True, last_event_at=T0 + timedelta(seconds=19))
        assert await beat.beat()
        [p] = await read_processes(db)
        assert p.updated_at == clock[0]
        assert p.adapters[0].last_event_at == T0 + timedelta(seconds=19)
    finally:
        clock[0] = T0 + timedelta(seconds=30)
        await beat.stop()
    [p] = await read_processes(db)
    assert p.stopped_at == T0 + timedelta(seconds=30)
    assert beat.writes == 3


async def test_a_failing_write_is_reported_not_raised(db_url: str) -> None:
    # No migration: the tables are missing, so every write fails.
    database = Database(db_url)
    try:
        beat = Heartbeat(database, process_id="x", instance="main", adapters={}, interval=3600)
        assert await beat.beat() is False
        assert beat.writes == 0
        await upgrade(db_url)
        assert await beat.beat() is True  # the next tick goes through
    finally:
        await database.dispose()


async def _tables(url: str) -> set[str]:
    database = Database(url)
    try:
        async with database.engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await database.dispose()


async def test_migration_0012_goes_up_and_down_keeping_other_data(db_url: str) -> None:
    await upgrade(db_url, "0011")
    assert not {"processes", "adapter_status"} & await _tables(db_url)
    await upgrade(db_url, "0012")
    assert await current_revision(db_url) == "0012"
    assert {"processes", "adapter_status"} <= await _tables(db_url)
    database = Database(db_url)
    try:
        await write_heartbeat(database, info("a"), {"web": AdapterStatus("web", True)}, now=T0)
    finally:
        await database.dispose()

    await downgrade(db_url, "0011")
    assert await current_revision(db_url) == "0011"
    tables = await _tables(db_url)
    assert not {"processes", "adapter_status"} & tables
    assert "person_notes" in tables
    await upgrade(db_url, "0012")
    assert await current_revision(db_url) == "0012"
