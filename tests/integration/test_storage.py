"""Storage layer against real databases: a SQLite file and a real PostgreSQL server.

Each PostgreSQL test gets its own freshly created database (dropped afterwards), so tests
never see each other's rows or schema. Set MERCURY_TEST_POSTGRES_URL (scripts/ensure-postgres
prints one); without it the fixture runs scripts/ensure-postgres itself, and fails if it cannot.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, StatementError

from mercury.storage import (
    Database,
    DuplicateMessage,
    JobStatus,
    MessageRole,
    NotFound,
    RunReason,
    StaleJobs,
    StorageError,
    abort_queued_jobs,
    add_message,
    add_task,
    add_usage,
    cancel_task,
    claim_next_jobs,
    current_revision,
    default_sqlite_url,
    delete_preference,
    downgrade,
    due_tasks,
    enqueue_job,
    finish_job,
    get_conversation,
    get_job,
    get_or_create_space,
    get_preferences,
    get_role,
    get_space,
    grant_permission,
    has_message,
    head_revision,
    is_muted,
    is_up_to_date,
    link_conversation,
    list_jobs,
    list_mutes,
    list_roles,
    list_runs,
    list_spaces,
    list_tasks,
    mark_task_ran,
    mute,
    pause_space,
    pause_until_resumed,
    recent_messages,
    record_run,
    remove_role,
    requeue_or_fail_stale_running,
    reset_context,
    resume_space,
    revoke_permission,
    role_permissions,
    safe_url,
    set_preference,
    set_role,
    set_space_profile,
    space_for_conversation,
    unlink_conversation,
    unmute,
    upgrade,
    usage_for_space,
    user_jobs_since,
)
from mercury.storage.migrate import alembic_config
from mercury.storage.models import Base, Job
from mercury.storage.recall import include_name as recall_include_name

MERCURY_TABLES = set(Base.metadata.tables)
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The PostgreSQL server: MERCURY_TEST_POSTGRES_URL, else scripts/ensure-postgres starts one.

    Never skipped: without a server the PostgreSQL half of the suite fails, naming why.
    """
    url = os.environ.get("MERCURY_TEST_POSTGRES_URL", "").strip()
    if url:
        return url
    script = Path(__file__).resolve().parents[2] / "scripts" / "ensure-postgres"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=600, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        pytest.fail(f"no PostgreSQL server: scripts/ensure-postgres failed:\n{done.stderr[-2000:]}")
    return lines[-1]


async def _drop_database(admin: asyncpg.Connection, name: str) -> None:
    """Drop a test database, whoever is still connected to it.

    FORCE ends connections a failing test leaked. It may not end another role's backend:
    an autovacuum worker (the server's own) that just started in the new database makes
    the drop fail with InsufficientPrivilege; that worker ends by itself within moments.
    """
    for _ in range(100):
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except asyncpg.exceptions.InsufficientPrivilegeError:
            await asyncio.sleep(0.1)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def fresh_postgres_database(server_url: str) -> AsyncIterator[str]:
    """Create an empty database on the server for one test; drop it afterwards."""
    server = make_url(server_url)
    dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"mercury_t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            await _drop_database(admin, name)
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (no tables) of each kind."""
    if request.param == "sqlite":
        yield default_sqlite_url(tmp_path / "data")
    else:
        async with fresh_postgres_database(request.getfixturevalue("postgres_server_url")) as url:
            yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated database."""
    await upgrade(db_url)
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def space(db: Database) -> str:
    return (await get_or_create_space(db, "space-a", name="Space A")).id


async def _table_names(url: str) -> set[str]:
    database = Database(url)
    try:
        async with database.engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
            # Not models: the FTS5 tables of the recall index (migration 0010).
            return {n for n in names if recall_include_name(n, "table", {})}
    finally:
        await database.dispose()


# --------------------------------------------------------------------------- migrations


