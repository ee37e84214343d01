"""Schema migrations (Alembic), callable from async code: `await upgrade(url)` on start-up.

Alembic's API is synchronous; each command runs through `AsyncConnection.run_sync` on a
connection opened here and handed to env.py, so it works inside a running event loop
without threads or a nested `asyncio.run`. No alembic.ini is needed on disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from mercury.storage.db import SQLITE_DRIVER, Database, parse_database_url, safe_url
from mercury.storage.errors import StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

T = TypeVar("T")
Target = str | Database


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config built in code, pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # attributes, not set_main_option: the ini parser would choke on a '%' in a password.
        config.attributes["url"] = url
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this version of Mercury ships."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - only if the versions folder went missing
        raise StorageError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


class DatabaseTooNew(StorageError):
    """The database was migrated by a newer Mercury than this one; nothing here may touch it."""


def too_new_message(url: str, current: str) -> str:
    """One line for a database at a revision this Mercury does not ship: what it is, the fix.

    Only the Mercury that made the revision knows how to read (or undo) it, so the way back
    is that version (or a later one), or the backup taken before the upgrade.
    """
    return (
        f"database {safe_url(url)} is at schema revision {current!r}, but this Mercury knows "
        f"revisions only up to {head_revision()!r}: it was migrated by a newer Mercury. "
        "Install that newer Mercury again (or a later one), or restore the backup taken "
        "before the upgrade with `mercury restore`; never downgrade the database by hand"
    )


def is_known_revision(revision: str) -> bool:
    """Whether this Mercury ships `revision` (False: a newer Mercury migrated the database)."""
    try:
        return _script().get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


def _sqlite_migration_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def _migration_engine(url: str) -> AsyncEngine:
    parsed = parse_database_url(url)
    if parsed.drivername == SQLITE_DRIVER and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # NullPool: a migration is a one-off; nothing should stay open afterwards.
    engine = create_async_engine(parsed, poolclass=NullPool)
    if parsed.drivername == SQLITE_DRIVER:
        event.listen(engine.sync_engine, "connect", _sqlite_migration_pragmas)
    return engine


@asynccontextmanager
async def _open(engine: AsyncEngine, target: Target) -> AsyncIterator[AsyncConnection]:
    """engine.connect(), with a failure to connect turned into one clear StorageError line."""
    try:
        conn = await engine.connect()
    except (OSError, DBAPIError) as exc:
        # The driver's own message (e.g. "password authentication failed for user ...")
        # without SQLAlchemy's statement/background boilerplate; the URL is shown masked.
        reason = getattr(exc, "orig", None) or exc
        raise StorageError(
            f"database: cannot connect to {safe_url(_url_of(target))}: "
            f"{type(reason).__name__}: {reason}"
        ) from exc
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def migration_connection(target: Target) -> AsyncIterator[AsyncConnection]:
    """A connection for migrating; SQLite foreign keys are off while it is in use.

    With foreign keys on, SQLite turns a DROP TABLE (which batch migrations do to rebuild a
    table) into a DELETE that cascades into child tables, silently losing rows.
    """
    if isinstance(target, Database):
        engine, owned = target.engine, False
    else:
        engine, owned = _migration_engine(target), True
    try:
        async with _open(engine, target) as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # The PRAGMA is ignored inside a transaction, so commit the autobegun one.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                await conn.commit()
            try:
                yield conn
            finally:
                if sqlite:
                    await conn.rollback()
                    await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    await conn.commit()
    finally:
        if owned:
            await engine.dispose()


async def _run(target: Target, fn: Callable[[Connection], T], *, commit: bool) -> T:
    async with migration_connection(target) as conn:
        result = await conn.run_sync(fn)
        if commit:
            # One transaction for the whole command: on PostgreSQL an upgrade that fails
            # half-way leaves the schema exactly as it was.
            await conn.commit()
        return result


def _url_of(target: Target) -> str:
    return (
        target.url.render_as_string(hide_password=False) if isinstance(target, Database) else target
    )


# pg_advisory_xact_lock key for "migrating": a gateway and workers started together
# (docs/scale-out.md) migrate one after another; the later ones find the schema at head.
MIGRATE_LOCK_KEY = 0x4D4D  # "MM"


def _command(action: Callable[[Config], None]) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Held until the command's one transaction ends (commit or rollback).
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
        # env.py migrates on this connection; it never needs (or sees) the URL.
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config)

    return run


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(target: Target) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    return await _run(target, _current, commit=False)


async def is_up_to_date(target: Target) -> bool:
    """True when the database is at this Mercury's head revision."""
    return await current_revision(target) == head_revision()


async def upgrade(target: Target, revision: str = "head") -> None:
    """Bring the schema up to `revision` (default: head). A no-op when already there."""
    current = await current_revision(target)
    if current is not None and not is_known_revision(current):
        raise DatabaseTooNew(too_new_message(_url_of(target), current))
    try:
        await _run(target, _command(lambda c: command.upgrade(c, revision)), commit=True)
    except CommandError as exc:
        raise StorageError(f"database migration failed: {exc}") from exc


async def downgrade(target: Target, revision: str = "base") -> None:
    """Take the schema back to `revision`; "base" drops every Mercury table (and its data)."""
    try:
        await _run(target, _command(lambda c: command.downgrade(c, revision)), commit=True)
    except CommandError as exc:
        raise StorageError(f"database downgrade failed: {exc}") from exc
