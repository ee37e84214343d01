"""`mercury db copy`: every row of a SQLite install into PostgreSQL (or another SQLite file).

The source is a real database migrated upward over data from the first release (the
upward-migration test's ledger: realistic rows plus generic ones in every later table)
and then used at head through the real storage functions. After the copy every row of
every table must be equal, new rows must get fresh ids, recall must find old messages,
and the copy must be at this Mercury's head. Refusals leave the target as it was.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mercury.ops.dbcopy import CopyRefused, copy_database, model_tables
from mercury.storage import (
    Database,
    JobStatus,
    MessageRole,
    RunReason,
    add_message,
    add_task,
    add_usage,
    current_revision,
    enqueue_job,
    get_or_create_space,
    grant_permission,
    head_revision,
    is_up_to_date,
    mute,
    record_run,
    set_note,
    set_preference,
    set_role,
    upgrade,
)
from mercury.storage.recall import search_messages
from mercury.storage.replies import add_reply
from mercury.storage.spend import add_model_call, note_budget_alert
from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import Mercury, mercury
from tests.integration.test_migrations_upward import (
    Ledger,
    fill_to_head,
    on,
    put_first_release_rows,
)
from tests.integration.test_storage import fresh_postgres_database, postgres_server_url

__all__ = ["postgres_server_url"]  # a fixture, imported for pytest

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
SPACE = "copy-space"


async def use_at_head(url: str) -> None:
    """What a season of use at head adds, through the storage functions Mercury uses."""
    db = Database(url)
    try:
        await get_or_create_space(db, SPACE, name="Copy space ✓")
        first = None
        for i in range(23):  # more than one batch of 7
            msg = await add_message(
                db, space_id=SPACE, platform="web", role=MessageRole.USER,
                text=f"note {i}: the quarterly kumquat report" if i == 3 else f"note {i}",
                platform_message_id=f"m-{i}", author_id="u1", author_name="Zoë",
                attachments=[{"name": f"f{i}.txt"}] if i % 5 == 0 else None,
                created_at=NOW + timedelta(minutes=i),
            )  # fmt: skip
            first = first or msg
        assert first is not None
        job = await enqueue_job(db, SPACE, message_id=first.id)
        await add_reply(
            db, job_id=job.id, space_id=SPACE, job_status=JobStatus.DONE,
            payload={"text": "done", "files": []},
        )  # fmt: skip
        await record_run(
            db, space_id=SPACE, reason=RunReason.OK, job_id=job.id, exit_code=0,
            duration_ms=1234, input_tokens=100, output_tokens=20, cost_usd=0.001,
            model="claude-test", started_at=NOW, finished_at=NOW + timedelta(seconds=2),
        )  # fmt: skip
        await add_task(db, SPACE, "water the plants", cron="0 8 * * *", next_run_at=NOW)
        await add_task(db, SPACE, "once", run_at=NOW + timedelta(days=1), silent=True)
        await set_role(db, SPACE, "web", "u1", "owner")
        await grant_permission(db, SPACE, "member", "memory.write")
        await mute(db, SPACE, "web", "u2", until=NOW + timedelta(hours=1), reason="noise")
        await set_preference(db, SPACE, "language", "de")
        await add_usage(db, SPACE, model="claude-test", input_tokens=100, output_tokens=20,
                        cost_usd=0.001, day=date(2027, 3, 1))  # fmt: skip
        await add_model_call(
            db, space_id=SPACE, run_id="r-1", provider="anthropic", model="claude-test",
            input_tokens=100, output_tokens=20, cost_usd=0.001, status=200, incomplete=False,
            user_key="web:u1", at=NOW,
        )  # fmt: skip
        await note_budget_alert(db, "space", SPACE, date(2027, 3, 1))
        await set_note(db, SPACE, "web:u1", "prefers short answers", by="web:u1", now=NOW)
    finally:
        await db.dispose()


@pytest.fixture
async def source(tmp_path: Path) -> str:
    """A SQLite database at head with rows in every table, from every era of the schema."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'source' / 'mercury.db'}"
    await fill_to_head(url)
    await use_at_head(url)
    return url