async def test_upgrade_from_empty_creates_every_table(db_url: str) -> None:
    assert await current_revision(db_url) is None
    assert not await is_up_to_date(db_url)

    await upgrade(db_url)

    assert await current_revision(db_url) == head_revision() == "0014"
    assert await is_up_to_date(db_url)
    assert await _table_names(db_url) == MERCURY_TABLES | {"alembic_version"}
    assert {
        "spaces", "conversations", "messages", "jobs", "runs", "roles", "role_permissions",
        "mutes", "preferences", "tasks", "extension_state", "usage",
    } <= MERCURY_TABLES  # fmt: skip


async def test_upgrade_twice_is_a_no_op_and_keeps_data(db_url: str) -> None:
    await upgrade(db_url)
    database = Database(db_url)
    try:
        await get_or_create_space(database, "kept")
        await upgrade(db_url)
        assert await current_revision(db_url) == head_revision()
        assert [s.id for s in await list_spaces(database)] == ["kept"]
    finally:
        await database.dispose()


async def test_downgrade_to_base_then_upgrade_again(db_url: str) -> None:
    await upgrade(db_url)
    await downgrade(db_url, "base")
    assert await current_revision(db_url) is None
    assert not (await _table_names(db_url)) & MERCURY_TABLES

    await upgrade(db_url)
    assert await current_revision(db_url) == head_revision()
    assert await _table_names(db_url) >= MERCURY_TABLES


def _schema_diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "include_name": recall_include_name,
        },
    )
    return list(compare_metadata(context, Base.metadata))


def _check_constraint_names(conn: Connection) -> dict[str, set[str]]:
    inspector = inspect(conn)
    return {
        table: {c["name"] for c in inspector.get_check_constraints(table) if c.get("name")}
        for table in MERCURY_TABLES
    }


async def test_migrated_schema_matches_the_models(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []
        # Alembic does not compare CHECK constraints: compare their names ourselves.
        reflected = await conn.run_sync(_check_constraint_names)
    expected = {
        table.name: {
            str(c.name)
            for c in table.constraints
            if c.__class__.__name__ == "CheckConstraint" and c.name
        }
        for table in Base.metadata.tables.values()
    }
    assert reflected == expected
    assert reflected["jobs"] == {"ck_jobs_job_status"}
    assert reflected["tasks"] == {"ck_tasks_one_schedule", "ck_tasks_interval_positive"}


async def test_the_database_enforces_checks_and_foreign_keys(db: Database, space: str) -> None:
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await s.execute(
                text(
                    "INSERT INTO jobs (space_id, status, attempts, priority, enqueued_at, payload)"
                    " VALUES (:s, 'bogus', 0, 0, :t, '{}')"
                ),
                {"s": space, "t": T0},
            )
    with pytest.raises(IntegrityError):  # foreign keys are on, SQLite included
        await enqueue_job(db, "no-such-space")


async def test_upgrade_refuses_a_database_from_a_newer_mercury(db_url: str) -> None:
    await upgrade(db_url)
    database = Database(db_url)
    try:
        async with database.transaction() as s:
            await s.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    finally:
        await database.dispose()
    with pytest.raises(StorageError, match=r"f00dfeed.*newer Mercury"):
        await upgrade(db_url)


async def test_migrations_accept_a_database_object_in_memory() -> None:
    database = Database("sqlite+aiosqlite://")
    try:
        await upgrade(database)
        assert await is_up_to_date(database)
        assert (await get_or_create_space(database, "mem")).id == "mem"
        async with database.engine.connect() as conn:
            # Migration turned SQLite foreign keys off for itself; they must be back on.
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await database.dispose()


# --------------------------------------------------------------------------- engine


async def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    url = default_sqlite_url(data_dir)
    assert url == f"sqlite+aiosqlite:///{data_dir.resolve()}/mercury.db"
    database = Database.for_data_dir(data_dir)
    try:
        assert data_dir.is_dir()  # the parent directory is created
        async with database.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert database.dialect == "sqlite"
    finally:
        await database.dispose()
    assert (data_dir / "mercury.db").is_file()


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("mysql+pymysql://bob:hunter2-secret@db.example/mercury", "mysql+pymysql"),
        ("postgresql://bob:hunter2-secret@127.0.0.1/mercury", "postgresql"),
        ("sqlite:///data/mercury.db", "sqlite"),
    ],
)
async def test_unsupported_scheme_is_a_clear_error_without_the_password(
    url: str, scheme: str
) -> None:
    with pytest.raises(StorageError) as caught:
        Database(url)
    assert str(caught.value) == (
        f"database_url: unsupported scheme '{scheme}'; "
        "use sqlite+aiosqlite:/// or postgresql+asyncpg://"
    )
    with pytest.raises(StorageError) as caught_again:
        await upgrade(url)
    assert "hunter2-secret" not in str(caught_again.value)


