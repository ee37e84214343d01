"""`mercury db ...`: apply migrations and report the schema revision."""

from __future__ import annotations

import asyncio

import click

from mercury.cli.common import config_option, fail, load_or_exit, out


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@config_option
def db_upgrade() -> None:
    """Apply every pending migration."""
    from mercury.logging import first_line
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, upgrade

    loaded = load_or_exit()
    url = loaded.config.resolved_database_url()
    loaded.config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(upgrade(url))
        rev = asyncio.run(current_revision(url))
    except Exception as exc:
        fail(f"database_url: cannot migrate {safe_url(url)}: {first_line(exc)}")
    out.print(f"{safe_url(url)} is at revision {rev}")


@db.command("current")
@config_option
def db_current() -> None:
    """Print the schema revision of the database and the one the code expects."""
    from mercury.logging import first_line
    from mercury.storage import safe_url
    from mercury.storage.migrate import current_revision, head_revision

    loaded = load_or_exit()
    url = loaded.config.resolved_database_url()
    try:
        rev = asyncio.run(current_revision(url))
    except Exception as exc:
        fail(f"database_url: cannot read {safe_url(url)}: {first_line(exc)}")
    out.print(f"database: {rev or 'empty'}  code: {head_revision()}")
