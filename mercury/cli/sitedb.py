"""The site's database for commands that read or change it beside a running Mercury
(`mercury usage`, `mercury budget`).

Why not just open it: a missing SQLite file would be created empty and a schema from
another version read wrongly, so both are refused with one line saying what to run. The
database is shared with `mercury run` safely: SQLite in WAL mode (and PostgreSQL) let
these short transactions run beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mercury.config import Config

if TYPE_CHECKING:  # imported where used: `mercury --help` need not load SQLAlchemy
    from mercury.storage import Database


class SiteDbError(Exception):
    """The database cannot be used; the message is the one line to print."""


@asynccontextmanager
async def site_database(config: Config) -> AsyncIterator[Database]:
    """The site's migrated database (a `mercury.storage.Database`), disposed on exit."""
    from mercury.logging import first_line
    from mercury.storage import Database, StorageError, is_up_to_date, parse_database_url
    from mercury.storage.db import SQLITE_DRIVER

    url = config.resolved_database_url()
    try:
        parsed = parse_database_url(url)
    except StorageError as exc:
        raise SiteDbError(str(exc)) from None
    if parsed.drivername == SQLITE_DRIVER and parsed.database not in (None, "", ":memory:"):
        path = Path(str(parsed.database))
        if not path.is_file():
            raise SiteDbError(
                f"no database at {path}: start Mercury here once (`mercury run`) "
                "or create it with `mercury db upgrade`"
            )
    db = Database(url)
    try:
        try:
            current = await is_up_to_date(db)
        except Exception as exc:
            raise SiteDbError(
                f"database_url: cannot read {db.safe_url}: {first_line(exc)}"
            ) from None
        if not current:
            raise SiteDbError(
                f"the database ({db.safe_url}) is not at this Mercury's schema: "
                "run `mercury db upgrade`"
            )
        yield db
    finally:
        await db.dispose()


async def existing_space(db: Database, space_id: str) -> str:
    """`space_id` when the space exists; else SiteDbError naming it."""
    from mercury.storage import get_space

    if await get_space(db, space_id) is None:
        raise SiteDbError(
            f'no space "{space_id}" in this database (`mercury usage` lists the spaces in use)'
        )
    return space_id


__all__ = ["SiteDbError", "existing_space", "site_database"]
