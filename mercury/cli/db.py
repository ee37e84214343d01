"""`mercury db ...`: apply migrations, report the schema revision, copy to another database."""

from __future__ import annotations

import asyncio
import socket

import click

from mercury.cli.common import config_option, fail, load, load_or_exit, out
from mercury.config import Config, ConfigError

COPY_TO_ENV = "MERCURY_DB_COPY_TO"


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@config_option
def db_upgrade() -> None:
    """Apply every pending migration."""
    from mercury.logging import first_line
    from mercury.storage import safe_url
    from mercury.storage.migrate import DatabaseTooNew, current_revision, upgrade

    loaded = load_or_exit()
    url = loaded.config.resolved_database_url()
    loaded.config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(upgrade(url))
        rev = asyncio.run(current_revision(url))
    except DatabaseTooNew as exc:  # the line says what to do; it is not a failed migration
        fail(f"database_url: {exc}")
    except Exception as exc:
        fail(f"database_url: cannot migrate {safe_url(url)}: {first_line(exc)}")
    out.print(f"{safe_url(url)} is at revision {rev}")


@db.command("current")
@config_option
def db_current() -> None:
    """Print the schema revision of the database and the one the code expects."""
    from mercury.logging import first_line
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, head_revision, is_known_revision

    loaded = load_or_exit()
    url = loaded.config.resolved_database_url()
    try:
        rev = asyncio.run(current_revision(url))
    except Exception as exc:
        fail(f"database_url: cannot read {safe_url(url)}: {first_line(exc)}")
    note = "  (newer than this Mercury)" if rev and not is_known_revision(rev) else ""
    out.print(f"database: {rev or 'empty'}  code: {head_revision()}{note}")


def _listening(config: Config) -> str | None:
    """`host:port` when something accepts connections on Mercury's configured listener."""
    host = config.server.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, config.server.port), timeout=0.5):
            return f"{host}:{config.server.port}"
    except OSError:
        return None


@db.command("copy")
@config_option
@click.option(
    "--to",
    "target",
    envvar=COPY_TO_ENV,
    show_envvar=True,
    required=True,
    help="The empty database to copy into, e.g. postgresql+asyncpg://USER:PASSWORD@HOST/DB "
    f"(or set ${COPY_TO_ENV}, which keeps the password off the command line).",
)
@click.option(
    "--from",
    "source",
    default=None,
    help="The database to copy from (default: the configured one, database_url).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Rows read and written at a time.",
)
def db_copy(target: str, source: str | None, batch_size: int) -> None:
    """Copy every row of Mercury's database into a new, empty one (SQLite to PostgreSQL).

    Stop Mercury first. The target is migrated to this Mercury's schema, filled in one
    transaction, and its row counts compared with the source's; the source is not changed.
    """
    from mercury.logging import first_line
    from mercury.ops.dbcopy import CopyRefused, copy_database
    from mercury.storage import StorageError, safe_url

    config: Config | None
    if source is None:
        config = load_or_exit().config
        source = config.resolved_database_url()
    else:
        try:
            config = load().config
        except ConfigError:
            config = None  # --from names the database: no config is needed
    if config is not None and config.resolved_database_url() == source:
        busy = _listening(config)
        if busy:
            fail(
                f"Mercury seems to be running on {safe_url(source)}: something answers on "
                f"{busy} (server.port). Stop it first (its systemd service, or Ctrl-C where "
                "`mercury run` runs), then copy again"
            )

    out.print(f"copying {safe_url(source)} -> {safe_url(target)}", soft_wrap=True)

    def progress(table: str, rows: int) -> None:
        out.print(f"  {table:<20} {rows:>11,} rows")

    try:
        report = asyncio.run(copy_database(source, target, batch=batch_size, progress=progress))
    except (CopyRefused, StorageError) as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"copy failed, nothing was written to the target: {first_line(exc)}")
    differ = [t for t in report.tables if t.source != t.target]
    for count in differ:
        out.print(f"  MISMATCH {count.table}: source {count.source:,}, target {count.target:,}")
    if differ:
        fail("row counts differ between source and target (see above); do not switch to it")
    out.print(
        f"done: {report.rows:,} rows in {len(report.tables)} tables, schema revision "
        f"{report.revision}; every table's row count matches the source.\n"
        "Next: set database_url (or MERCURY_DATABASE_URL in .env) to the target, then "
        "start Mercury",
        soft_wrap=True,
    )
