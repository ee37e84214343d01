"""Every migration, run upward over data, from the first released schema to head.

An install upgraded after a year has rows in every table; a migration tested only on an
empty database can still lose or mangle them (SQLite's batch mode rebuilds whole tables).
So: migrate an empty database to the first revision, put realistic rows in every table
of that schema (through the tables as the database itself describes them, not today's
models, which describe head), then go up one revision at a time. After each step every
row put in so far must still be there with its values, and each table a step adds gets
rows of its own from one generic filler (reflected column types, CHECK choices, foreign
keys pointing at rows already there), so the migrations after it run over data too. The
revisions come from Alembic's script directory, so a migration added later is covered
without editing this file. On SQLite and PostgreSQL.

Also here: a database migrated by a newer Mercury makes `mercury run` and `mercury db
upgrade` stop with one line saying what to do, and leaves the database untouched.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from mercury.storage import (
    Database,
    MessageRole,
    add_message,
    current_revision,
    head_revision,
    is_up_to_date,
    upgrade,
)
from mercury.storage.migrate import alembic_config
from mercury.storage.models import Base
from mercury.storage.recall import include_name, search_messages
from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import Mercury, mercury
from tests.integration.test_storage import db_url, postgres_server_url

__all__ = ["db_url", "postgres_server_url"]  # fixtures, imported for pytest

T = TypeVar("T")
T0 = datetime(2026, 11, 24, 9, 30, 15, 123000, tzinfo=UTC)


def revisions() -> list[str]:
    """Every revision, oldest first; fails if the history ever branches."""
    script = ScriptDirectory.from_config(alembic_config())
    newest_first = list(script.walk_revisions("base", "heads"))
    ordered = [s.revision for s in reversed(newest_first)]
    for older, newer in zip(newest_first[1:], newest_first, strict=False):
        assert newer.down_revision == older.revision, f"{newer.revision} does not follow {older}"
    return ordered


# --------------------------------------------------------------------------- the ledger


@dataclass(frozen=True)
class Ref:
    """The value of `column` in the `index`-th row put into `table` (an id known only then)."""

    table: str
    index: int
    column: str = "id"


def mercury_table_names(conn: Connection) -> set[str]:
    """The tables of Mercury's schema in this database (not the FTS index's own)."""
    names = sa.inspect(conn).get_table_names()
    return {n for n in names if n != "alembic_version" and include_name(n, "table", {})}


def reflect(conn: Connection, name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def norm(value: Any) -> Any:
    """A value as comparable across dialects: naive UTC times, floats, plain strings."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    return value


def check_choices(conn: Connection, table: sa.Table) -> dict[str, list[str]]:
    """Column -> the values a CHECK allows, for checks of the form `col IN ('a', 'b')`
    (PostgreSQL reflects them as `col = ANY (ARRAY['a'::...])`)."""
    choices: dict[str, list[str]] = {}
    for check in sa.inspect(conn).get_check_constraints(table.name):
        sql = str(check.get("sqltext", ""))
        named = [c.name for c in table.columns if re.search(rf"\b{re.escape(c.name)}\b", sql)]
        literals = re.findall(r"'([^']*)'", sql)
        if len(named) == 1 and literals:
            choices[named[0]] = literals
    return choices