async def test_unparseable_url_does_not_echo_it() -> None:
    with pytest.raises(StorageError) as caught:
        Database("hunter2-secret is not a url")
    assert "hunter2-secret" not in str(caught.value)
    assert "database_url" in str(caught.value)


async def test_password_is_masked_in_repr_and_safe_url() -> None:
    url = "postgresql+asyncpg://bob:hunter2-secret@127.0.0.1:1/mercury"
    database = Database(url)
    try:
        assert "hunter2-secret" not in repr(database)
        assert "hunter2-secret" not in database.safe_url
        assert safe_url(url) == "postgresql+asyncpg://bob:***@127.0.0.1:1/mercury"
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_wrong_postgres_password_is_one_clear_line_without_it(
    postgres_server_url: str,
) -> None:
    bad = make_url(postgres_server_url).set(password="hunter2-wrong-pw")
    with pytest.raises(StorageError) as caught:
        await upgrade(bad.render_as_string(hide_password=False))
    message = str(caught.value)
    assert message.startswith(f"database: cannot connect to {safe_url(bad)}: ")
    assert "password authentication failed" in message
    assert "hunter2-wrong-pw" not in message and "\n" not in message


async def test_unreachable_database_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "mercury.db").mkdir()  # a directory where the database file should be
    with pytest.raises(StorageError, match="cannot connect"):
        await current_revision(default_sqlite_url(tmp_path))


async def test_alembic_command_line_path_opens_its_own_engine(db_url: str) -> None:
    # What `alembic upgrade head` does: no connection handed over, env.py runs asyncio.run,
    # so it must happen outside this test's event loop thread.
    config = alembic_config(db_url)
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await current_revision(db_url) == head_revision()


# --------------------------------------------------------------------------- spaces


async def test_spaces(db: Database) -> None:
    created = await get_or_create_space(db, "s1", name="First", profile="coding")
    assert (created.id, created.name, created.profile) == ("s1", "First", "coding")
    assert created.created_at.tzinfo is not None
    assert created.paused_until is None and created.context_reset_at is None

    again = await get_or_create_space(db, "s1", name="Renamed?")
    assert again == created  # existing space is returned unchanged

    default = await get_or_create_space(db, "s2")
    assert (default.name, default.profile) == ("s2", "general")
    assert [s.id for s in await list_spaces(db)] == ["s1", "s2"]
    assert await get_space(db, "nope") is None

    paused = await pause_space(db, "s1", T0)
    assert paused.paused_until == T0
    assert (await resume_space(db, "s1")).paused_until is None
    assert (await set_space_profile(db, "s1", "general")).profile == "general"
    assert (await reset_context(db, "s1", T0)).context_reset_at == T0
    with pytest.raises(NotFound):
        await resume_space(db, "nope")


async def test_pause_until_resumed_and_resume(db: Database, space: str) -> None:
    now = datetime.now(UTC)
    paused = await pause_until_resumed(db, space)
    assert paused.is_paused(now) and paused.is_paused(now + timedelta(days=3650))
    assert paused.pause_ends is None  # no end to show: it waits for /resume
    fetched = await get_space(db, space)  # stored, so it survives a restart
    assert fetched is not None and fetched.is_paused(now) and fetched.pause_ends is None

    resumed = await resume_space(db, space)
    assert not resumed.is_paused(now) and resumed.pause_ends is None
    assert resumed.paused_until is None

    timed = await pause_space(db, space, now + timedelta(hours=1))
    assert timed.is_paused(now) and timed.pause_ends == now + timedelta(hours=1)
    assert not timed.is_paused(now + timedelta(hours=2))  # a timed pause ends by itself
    assert not (await resume_space(db, space)).is_paused(now)
    with pytest.raises(NotFound):
        await pause_until_resumed(db, "nope")
    with pytest.raises(NotFound):
        await resume_space(db, "nope")


