"""Which failures of the inbound sink mean "not recorded, try again" (a 503 for the web
chat) and which are a bug with one message, told apart on real faults: a locked and a full
SQLite database, a refused PostgreSQL connection, a write to /dev/full."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from mercury.pipeline.inbound import (
    DATABASE_BUSY,
    DATABASE_DOWN,
    DISK_FULL,
    unavailable_reason,
)


def _failure(path: Path, *statements: str) -> BaseException:
    """What SQLAlchemy raises for the last statement on the SQLite file `path`."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql))
    except Exception as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("the statements did not fail")


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("CREATE TABLE t (a INTEGER UNIQUE, b BLOB)")
        conn.execute("INSERT INTO t (a) VALUES (1)")
    return path


def test_a_locked_database_is_busy(db_file: Path) -> None:
    holder = sqlite3.connect(db_file, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        exc = _failure(db_file, "INSERT INTO t (a) VALUES (2)")
    finally:
        holder.rollback()
        holder.close()
    assert unavailable_reason(exc) == DATABASE_BUSY


def test_a_full_database_is_a_full_disk(db_file: Path) -> None:
    # SQLite's own limit gives the same SQLITE_FULL as a disk without a free block.
    exc = _failure(
        db_file, "PRAGMA max_page_count = 8", "INSERT INTO t (b) VALUES (randomblob(100000))"
    )
    assert "full" in str(exc)
    assert unavailable_reason(exc) == DISK_FULL


def test_a_disk_without_room_is_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")
    assert unavailable_reason(caught.value) == DISK_FULL
    # ... also when storage code wrapped it explicitly.
    try:
        raise RuntimeError("could not write") from caught.value
    except RuntimeError as wrapped:
        assert unavailable_reason(wrapped) == DISK_FULL


def test_an_unreachable_postgres_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def connect() -> BaseException:
        engine = create_async_engine(f"postgresql+asyncpg://u:p@127.0.0.1:{port}/db")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return exc
        finally:
            await engine.dispose()
        raise AssertionError("connected to a closed port")

    assert unavailable_reason(asyncio.run(connect())) == DATABASE_DOWN


def test_bugs_with_one_message_are_not_outages(db_file: Path) -> None:
    duplicate = _failure(db_file, "INSERT INTO t (a) VALUES (1)")  # a constraint
    missing = _failure(db_file, "SELECT * FROM no_such_table")  # an SQL error
    assert unavailable_reason(duplicate) is None
    assert unavailable_reason(missing) is None
    assert unavailable_reason(ValueError("a bad attachment name")) is None
    # A bug raised while handling an outage is still a bug: only explicit causes count.
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise KeyError("payload") from None
    except KeyError as exc:
        assert unavailable_reason(exc) is None
