"""The async engine and session factory: SQLite (aiosqlite) by default, PostgreSQL (asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from mercury.storage.errors import StorageError

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
SUPPORTED_DRIVERS = (SQLITE_DRIVER, POSTGRES_DRIVER)

# Applied on every new SQLite connection: WAL lets the dashboard read while the dispatcher
# writes; busy_timeout makes a briefly locked database wait instead of failing at once;
# SQLite ignores foreign keys unless asked per connection.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


def safe_url(url: str | URL) -> str:
    """The URL as text with any password masked, for logs and error messages."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"
    return parsed.render_as_string(hide_password=True)


def parse_database_url(url: str | URL) -> URL:
    """Parse and check a database URL; StorageError names the problem, never the password."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        # The parser's own message may quote the raw string, password included: don't relay it.
        raise StorageError(
            "database_url: not a valid database URL; use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
        ) from None
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise StorageError(
            f"database_url: unsupported scheme {parsed.drivername!r}; "
            "use sqlite+aiosqlite:/// or postgresql+asyncpg://"
        )
    if parsed.drivername == POSTGRES_DRIVER and not parsed.database:
        raise StorageError(
            f"database_url: no database name in {safe_url(parsed)}; "
            "use postgresql+asyncpg://USER:PASSWORD@HOST/DB"
        )
    return parsed


def default_sqlite_url(data_dir: Path) -> str:
    """`sqlite+aiosqlite:///<absolute data_dir>/mercury.db`, the default database URL."""
    path = Path(data_dir).expanduser().resolve() / "mercury.db"
    return URL.create(SQLITE_DRIVER, database=str(path)).render_as_string(hide_password=False)


def _is_sqlite_memory(url: URL) -> bool:
    return url.drivername == SQLITE_DRIVER and url.database in (None, "", ":memory:")


def _set_sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


class Database:
    """One async engine plus its session factory; create once per process, dispose on exit."""

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.url: URL = parse_database_url(url)
        self._pinned: tuple[int, int] | None = None
        engine_kwargs: dict[str, Any] = {"echo": echo}
        if self.url.drivername == SQLITE_DRIVER:
            if _is_sqlite_memory(self.url):
                # An in-memory database lives in one connection: share it or every
                # session would see a different, empty database.
                engine_kwargs["poolclass"] = StaticPool
            else:
                Path(str(self.url.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            # Server connections die across restarts of PostgreSQL or idle timeouts.
            engine_kwargs["pool_pre_ping"] = True
            # Lets an operator tell Mercury's sessions apart in pg_stat_activity.
            engine_kwargs["connect_args"] = {"server_settings": {"application_name": "mercury"}}
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_kwargs)
        if self.url.drivername == SQLITE_DRIVER:
            event.listen(self.engine.sync_engine, "connect", _set_sqlite_pragmas)
        # expire_on_commit=False: records are read after commit, outside the session,
        # and an async session cannot lazy-load expired attributes.
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, echo: bool = False) -> Database:
        """The default SQLite database inside `data_dir`."""
        return cls(default_sqlite_url(data_dir), echo=echo)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with the password masked, for logs."""
        return safe_url(self.url)

    def session(self) -> AsyncSession:
        """A new session; use as `async with db.session() as s:` (commit yourself)."""
        return self._sessions()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    # ------------------------------------------------------------------ the file itself

    @property
    def file(self) -> Path | None:
        """The SQLite database file, or None (PostgreSQL, in-memory)."""
        if self.url.drivername != SQLITE_DRIVER or _is_sqlite_memory(self.url):
            return None
        return Path(str(self.url.database)).expanduser().resolve()

    def pin_file(self) -> None:
        """Remember which file is the database, so that losing it can be noticed.

        SQLite keeps writing to a file deleted under it (its open descriptors still work):
        every message from then on would vanish at the next start. `file_problem` tells.
        """
        path = self.file
        if path is not None:
            st = path.stat()
            self._pinned = (st.st_dev, st.st_ino)

    def file_problem(self) -> str | None:
        """Why the pinned database file is not the database any more, or None."""
        pinned = self._pinned
        path = self.file
        if pinned is None or path is None:
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            return "the database file was deleted while Mercury was running"
        except OSError as exc:
            return f"the database file cannot be checked: {exc.strerror}"
        if (st.st_dev, st.st_ino) != pinned:
            return "the database file was replaced while Mercury was running"
        return None

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"