async def test_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    await get_or_create_space(db, "tz")
    plus_two = datetime(2026, 5, 6, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    stored = await pause_space(db, "tz", plus_two)
    fetched = await get_space(db, "tz")
    assert fetched is not None and stored.paused_until is not None
    assert fetched.paused_until == plus_two
    assert fetched.paused_until.utcoffset() == timedelta(0)
    assert fetched.paused_until.hour == 7
    with pytest.raises(StatementError, match="naive datetime"):
        await pause_space(db, "tz", datetime(2026, 1, 1))


# --------------------------------------------------------------------------- conversations


async def test_conversations(db: Database, space: str) -> None:
    other = (await get_or_create_space(db, "space-b")).id
    conv = await link_conversation(db, "slack", "C123", space, thread_id="1700.01")
    assert (conv.platform, conv.chat_id, conv.space_id, conv.thread_id) == (
        "slack", "C123", space, "1700.01",
    )  # fmt: skip
    assert await space_for_conversation(db, "slack", "C123") == space
    assert await space_for_conversation(db, "discord", "C123") is None

    relinked = await link_conversation(db, "slack", "C123", other)
    assert relinked.id == conv.id  # unique(platform, chat_id): same row, new space
    assert relinked.thread_id is None
    assert await space_for_conversation(db, "slack", "C123") == other
    got = await get_conversation(db, "slack", "C123")
    assert got is not None and got.space_id == other

    assert await unlink_conversation(db, "slack", "C123")
    assert not await unlink_conversation(db, "slack", "C123")
    assert await space_for_conversation(db, "slack", "C123") is None


# --------------------------------------------------------------------------- messages


async def test_add_message_and_redelivery_is_detected(db: Database, space: str) -> None:
    conv = await link_conversation(db, "telegram", "42", space)
    msg = await add_message(
        db,
        space_id=space,
        conversation_id=conv.id,
        platform="telegram",
        platform_message_id="1001",
        role=MessageRole.USER,
        author_id="u1",
        author_name="Ada",
        text="hello",
        attachments=[{"path": "inbox/a.png", "mime": "image/png"}],
    )
    assert msg.id > 0 and msg.role is MessageRole.USER and not msg.is_bot
    assert msg.attachments == [{"path": "inbox/a.png", "mime": "image/png"}]
    assert await has_message(db, "telegram", "1001")
    assert not await has_message(db, "telegram", "1002")

    with pytest.raises(DuplicateMessage) as caught:
        await add_message(
            db,
            space_id=space,
            platform="telegram",
            platform_message_id="1001",
            role=MessageRole.USER,
            text="hello again",
        )
    assert (caught.value.platform, caught.value.platform_message_id) == ("telegram", "1001")

    # The same id on another platform is another message; messages without an id never clash.
    await add_message(
        db, space_id=space, platform="slack", platform_message_id="1001", role="user", text="x"
    )
    for _ in range(2):
        await add_message(
            db, space_id=space, platform="telegram", role=MessageRole.ASSISTANT, text="answer"
        )
    assert len(await recent_messages(db, space, limit=100)) == 4


async def test_message_and_job_commit_together(db: Database, space: str) -> None:
    # A redelivered event inside a caller's transaction must not poison that transaction.
    async with db.transaction() as s:
        msg = await add_message(
            s, space_id=space, platform="web", platform_message_id="m1", role="user", text="hi"
        )
        with pytest.raises(DuplicateMessage):
            await add_message(
                s, space_id=space, platform="web", platform_message_id="m1", role="user", text="hi"
            )
        job = await enqueue_job(s, space, message_id=msg.id, payload={"prompt": "hi"})
    stored = await get_job(db, job.id)
    assert stored is not None and stored.message_id == msg.id
    assert stored.payload == {"prompt": "hi"}

    # And a failure rolls both back.
    with pytest.raises(RuntimeError):
        async with db.transaction() as s:
            msg2 = await add_message(
                s, space_id=space, platform="web", platform_message_id="m2", role="user", text="x"
            )
            await enqueue_job(s, space, message_id=msg2.id)
            raise RuntimeError("crash before commit")
    assert not await has_message(db, "web", "m2")
    assert len(await list_jobs(db, space_id=space)) == 1


async def test_recent_messages_limit_since_and_reset(db: Database, space: str) -> None:
    times = [T0 + timedelta(minutes=i) for i in range(5)]
    for i, ts in enumerate(times):
        await add_message(
            db, space_id=space, platform="web", role="user", text=f"m{i}", created_at=ts
        )
    await add_message(db, space_id="space-a", platform="web", role="ambient", text="m5",
                      created_at=times[4])  # fmt: skip
    await get_or_create_space(db, "elsewhere")
    await add_message(db, space_id="elsewhere", platform="web", role="user", text="other")

    assert [m.text for m in await recent_messages(db, space, limit=3)] == ["m3", "m4", "m5"]
    assert [m.text for m in await recent_messages(db, space, 10, since=times[3])] == [
        "m3", "m4", "m5",
    ]  # fmt: skip
    last = await recent_messages(db, space, limit=1)
    assert last[0].created_at == times[4] and last[0].role is MessageRole.AMBIENT

    await reset_context(db, space, at=times[2])
    assert [m.text for m in await recent_messages(db, space)] == ["m2", "m3", "m4", "m5"]
    assert [m.text for m in await recent_messages(db, space, since=times[4])] == ["m4", "m5"]
    everything = await recent_messages(db, space, include_before_reset=True)
    assert [m.text for m in everything] == ["m0", "m1", "m2", "m3", "m4", "m5"]


# --------------------------------------------------------------------------- jobs


async def test_enqueue_and_finish_job(db: Database, space: str) -> None:
    job = await enqueue_job(db, space, payload={"k": [1, 2]}, priority=3)
    assert (job.status, job.attempts, job.priority, job.owner) == (JobStatus.QUEUED, 0, 3, None)
    assert job.enqueued_at.tzinfo is not None

    [claimed] = await claim_next_jobs(db, owner="p1", max_total=5)
    assert claimed.id == job.id

    with pytest.raises(ValueError):
        await finish_job(db, job.id, JobStatus.RUNNING)
    assert await finish_job(db, job.id, JobStatus.FAILED, "model unreachable")
    assert not await finish_job(db, job.id, JobStatus.DONE)  # already final
    done = await get_job(db, job.id)
    assert done is not None
    assert (done.status, done.error) == (JobStatus.FAILED, "model unreachable")
    assert done.finished_at is not None
    assert await get_job(db, 999_999) is None


async def test_user_jobs_since_filters_in_the_database(db: Database) -> None:
    for sid in ("a", "b"):
        await get_or_create_space(db, sid)
    since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old = await enqueue_job(db, "a", payload={"user_key": "slack:U1", "prompt": "yesterday"})
    a1 = await enqueue_job(db, "a", payload={"user_key": "slack:U1", "prompt": "hi"})
    await enqueue_job(db, "a", payload={"prompt": "a scheduled task names no user"})
    await enqueue_job(db, "a", payload={"user_key": "", "prompt": "empty key"})
    b1 = await enqueue_job(db, "b", payload={"user_key": "web:op", "task_id": 7})
    await enqueue_job(db, "b")  # no payload at all
    [claimed] = await claim_next_jobs(db, owner="p", max_total=1, busy_spaces={"a"})
    assert claimed.id == b1.id
    assert await finish_job(db, b1.id, JobStatus.DONE)  # finished jobs count too
    at = {a1.id: since + timedelta(minutes=1), b1.id: since + timedelta(minutes=2)}
    async with db.transaction() as s:
        await s.execute(
            update(Job).where(Job.id == old.id).values(enqueued_at=since - timedelta(seconds=1))
        )
        for job_id, when in at.items():
            await s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=when))

    rows = await user_jobs_since(db, since)
    assert rows == [("a", "slack:U1", at[a1.id]), ("b", "web:op", at[b1.id])]
    assert rows[0].user_key == "slack:U1" and rows[0].enqueued_at.tzinfo is not None
    # `since` is inclusive; the job from before it is in only when asked from earlier.
    assert len(await user_jobs_since(db, since - timedelta(seconds=1))) == 3
    assert await user_jobs_since(db, since + timedelta(hours=1)) == []


