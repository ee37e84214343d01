"""PostgreSQL's own tools for backups: finding pg_dump/pg_restore and running them safely.

A backup of a PostgreSQL install is `pg_dump --format=custom`, the format pg_restore
reads; both tools come from the PostgreSQL client packages, not from Python. The
connection is given in the child's environment (PGHOST, PGUSER, PGPASSWORD, ...), never on
its command line, where any user on the host could read the password in `ps`; and
whatever the tool prints is scrubbed of the password before it reaches an error line.
pg_dump refuses to dump a server newer than itself, so the newest installed one that is
at least the server's major version is chosen, and a missing or old one is refused with
the package to install.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from mercury.ops.manifest import BackupError

if TYPE_CHECKING:
    import asyncpg

# Where distributions put versioned client tools besides $PATH (Debian, RHEL's PGDG).
TOOL_GLOBS = ("/usr/lib/postgresql/*/bin/{tool}", "/usr/pgsql-*/bin/{tool}")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def pg_env(url: URL) -> dict[str, str]:
    """The libpq environment for `url` (on top of this process's, minus any PG* of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    query = dict(url.query)
    host = url.host or _first(query.get("host"))
    if host:
        env["PGHOST"] = host
    if url.port:
        env["PGPORT"] = str(url.port)
    if url.username:
        env["PGUSER"] = url.username
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    if url.database:
        env["PGDATABASE"] = url.database
    ssl = _first(query.get("sslmode") or query.get("ssl"))
    if ssl:
        env["PGSSLMODE"] = {"true": "require", "false": "disable"}.get(ssl.lower(), ssl)
    env["PGAPPNAME"] = "mercury-backup"
    return env


def _first(value: str | tuple[str, ...] | None) -> str | None:
    if isinstance(value, tuple):
        return value[0] if value else None
    return value


def tool_major(path: str) -> int | None:
    """The major version `path --version` reports, or None when it does not run."""
    import subprocess

    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = _VERSION.search(done.stdout)
    return int(match.group(1)) if match else None


def find_tool(tool: str, server_major: int) -> str:
    """The newest `tool` (pg_dump, pg_restore) installed that is not older than the server."""
    candidates: list[str] = []
    on_path = shutil.which(tool)
    if on_path:
        candidates.append(on_path)
    for pattern in TOOL_GLOBS:
        candidates.extend(sorted(glob.glob(pattern.format(tool=tool))))
    best: tuple[int, str] | None = None
    seen: list[int] = []
    for candidate in candidates:
        major = tool_major(candidate)
        if major is None:
            continue
        seen.append(major)
        if major >= server_major and (best is None or major > best[0]):
            best = (major, candidate)
    if best is not None:
        return best[1]
    if not seen:
        raise BackupError(
            f"{tool} is not installed; it comes with PostgreSQL's client tools: install "
            f"postgresql-client-{server_major} (Debian/Ubuntu) or the matching package"
        )
    raise BackupError(
        f"{tool} {max(seen)} is older than the PostgreSQL server ({server_major}): install "
        f"postgresql-client-{server_major} (Debian/Ubuntu) or the matching package"
    )


def scrub(text: str, url: URL) -> str:
    """`text` without the password of `url` (a tool may echo a connection string)."""
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


async def run_tool(cmd: list[str], url: URL, what: str) -> None:
    """Run a PostgreSQL tool with the connection in its environment; BackupError on failure."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env=pg_env(url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
        detail = scrub(lines[0] if lines else f"exit code {proc.returncode}", url)
        raise BackupError(f"{what} failed: {Path(cmd[0]).name}: {detail[:300]}")


async def pg_connect(url: str) -> tuple[asyncpg.Connection, URL]:
    """A plain asyncpg connection to `url` (snapshots and clean-ups need its transactions)."""
    import asyncpg

    from mercury.storage.db import parse_database_url, safe_url

    parsed = parse_database_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        detail = scrub(str(exc).splitlines()[0] if str(exc) else "", parsed)
        raise BackupError(
            f"database: cannot connect to {safe_url(parsed)}: {type(exc).__name__}: {detail}"
        ) from None
    return conn, parsed