@dataclass
class Ledger:
    """Every row this test put in, by table, with the values it put in (ids included)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    serial: int = 0

    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return self.rows[value.table][value.index][value.column]
        return value

    def insert(self, conn: Connection, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Put one row in; the database's own id (if it makes one) is recorded with it."""
        table = reflect(conn, name)
        row = {k: self.resolve(v) for k, v in values.items()}
        stmt = sa.insert(table).values(**row)
        auto = table.autoincrement_column
        if auto is not None and auto.name not in row:
            row[auto.name] = conn.execute(stmt.returning(auto)).scalar_one()
        else:
            conn.execute(stmt)
        self.rows.setdefault(name, []).append(row)
        return row

    def dummy(self, column: sa.Column[Any], choices: list[str] | None) -> Any:
        """A value of the column's type (a CHECK's first allowed value when it has one)."""
        self.serial += 1
        n = self.serial
        kind = column.type
        if choices:
            return choices[n % len(choices)]
        if isinstance(kind, sa.Boolean):
            return n % 2 == 0
        if isinstance(kind, sa.DateTime):
            return T0 + timedelta(minutes=n)
        if isinstance(kind, sa.Date):
            return date(2026, 1, 1) + timedelta(days=n)
        if isinstance(kind, sa.Integer):
            return 1000 + n
        if isinstance(kind, sa.Float | sa.Numeric):
            return 0.25 + n
        if isinstance(kind, sa.JSON):
            return {"filler": n, "list": [n, "x"]}
        length = getattr(kind, "length", None) or 200
        return f"{column.table.name}.{column.name} #{n}"[-length:]

    def fill(self, conn: Connection, name: str, count: int = 2) -> str | None:
        """Put `count` generic rows into a table; the reason when it cannot."""
        table = reflect(conn, name)
        choices = check_choices(conn, table)
        foreign = sa.inspect(conn).get_foreign_keys(name)
        for i in range(count):
            row: dict[str, Any] = {}
            for fk in foreign:
                parents = self.rows.get(fk["referred_table"], [])
                cols = fk["constrained_columns"]
                if not parents:
                    if all(table.c[c].nullable for c in cols):
                        continue
                    return f"{name}: no rows in {fk['referred_table']} to point at"
                parent = parents[i % len(parents)]
                for col, ref in zip(cols, fk["referred_columns"], strict=True):
                    row[col] = parent[ref]
            for column in table.columns:
                skip = column.computed is not None or column is table.autoincrement_column
                if column.name in row or skip or column.nullable:
                    continue
                row[column.name] = self.dummy(column, choices.get(column.name))
            self.insert(conn, name, row)
        return None

    def problems(self, conn: Connection) -> list[str]:
        """Every difference between what was put in and what the database holds now."""
        found: list[str] = []
        present = mercury_table_names(conn)
        for name, rows in self.rows.items():
            if name not in present:
                if name in Base.metadata.tables:
                    found.append(f"{name}: table gone")
                continue  # dropped on purpose: no model has it any more
            table = reflect(conn, name)
            count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            if count != len(rows):
                found.append(f"{name}: {count} rows, expected {len(rows)}")
            keys = [c.name for c in table.primary_key.columns]
            for row in rows:
                where = [table.c[k] == row[k] for k in keys]
                got = conn.execute(sa.select(table).where(*where)).mappings().one_or_none()
                if got is None:
                    found.append(f"{name} {[row[k] for k in keys]}: row gone")
                    continue
                for col, want in row.items():
                    if col in got and norm(got[col]) != norm(want):
                        found.append(f"{name}.{col}: {got[col]!r}, expected {want!r}")
        return found