async def test_claim_is_fifo_per_space_and_one_running_per_space(db: Database) -> None:
    for sid in ("a", "b", "c"):
        await get_or_create_space(db, sid)
    a1 = await enqueue_job(db, "a", payload={"n": "a1"})
    b1 = await enqueue_job(db, "b", payload={"n": "b1"})
    a2 = await enqueue_job(db, "a", payload={"n": "a2"})
    c1 = await enqueue_job(db, "c", payload={"n": "c1"})

    first = await claim_next_jobs(db, owner="p1", max_total=10, busy_spaces={"c"})
    assert [j.id for j in first] == [a1.id, b1.id]  # one per space, oldest first; c is busy
    assert all(j.status is JobStatus.RUNNING and j.owner == "p1" for j in first)
    assert all(j.attempts == 1 and j.started_at is not None for j in first)

    assert await claim_next_jobs(db, owner="p1", max_total=10, busy_spaces={"c"}) == []

    assert await finish_job(db, a1.id, JobStatus.DONE)
    second = await claim_next_jobs(db, owner="p1", max_total=10)
    assert [j.id for j in second] == [a2.id, c1.id]  # a2 only after a1 finished
    running = await list_jobs(db, status=JobStatus.RUNNING)
    assert sorted(j.space_id for j in running) == ["a", "b", "c"]

    # The database itself refuses a second running job in a space.
    a3 = await enqueue_job(db, "a")
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await s.execute(text("UPDATE jobs SET status = 'running' WHERE id = :i"), {"i": a3.id})


