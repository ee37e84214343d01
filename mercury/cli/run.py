"""`mercury run`: migrate the database and serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click

from mercury.cli.common import config_option, fail, load_or_exit


def run_overrides(host: str | None, port: int | None, log_level: str | None) -> dict[str, Any]:
    """The config overrides the command line asks for (only what was given)."""
    overrides: dict[str, Any] = {}
    if host is not None or port is not None:
        overrides["server"] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if log_level:
        overrides["log"] = {"level": log_level}
    return overrides


@click.command()
@config_option
@click.option("--host", default=None, help="Listen address (server.host).")
@click.option("--port", type=int, default=None, help="Listen port (server.port).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="log.level",
)
@click.option(
    "--accept-empty-database",
    is_flag=True,
    help="Start even though the database is empty while spaces exist on disk "
    "(it was deleted or replaced; history, queue and roles start empty).",
)
def run(
    host: str | None, port: int | None, log_level: str | None, accept_empty_database: bool
) -> None:
    """Migrate the database and run Mercury until SIGINT/SIGTERM."""
    from mercury.app import App, StartupError, serve
    from mercury.logging import configure_logging_for

    loaded = load_or_exit(run_overrides(host, port, log_level))
    configure_logging_for(loaded)  # every configured secret is redacted from the logs
    os.umask(0o077)  # whatever Mercury creates from now on is its own (docs/security.md)
    try:
        asyncio.run(serve(App(loaded, accept_empty_database=accept_empty_database)))
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover - a signal before handlers were installed
        sys.exit(130)