# --------------------------------------------------------------------------- 0001's rows


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# What an install of the first release holds after a few weeks: two spaces (a Telegram
# group and a web chat), their history, queue, runs, roles, schedules and usage.
FIRST_RELEASE_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("spaces", {"id": "telegram--100123", "name": "Family chat", "profile": "general",
                "created_at": T0, "paused_until": None, "context_reset_at": at(2)}),
    ("spaces", {"id": "web-ops", "name": "Ops: café ☕", "profile": "coder",
                "created_at": at(24), "paused_until": at(24 * 30), "context_reset_at": None}),
    ("conversations", {"space_id": "telegram--100123", "platform": "telegram",
                       "chat_id": "-100123", "thread_id": None, "created_at": T0}),
    ("conversations", {"space_id": "web-ops", "platform": "web", "chat_id": "web-ops",
                       "thread_id": "main", "created_at": at(24)}),
    ("messages", {"space_id": "telegram--100123", "conversation_id": Ref("conversations", 0),
                  "platform": "telegram", "platform_message_id": "5001", "role": "user",
                  "author_id": "42", "author_name": "Ana", "is_bot": False,
                  "text": "Could you book the dentist for Thursday morning?",
                  "attachments": [], "created_at": at(1)}),
    ("messages", {"space_id": "telegram--100123", "conversation_id": Ref("conversations", 0),
                  "platform": "telegram", "platform_message_id": None, "role": "assistant",
                  "author_id": None, "author_name": "Mercury", "is_bot": True,
                  "text": "Booked: Thursday 10:00, Dr. Sousa.", "attachments": [],
                  "created_at": at(1.01)}),
    ("messages", {"space_id": "telegram--100123", "conversation_id": Ref("conversations", 0),
                  "platform": "telegram", "platform_message_id": "5002", "role": "ambient",
                  "author_id": "43", "author_name": "João", "is_bot": False,
                  "text": "The café on Rue Cler closes at six",
                  "attachments": [{"name": "menu.pdf", "size": 48213, "mime": "application/pdf"}],
                  "created_at": at(3)}),
    ("messages", {"space_id": "web-ops", "conversation_id": Ref("conversations", 1),
                  "platform": "web", "platform_message_id": "w-1", "role": "user",
                  "author_id": "admin", "author_name": "admin", "is_bot": False,
                  "text": "Summarise last night's zebrafish deploy log", "attachments": [],
                  "created_at": at(25)}),
    ("jobs", {"space_id": "telegram--100123", "message_id": Ref("messages", 0),
              "status": "done", "attempts": 1, "priority": 0, "enqueued_at": at(1),
              "started_at": at(1.001), "finished_at": at(1.01), "error": None,
              "owner": "host-a:1234", "payload": {"kind": "message", "reply_to": "5001"}}),
    ("jobs", {"space_id": "web-ops", "message_id": Ref("messages", 3), "status": "failed",
              "attempts": 3, "priority": 0, "enqueued_at": at(25), "started_at": at(25.01),
              "finished_at": at(25.2), "error": "model provider answered 529 three times",
              "owner": "host-a:1234", "payload": {"kind": "message"}}),
    ("jobs", {"space_id": "web-ops", "message_id": None, "status": "queued", "attempts": 0,
              "priority": 5, "enqueued_at": at(26), "started_at": None, "finished_at": None,
              "error": None, "owner": None, "payload": {"kind": "task", "task_id": 2}}),
    ("runs", {"job_id": Ref("jobs", 0), "space_id": "telegram--100123", "reason": "ok",
              "exit_code": 0, "duration_ms": 8123, "image": "mercury-agent:0.1.0",
              "container_name": "mercury-run-7f3a", "input_tokens": 1830, "output_tokens": 212,
              "cost_usd": 0.0087, "model": "claude-sonnet", "error": None,
              "started_at": at(1.001), "finished_at": at(1.01)}),
    ("runs", {"job_id": Ref("jobs", 1), "space_id": "web-ops", "reason": "error",
              "exit_code": 1, "duration_ms": 61000, "image": "mercury-agent:0.1.0",
              "container_name": "mercury-run-9b2c", "input_tokens": 0, "output_tokens": 0,
              "cost_usd": None, "model": None, "error": "model provider answered 529",
              "started_at": at(25.01), "finished_at": at(25.2)}),
    ("roles", {"space_id": "telegram--100123", "platform": "telegram", "user_id": "42",
               "role": "owner", "updated_at": T0}),
    ("roles", {"space_id": "web-ops", "platform": "web", "user_id": "admin", "role": "admin",
               "updated_at": at(24)}),
    ("role_permissions", {"space_id": "telegram--100123", "role": "member",
                          "permission": "tasks.create"}),
    ("role_permissions", {"space_id": "web-ops", "role": "viewer", "permission": "chat"}),
    ("mutes", {"space_id": "telegram--100123", "platform": "telegram", "user_id": "99",
               "until": at(48), "reason": "flooding the group", "created_at": at(5)}),
    ("preferences", {"space_id": "telegram--100123", "key": "language", "value": "pt",
                     "updated_at": T0}),
    ("preferences", {"space_id": "web-ops", "key": "timezone", "value": "Europe/Paris",
                     "updated_at": at(24)}),
    ("tasks", {"space_id": "telegram--100123", "conversation_id": Ref("conversations", 0),
               "prompt": "Remind everyone about the bins", "cron": "0 19 * * 2",
               "interval_s": None, "run_at": None, "created_by": "telegram:42",
               "enabled": True, "next_run_at": at(30), "last_run_at": None,
               "created_at": at(2)}),
    ("tasks", {"space_id": "web-ops", "conversation_id": Ref("conversations", 1),
               "prompt": "Check the deploy queue", "cron": None, "interval_s": 3600,
               "run_at": None, "created_by": "web:admin", "enabled": False,
               "next_run_at": None, "last_run_at": at(25), "created_at": at(24.5)}),
    ("tasks", {"space_id": "web-ops", "conversation_id": None,
               "prompt": "Renew the certificate", "cron": None, "interval_s": None,
               "run_at": at(24 * 60), "created_by": None, "enabled": True,
               "next_run_at": at(24 * 60), "last_run_at": None, "created_at": at(26)}),
    ("extension_state", {"extension": "weather", "key": "last_city",
                         "value": {"city": "Lisboa", "units": "metric"}, "updated_at": at(4)}),
    ("extension_state", {"extension": "rss", "key": "seen", "value": ["a1", "b2", "c3"],
                         "updated_at": at(6)}),
    ("usage", {"space_id": "telegram--100123", "day": date(2026, 11, 24),
               "model": "claude-sonnet", "input_tokens": 1830, "output_tokens": 212,
               "cost_usd": 0.0087, "runs": 1}),
    ("usage", {"space_id": "web-ops", "day": date(2026, 11, 25), "model": "claude-sonnet",
               "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "runs": 1}),
]  # fmt: skip


def put_first_release_rows(ledger: Ledger) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        for name, values in FIRST_RELEASE_ROWS:
            ledger.insert(conn, name, values)

    return run


def fill_new_tables(ledger: Ledger, names: set[str]) -> Callable[[Connection], list[str]]:
    """Generic rows for the tables a migration added, parents first."""

    def run(conn: Connection) -> list[str]:
        meta = sa.MetaData()
        meta.reflect(conn, only=sorted(mercury_table_names(conn)))
        failed = []
        for table in meta.sorted_tables:
            if table.name in names:
                reason = ledger.fill(conn, table.name)
                if reason:
                    failed.append(reason)
        return failed

    return run


async def on(url: str, fn: Callable[[Connection], T]) -> T:
    """Run `fn` in one committed transaction (SQLite with its foreign keys on)."""
    database = Database(url)
    try:
        async with database.engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await database.dispose()


async def fill_to_head(url: str) -> Ledger:
    """Migrate `url` (empty) upward one revision at a time over data; the rows put in."""
    steps = revisions()
    await upgrade(url, steps[0])
    ledger = Ledger()
    await on(url, put_first_release_rows(ledger))
    assert set(ledger.rows) == await on(url, mercury_table_names), "a 0001 table has no rows"
    for rev in steps[1:]:
        before = await on(url, mercury_table_names)
        await upgrade(url, rev)
        assert await current_revision(url) == rev
        problems = await on(url, ledger.problems)
        assert not problems, f"after migration {rev}: " + "; ".join(problems)
        added = await on(url, mercury_table_names) - before
        failed = await on(url, fill_new_tables(ledger, added))
        assert not failed, f"after migration {rev}: " + "; ".join(failed)
    return ledger


# --------------------------------------------------------------------------- tests


async def test_every_migration_runs_upward_over_data(db_url: str) -> None:
    ledger = await fill_to_head(db_url)

    assert await is_up_to_date(db_url)
    # Every table of today's schema ran its later migrations with rows in it.
    assert set(Base.metadata.tables) <= set(ledger.rows)
    assert await on(db_url, ledger.problems) == []


async def test_recall_indexes_old_and_new_messages_after_upgrading(db_url: str) -> None:
    ledger = await fill_to_head(db_url)
    database = Database(db_url)
    try:
        old = await search_messages(database, "telegram--100123", "dentist")
        assert [hit.message_id for hit in old] == [ledger.rows["messages"][0]["id"]]
        assert "«dentist»" in old[0].snippet
        new = await add_message(
            database, space_id="telegram--100123", platform="telegram",
            role=MessageRole.USER, text="A narwhal was seen off the pier", author_name="Ana",
        )  # fmt: skip
        found = await search_messages(database, "telegram--100123", "narwhal")
        assert [hit.message_id for hit in found] == [new.id]
        assert await search_messages(database, "web-ops", "narwhal") == []
    finally:
        await database.dispose()


def test_revisions_are_one_line_from_the_first_release() -> None:
    steps = revisions()
    assert steps[0] == "0001" and steps[-1] == head_revision()
    assert len(set(steps)) == len(steps)


# --------------------------------------------------------------------------- newer database


def sqlite_dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


async def make_newer(url: str) -> None:
    """A database as a future Mercury would leave it: a revision this one does not ship."""
    await upgrade(url)
    await on(url, lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num = '0999'")))
    await on(url, put_first_release_rows(Ledger()))


async def test_mercury_run_refuses_a_database_from_a_newer_mercury(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    site = Mercury(tmp_path, "mercury-test-never-started:0", fake)
    db_file = site.data_dir / "mercury.db"
    await make_newer(f"sqlite+aiosqlite:///{db_file}")
    before = sqlite_dump(db_file)

    done = mercury("run", "--log-level", "error", cwd=tmp_path, timeout=90)

    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: database_url: database sqlite+aiosqlite:///"), line
    assert "'0999'" in line and f"up to {head_revision()!r}" in line
    assert "newer Mercury" in line and "restore the backup" in line
    assert "never downgrade" in line
    assert sqlite_dump(db_file) == before


async def test_db_upgrade_refuses_a_database_from_a_newer_mercury(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    site = Mercury(tmp_path, "mercury-test-never-started:0", fake)
    db_file = site.data_dir / "mercury.db"
    await make_newer(f"sqlite+aiosqlite:///{db_file}")
    before = sqlite_dump(db_file)

    done = mercury("db", "upgrade", cwd=tmp_path)
    current = mercury("db", "current", cwd=tmp_path)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "cannot migrate" not in done.stderr
    assert "'0999'" in done.stderr and "Install that newer Mercury" in done.stderr
    assert sqlite_dump(db_file) == before
    assert current.returncode == 0
    assert "database: 0999" in current.stdout and "newer than this Mercury" in current.stdout