async def test_claim_respects_max_total_and_priority(db: Database) -> None:
    for sid in ("a", "b", "c"):
        await get_or_create_space(db, sid)
    a1 = await enqueue_job(db, "a")
    b1 = await enqueue_job(db, "b")
    c1 = await enqueue_job(db, "c", priority=5)
    assert await claim_next_jobs(db, owner="p", max_total=0) == []
    picked = await claim_next_jobs(db, owner="p", max_total=2)
    assert [j.id for j in picked] == [c1.id, a1.id]  # priority first, then oldest
    rest = await claim_next_jobs(db, owner="p", max_total=2)
    assert [j.id for j in rest] == [b1.id]


async def test_abort_queued_jobs(db: Database, space: str) -> None:
    await enqueue_job(db, space)
    await enqueue_job(db, space)
    [running] = await claim_next_jobs(db, owner="p", max_total=1)
    assert await abort_queued_jobs(db, space, "stopped by /stop") == 1
    aborted = await list_jobs(db, status=JobStatus.ABORTED)
    assert len(aborted) == 1 and aborted[0].error == "stopped by /stop"
    still = await get_job(db, running.id)
    assert still is not None and still.status is JobStatus.RUNNING


async def test_stale_running_jobs_are_requeued_once_then_failed(db: Database) -> None:
    for sid in ("a", "b"):
        await get_or_create_space(db, sid)
    job = await enqueue_job(db, "a", payload={"prompt": "hi"})
    later = await enqueue_job(db, "a")
    await claim_next_jobs(db, owner="dead-1", max_total=5)

    # A fresh process recovers: first death -> back in the queue, at the head of its space.
    report = await requeue_or_fail_stale_running(db, "alive")
    assert [j.id for j in report.requeued] == [job.id] and report.failed == []
    requeued = report.requeued[0]
    assert (requeued.status, requeued.owner, requeued.started_at) == (JobStatus.QUEUED, None, None)
    assert requeued.attempts == 1

    [again] = await claim_next_jobs(db, owner="dead-2", max_total=5)
    assert again.id == job.id and again.attempts == 2

    # A job running under the current owner is alive and left alone.
    mine = await enqueue_job(db, "b")
    await claim_next_jobs(db, owner="alive", max_total=5, busy_spaces={"a"})

    # Second death -> failed, with a reason, never silently lost.
    report = await requeue_or_fail_stale_running(db, "alive")
    assert report.requeued == [] and [j.id for j in report.failed] == [job.id]
    failed = await get_job(db, job.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error and "stopped" in failed.error
    assert failed.finished_at is not None
    alive = await get_job(db, mine.id)
    assert alive is not None and alive.status is JobStatus.RUNNING and alive.owner == "alive"

    # The space's queue moves on.
    [nxt] = await claim_next_jobs(db, owner="alive", max_total=5)
    assert nxt.id == later.id
    assert await requeue_or_fail_stale_running(db, "alive") == StaleJobs()


# --------------------------------------------------------------------------- runs and usage


async def test_record_and_list_runs(db: Database, space: str) -> None:
    job = await enqueue_job(db, space)
    run = await record_run(
        db,
        space_id=space,
        job_id=job.id,
        reason=RunReason.OOM,
        exit_code=137,
        duration_ms=1234,
        image="mercury-agent:latest",
        container_name="mercury-x-1",
        input_tokens=10,
        output_tokens=20,
        cost_usd=0.0125,
        model="claude-x",
        error="killed: out of memory",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1),
    )
    assert run.id > 0 and run.reason is RunReason.OOM and run.exit_code == 137
    second = await record_run(db, space_id=space, reason="ok", started_at=T0 + timedelta(hours=1))
    assert (second.input_tokens, second.cost_usd, second.job_id) == (0, None, None)

    runs = await list_runs(db, space_id=space)
    assert [r.id for r in runs] == [second.id, run.id]  # newest first
    assert runs[1].cost_usd == pytest.approx(0.0125)
    assert runs[1].container_name == "mercury-x-1" and runs[1].duration_ms == 1234
    assert await list_runs(db, space_id="space-none") == []