@pytest.fixture
async def pg_url(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_postgres_database(postgres_server_url) as url:
        yield url


async def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every Mercury table, through the models' types, in primary-key order."""
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = {}
            for table in model_tables():
                order = list(table.primary_key.columns)
                result = await conn.execute(sa.select(table).order_by(*order))
                rows[table.name] = [tuple(r) for r in result]
            return rows
    finally:
        await db.dispose()


async def has_tables(url: str) -> bool:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            return bool(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await db.dispose()


async def check_the_copy(source: str, target: str) -> None:
    before = await dump(source)
    assert all(before.values()), [name for name, rows in before.items() if not rows]

    report = await copy_database(source, target, batch=7)

    assert report.matches and report.revision == head_revision()
    assert {t.table: t.target for t in report.tables} == {n: len(r) for n, r in before.items()}
    assert await dump(target) == before
    assert await dump(source) == before  # the source is only read
    assert await is_up_to_date(target)  # `mercury run` starts on it without migrating

    db = Database(target)
    try:
        old_ids = [row[0] for row in before["messages"]]
        new = await add_message(db, space_id=SPACE, platform="web", role=MessageRole.USER,
                                text="after the move")  # fmt: skip
        assert new.id == max(old_ids) + 1
        task = await add_task(db, SPACE, "new task", interval_s=60)
        assert task.id == max(row[0] for row in before["tasks"]) + 1
        hits = await search_messages(db, SPACE, "kumquat")
        assert [h.message_id for h in hits] == [old_ids[-23 + 3]]
        assert [h.message_id for h in await search_messages(db, SPACE, "move")] == [new.id]
        assert await search_messages(db, "telegram--100123", "dentist")
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_copy_sqlite_to_postgres_keeps_every_row(source: str, pg_url: str) -> None:
    await check_the_copy(source, pg_url)


@pytest.mark.postgres
async def test_copy_back_from_postgres_to_sqlite(source: str, pg_url: str, tmp_path: Path) -> None:
    back = f"sqlite+aiosqlite:///{tmp_path / 'back' / 'mercury.db'}"
    await copy_database(source, pg_url)

    report = await copy_database(pg_url, back, batch=3)

    assert report.matches
    assert await dump(back) == await dump(source)
    db = Database(back)
    try:  # the SQLite search index was filled by its triggers as the rows went in
        assert len(await search_messages(db, SPACE, "kumquat")) == 1
    finally:
        await db.dispose()


async def test_copy_sqlite_to_sqlite_keeps_every_row(source: str, tmp_path: Path) -> None:
    await check_the_copy(source, f"sqlite+aiosqlite:///{tmp_path / 'copy' / 'mercury.db'}")


@pytest.mark.postgres
async def test_a_target_with_mercury_rows_is_refused(source: str, pg_url: str) -> None:
    await copy_database(source, pg_url)
    copied = await dump(pg_url)

    held = r"already holds \d+ Mercury rows in \d+ tables \(messages: 27, "
    with pytest.raises(CopyRefused, match=held):
        await copy_database(source, pg_url)
    assert await dump(pg_url) == copied


@pytest.mark.postgres
async def test_an_older_source_is_refused_and_nothing_is_written(
    tmp_path: Path, pg_url: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await upgrade(url, "0005")
    await on(url, put_first_release_rows(Ledger()))

    with pytest.raises(CopyRefused, match=r"revision '0005'.*run `mercury db upgrade` on it"):
        await copy_database(url, pg_url)
    assert not await has_tables(pg_url)
    assert await current_revision(url) == "0005"


async def test_a_source_from_a_newer_mercury_or_the_same_database_is_refused(
    source: str, tmp_path: Path
) -> None:
    target = f"sqlite+aiosqlite:///{tmp_path / 'copy.db'}"
    with pytest.raises(CopyRefused, match="same database"):
        await copy_database(source, source)
    await on(source, lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num='0999'")))
    with pytest.raises(CopyRefused, match=r"source: .*'0999'.*newer Mercury"):
        await copy_database(source, target)
    assert not await has_tables(target)


async def test_a_source_that_changes_while_copying_rolls_the_copy_back(
    source: str, tmp_path: Path
) -> None:
    target = f"sqlite+aiosqlite:///{tmp_path / 'copy.db'}"
    source_file = source.removeprefix("sqlite+aiosqlite:///")

    def meanwhile(table: str, _rows: int) -> None:
        if table == "messages":  # Mercury, still running, takes a new message
            with sqlite3.connect(source_file, timeout=10) as conn:
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(
                    "INSERT INTO messages (space_id, platform, role, text, attachments, is_bot,"
                    " created_at) VALUES (?, 'web', 'user', 'late', '[]', 0, ?)",
                    (SPACE, "2027-03-02 00:00:00.000000"),
                )

    with pytest.raises(CopyRefused, match=r"source changed while copying \(messages\)"):
        await copy_database(source, target, progress=meanwhile)
    assert not any((await dump(target)).values())


async def test_a_sqlite_source_open_in_another_process_is_refused(
    source: str, tmp_path: Path
) -> None:
    target = tmp_path / "copy.db"
    source_file = source.removeprefix("sqlite+aiosqlite:///")
    holder = subprocess.Popen(  # stands in for a Mercury still running on the source
        [sys.executable, "-c", HOLD_OPEN, source_file], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(CopyRefused, match=rf"open in process {holder.pid} .*stop it first"):
            await copy_database(source, f"sqlite+aiosqlite:///{target}")
    finally:
        holder.kill()
        holder.wait()
    assert not target.exists()


HOLD_OPEN = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM spaces").fetchone()
print("open", flush=True)
time.sleep(120)
"""


# --------------------------------------------------------------------------- the command


@pytest.mark.postgres
async def test_mercury_db_copy_command(
    tmp_path: Path, fake: FakeModelServer, postgres_server_url: str
) -> None:
    site = Mercury(tmp_path, "mercury-test-never-started:0", fake)
    url = f"sqlite+aiosqlite:///{site.data_dir / 'mercury.db'}"
    await upgrade(url)
    await use_at_head(url)
    password = sa.engine.make_url(postgres_server_url).password
    assert password

    async with fresh_postgres_database(postgres_server_url) as target:
        done = mercury("db", "copy", "--to", target, "--batch-size", "5", cwd=tmp_path)
        again = mercury("db", "copy", cwd=tmp_path, env={"MERCURY_DB_COPY_TO": target})
        copied = await dump(target)

    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr + again.stdout + again.stderr
    assert "***" in done.stdout
    assert "\n  messages                      23 rows\n" in done.stdout
    assert "done: " in done.stdout and "every table's row count matches" in done.stdout
    assert len(copied["messages"]) == 23 and len(copied["person_notes"]) == 1
    assert again.returncode == 1
    assert again.stderr.startswith("error: the target database postgresql+asyncpg://")
    assert "Mercury rows in" in again.stderr and again.stderr.count("\n") == 1


async def test_mercury_db_copy_refuses_while_mercury_answers_on_its_port(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    site = Mercury(tmp_path, "mercury-test-never-started:0", fake)
    await upgrade(f"sqlite+aiosqlite:///{site.data_dir / 'mercury.db'}")
    target = tmp_path / "copy.db"
    with socket.socket() as listener:  # stands in for a running Mercury
        listener.bind(("127.0.0.1", site.port))
        listener.listen()
        done = mercury("db", "copy", "--to", f"sqlite+aiosqlite:///{target}", cwd=tmp_path)

    assert done.returncode == 1
    assert "Mercury seems to be running" in done.stderr and "Stop it first" in done.stderr
    assert not target.exists()
