"""`mercury run`: migrate the database and serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
from typing import Any

import click

from mercury.cli.common import config_option, fail, load_or_exit, role_option
from mercury.config import Config
from mercury.core.roles import Role


def run_overrides(host: str | None, port: int | None, log_level: str | None) -> dict[str, Any]:
    """The config overrides the command line asks for (only what was given)."""
    overrides: dict[str, Any] = {}
    if host is not None or port is not None:
        overrides["server"] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if log_level:
        overrides["log"] = {"level": log_level}
    return overrides


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only listens on this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name that resolves elsewhere, or "" (every address)


def public_bind_problem(config: Config) -> str | None:
    """Why the listener exposes the login in clear text, or None when it does not.

    Bound beyond loopback without an https `server.public_url`, the operator's password
    and session cookie would cross the network unencrypted (exposed bot dashboards are
    how others got hurt), so `mercury run` says so loudly.
    """
    host, public_url = config.server.host, config.server.public_url
    if _is_loopback(host):
        return None
    if public_url and public_url.strip().lower().startswith("https://"):
        return None
    shown = public_url or "not set"
    return (
        f"server.host is {host or '(every address)'}, reachable from other machines, and "
        f"server.public_url ({shown}) is not https: the dashboard password and session "
        "cookie would cross the network in clear text. Put Mercury behind a TLS reverse "
        "proxy and set server.public_url to its https:// address, or set server.host to "
        "127.0.0.1 (docs/dashboard.md)"
    )


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
@role_option(
    "all: everything in this process. gateway: chats, web server, dashboard and "
    "scheduler only; `mercury worker` processes run the jobs (docs/scale-out.md).",
    (Role.ALL, Role.GATEWAY),
)
def run(
    host: str | None,
    port: int | None,
    log_level: str | None,
    accept_empty_database: bool,
    role: str,
) -> None:
    """Migrate the database and run Mercury until SIGINT/SIGTERM."""
    serve_role(Role(role), run_overrides(host, port, log_level), accept_empty_database)


def serve_role(role: Role, overrides: dict[str, Any], accept_empty_database: bool) -> None:
    """Load the config, then serve `role` until SIGINT/SIGTERM (`mercury run`/`worker`)."""
    from mercury.app import App, StartupError
    from mercury.logging import configure_logging_for
    from mercury.serve import serve

    loaded = load_or_exit(overrides)
    configure_logging_for(loaded)  # every configured secret is redacted from the logs
    problem = public_bind_problem(loaded.config) if role.talks_to_chats else None
    if problem:
        from mercury.logging import get_logger

        get_logger("mercury.cli").warning("login exposed without TLS", problem=problem)
        click.secho(f"WARNING: {problem}", err=True, fg="red", bold=True)
    os.umask(0o077)  # whatever Mercury creates from now on is its own (docs/security.md)
    try:
        app = App(loaded, accept_empty_database=accept_empty_database, role=role)
        asyncio.run(serve(app))
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover - a signal before handlers were installed
        sys.exit(130)


@click.command()
@config_option
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="log.level",
)
def worker(log_level: str | None) -> None:
    """Claim and run jobs for a gateway, on this machine's Docker engine (PostgreSQL only;
    docs/scale-out.md). Runs until SIGINT/SIGTERM."""
    serve_role(Role.WORKER, run_overrides(None, None, log_level), accept_empty_database=False)