async def test_usage_upsert_accumulates(db: Database, space: str) -> None:
    day = date(2026, 3, 1)
    await add_usage(db, space, model="m1", input_tokens=100, output_tokens=10, cost_usd=0.5,
                    day=day)  # fmt: skip
    await add_usage(db, space, model="m1", input_tokens=50, output_tokens=5, cost_usd=0.25,
                    day=day)  # fmt: skip
    await add_usage(db, space, model="m2", input_tokens=1, output_tokens=1, day=day)
    await add_usage(db, space, model="m1", input_tokens=7, day=day + timedelta(days=1))

    rows = await usage_for_space(db, space)
    assert [(u.day, u.model, u.input_tokens, u.output_tokens, u.runs) for u in rows] == [
        (day, "m1", 150, 15, 2),
        (day, "m2", 1, 1, 1),
        (day + timedelta(days=1), "m1", 7, 0, 1),
    ]
    assert rows[0].cost_usd == pytest.approx(0.75)
    assert len(await usage_for_space(db, space, since=day + timedelta(days=1))) == 1


# --------------------------------------------------------------------------- roles and mutes


async def test_roles_and_permissions(db: Database, space: str) -> None:
    assert await get_role(db, space, "slack", "U1") is None
    await set_role(db, space, "slack", "U1", "admin")
    await set_role(db, space, "slack", "U2", "member")
    await set_role(db, space, "slack", "U1", "trusted")  # replaces
    assert await get_role(db, space, "slack", "U1") == "trusted"
    assert await get_role(db, space, "discord", "U1") is None
    assert [(r.user_id, r.role) for r in await list_roles(db, space)] == [
        ("U1", "trusted"), ("U2", "member"),
    ]  # fmt: skip
    assert await remove_role(db, space, "slack", "U2")
    assert not await remove_role(db, space, "slack", "U2")

    await grant_permission(db, space, "trusted", "tasks.manage")
    await grant_permission(db, space, "trusted", "tasks.manage")  # idempotent
    await grant_permission(db, space, "trusted", "prefs.set")
    assert await role_permissions(db, space, "trusted") == {"tasks.manage", "prefs.set"}
    assert await revoke_permission(db, space, "trusted", "prefs.set")
    assert not await revoke_permission(db, space, "trusted", "prefs.set")
    assert await role_permissions(db, space, "trusted") == {"tasks.manage"}
    assert await role_permissions(db, space, "nobody") == set()


