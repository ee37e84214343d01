"""PostgreSQL for the benchmarks: the server (MERCURY_TEST_POSTGRES_URL, else
scripts/ensure-postgres) and a throwaway database of their own on it."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]


def postgres_server(explicit: str | None) -> str | None:
    url = explicit or os.environ.get("MERCURY_TEST_POSTGRES_URL", "").strip()
    if url:
        return url
    done = subprocess.run(
        [str(ROOT / "scripts" / "ensure-postgres")], capture_output=True, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else None


async def create_pg_database(server_url: str) -> str:
    import asyncpg

    server = make_url(server_url)
    name = f"mercury_bench_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(server.set(drivername="postgresql").render_as_string(False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(url: str) -> None:
    import asyncpg

    db = make_url(url)
    admin = await asyncpg.connect(
        db.set(drivername="postgresql", database="postgres").render_as_string(False)
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db.database}" WITH (FORCE)')
    finally:
        await admin.close()
