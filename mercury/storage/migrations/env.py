"""Alembic environment for Mercury: async-aware, needs no alembic.ini on disk.

Two ways in:
- `mercury.storage.migrate` runs commands on a connection it already opened and passes
  it as `config.attributes["connection"]` (works inside a running event loop);
- otherwise the URL comes from `config.attributes["url"]` or the `sqlalchemy.url` main
  option, and this file opens its own async engine (e.g. the `alembic` CLI for developers).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from mercury.storage.db import parse_database_url
from mercury.storage.migrate import migration_connection
from mercury.storage.models import Base
from mercury.storage.recall import include_name

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # The recall index (migration 0010) is not in the models: never propose dropping it.
        include_name=include_name,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    # Same connection set-up as the programmatic path (SQLite dir, pragmas, foreign keys off).
    async with migration_connection(url) as connection:
        await connection.run_sync(_configure_and_run)
        await connection.commit()


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set config.attributes['url'] or sqlalchemy.url")
    return str(url)


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade --sql`)."""
    context.configure(
        url=parse_database_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
    else:
        asyncio.run(_run_with_own_engine(_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