async def test_mutes(db: Database, space: str) -> None:
    now = T0
    assert not await is_muted(db, space, "slack", "U1", now=now)
    await mute(db, space, "slack", "U1", until=now + timedelta(hours=1), reason="spam")
    await mute(db, space, "slack", "U2")  # until unmuted
    assert await is_muted(db, space, "slack", "U1", now=now)
    assert not await is_muted(db, space, "slack", "U1", now=now + timedelta(hours=2))
    assert not await is_muted(db, space, "discord", "U1", now=now)
    assert await is_muted(db, space, "slack", "U2", now=now + timedelta(days=999))

    active = await list_mutes(db, space, now=now + timedelta(hours=2))
    assert [(m.user_id, m.until) for m in active] == [("U2", None)]
    await mute(db, space, "slack", "U1", until=None, reason="again")  # extends to forever
    assert await is_muted(db, space, "slack", "U1", now=now + timedelta(days=1))

    assert await unmute(db, space, "slack", "U1")
    assert not await unmute(db, space, "slack", "U1")
    assert not await is_muted(db, space, "slack", "U1", now=now)


# --------------------------------------------------------------------------- preferences, tasks


async def test_preferences(db: Database, space: str) -> None:
    assert await get_preferences(db, space) == {}
    await set_preference(db, space, "language", "fr")
    await set_preference(db, space, "tone", "brief")
    await set_preference(db, space, "language", "de")
    assert await get_preferences(db, space) == {"language": "de", "tone": "brief"}
    assert await delete_preference(db, space, "tone")
    assert not await delete_preference(db, space, "tone")
    assert await get_preferences(db, space) == {"language": "de"}


async def test_tasks(db: Database, space: str) -> None:
    conv = await link_conversation(db, "slack", "C1", space)
    with pytest.raises(ValueError):
        await add_task(db, space, "no schedule")
    with pytest.raises(ValueError):
        await add_task(db, space, "two", cron="* * * * *", interval_s=60)

    once = await add_task(db, space, "remind me", run_at=T0, created_by="U1",
                          conversation_id=conv.id)  # fmt: skip
    every = await add_task(db, space, "check feed", interval_s=3600)
    daily = await add_task(db, space, "digest", cron="0 9 * * *", next_run_at=T0 + timedelta(1))
    assert once.next_run_at == T0 and once.enabled and once.created_by == "U1"
    assert every.next_run_at is not None and every.next_run_at > T0
    assert [t.id for t in await list_tasks(db, space)] == [once.id, every.id, daily.id]

    due = await due_tasks(db, now=T0 + timedelta(minutes=1))
    assert [t.id for t in due] == [once.id]
    await mark_task_ran(db, once.id, ran_at=T0, next_run_at=None)  # one-shot: disabled
    assert await due_tasks(db, now=T0 + timedelta(minutes=1)) == []
    assert [t.id for t in await list_tasks(db, space, enabled_only=True)] == [every.id, daily.id]
    await mark_task_ran(db, daily.id, ran_at=T0, next_run_at=T0 + timedelta(days=2))
    [ran] = [t for t in await list_tasks(db) if t.id == daily.id]
    assert ran.last_run_at == T0 and ran.next_run_at == T0 + timedelta(days=2)

    assert not await cancel_task(db, every.id, space_id="other-space")
    assert await cancel_task(db, every.id, space_id=space)
    assert not await cancel_task(db, every.id)
    assert [t.id for t in await list_tasks(db, space)] == [once.id, daily.id]
