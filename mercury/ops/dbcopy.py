"""`mercury db copy`: move every row of Mercury's schema to another database (SQLite to PostgreSQL).

An operator outgrowing SQLite must not lose a year of history on the way. So the copy is
all or nothing and checked: both databases at this Mercury's head revision (an empty
target is migrated first; an older source is refused, because a copy never changes its
source), an empty target only, every model table in foreign-key order with its ids kept,
PostgreSQL's id sequences moved past the copied ids, one transaction on the target, and
row counts compared before that transaction commits. Columns the database computes
itself (PostgreSQL's recall tsvector, migration 0010) are not model columns and are left
to it; SQLite's FTS index is filled by its triggers as the messages go in.

Passwords never appear in what this module says: URLs are shown through `safe_url`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Table, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import Column

from mercury.logging import first_line
from mercury.storage import Database, safe_url
from mercury.storage.db import SQLITE_DRIVER, parse_database_url
from mercury.storage.migrate import (
    DatabaseTooNew,
    current_revision,
    head_revision,
    is_known_revision,
    too_new_message,
    upgrade,
)
from mercury.storage.models import Base

DEFAULT_BATCH = 500


class CopyRefused(Exception):
    """The copy did not start, or was rolled back: one line saying why and what to do."""


@dataclass(frozen=True)
class TableCount:
    """Rows of one table in the source and, after the copy, in the target."""

    table: str
    source: int
    target: int


@dataclass
class CopyReport:
    """What was copied where; URLs are already masked."""

    source: str
    target: str
    revision: str
    tables: list[TableCount] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(t.target for t in self.tables)

    @property
    def matches(self) -> bool:
        return all(t.source == t.target for t in self.tables)


def model_tables() -> list[Table]:
    """Mercury's tables, parents before children (the order rows can go in)."""
    return list(Base.metadata.sorted_tables)


def copied_columns(table: Table) -> list[Column[object]]:
    """The columns a copy writes: all but those the database computes itself."""
    return [c for c in table.columns if c.computed is None]


async def _row_counts(conn: AsyncConnection) -> dict[str, int]:
    """Rows per Mercury table that exists in this database (missing tables are left out)."""
    present = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    quote = conn.dialect.identifier_preparer.quote
    counts: dict[str, int] = {}
    for table in model_tables():
        if table.name in present:
            sql = text(f"SELECT COUNT(*) FROM {quote(table.name)}")
            counts[table.name] = int((await conn.execute(sql)).scalar_one())
    return counts


def _check_not_in_use(url: str) -> None:
    """Refuse a SQLite source another process has open: a running Mercury keeps writing.

    (A PostgreSQL source cannot be told apart this cheaply; the docs say: stop Mercury.)
    """
    from mercury.ops.restore import processes_holding

    parsed = parse_database_url(url)
    if parsed.drivername != SQLITE_DRIVER or parsed.database in (None, "", ":memory:"):
        return
    db_file = Path(str(parsed.database)).expanduser().resolve()
    pids = processes_holding([db_file, Path(f"{db_file}-wal")])
    if pids:
        raise CopyRefused(
            f"the source database {db_file} is open in process "
            f"{', '.join(map(str, pids))} (Mercury still running?): stop it first, then "
            "copy again"
        )


async def _check_source(url: str, head: str) -> None:
    _check_not_in_use(url)
    rev = await current_revision(url)
    shown = safe_url(url)
    if rev is None:
        raise CopyRefused(f"the source database {shown} has no Mercury schema: nothing to copy")
    if rev == head:
        return
    if not is_known_revision(rev):
        raise CopyRefused(f"source: {too_new_message(url, rev)}")
    raise CopyRefused(
        f"the source database {shown} is at schema revision {rev!r}, this Mercury's is "
        f"{head!r}: stop Mercury, run `mercury db upgrade` on it first (with this "
        "Mercury), then copy again"
    )


async def _prepare_target(url: str, head: str) -> None:
    """Refuse a target holding Mercury rows; migrate an empty one to `head`."""
    target = Database(url)
    try:
        async with target.engine.connect() as conn:
            counts = await _row_counts(conn)
    finally:
        await target.dispose()
    held = sorted(((n, name) for name, n in counts.items() if n), reverse=True)
    if held:
        most = ", ".join(f"{name}: {n}" for n, name in held[:3])
        raise CopyRefused(
            f"the target database {safe_url(url)} already holds {sum(n for n, _ in held)} "
            f"Mercury rows in {len(held)} tables ({most}{', ...' if len(held) > 3 else ''}); "
            "copy only into a new, empty database (nothing was written)"
        )
    rev = await current_revision(url)
    if rev == head:
        return
    try:
        await upgrade(url)
    except DatabaseTooNew:
        raise CopyRefused(f"target: {too_new_message(url, rev or '')}") from None
    except Exception as exc:
        raise CopyRefused(
            f"cannot migrate the target database {safe_url(url)}: {first_line(exc)}"
        ) from exc


async def _copy_table(src: AsyncConnection, dst: AsyncConnection, table: Table, batch: int) -> int:
    columns = copied_columns(table)
    order = list(table.primary_key.columns) or columns
    stmt = select(*columns).order_by(*order)
    copied = 0
    result = await src.stream(stmt)
    async for rows in result.partitions(batch):
        await dst.execute(table.insert(), [dict(row._mapping) for row in rows])
        copied += len(rows)
    return copied


async def _reset_sequences(dst: AsyncConnection) -> None:
    """Move each PostgreSQL id sequence past the copied ids, so new rows get fresh ones."""
    quote = dst.dialect.identifier_preparer.quote
    for table in model_tables():
        column = table.autoincrement_column
        if column is None:
            continue
        qt, qc = quote(table.name), quote(column.name)
        await dst.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence(:t, :c), "
                f"COALESCE((SELECT MAX({qc}) FROM {qt}), 0) + 1, false)"
            ),
            {"t": qt, "c": column.name},
        )


async def _copy_rows(
    source_url: str,
    target_url: str,
    report: CopyReport,
    batch: int,
    progress: Callable[[str, int], None] | None,
) -> None:
    source, target = Database(source_url), Database(target_url)
    try:
        async with source.engine.connect() as src, target.engine.connect() as dst:
            await dst.begin()
            copied: dict[str, int] = {}
            for table in model_tables():
                try:
                    copied[table.name] = await _copy_table(src, dst, table, batch)
                except Exception as exc:
                    await dst.rollback()
                    raise CopyRefused(
                        f"copying table {table.name} failed, nothing was written to the "
                        f"target: {first_line(exc)}"
                    ) from exc
                if progress is not None:
                    progress(table.name, copied[table.name])
            if dst.dialect.name == "postgresql":
                await _reset_sequences(dst)
            # Counted again before committing: a source that changed meanwhile (Mercury
            # still running on it) would leave a copy missing the newest rows.
            now = await _row_counts(src)
            changed = [name for name, n in copied.items() if now.get(name) != n]
            if changed:
                await dst.rollback()
                raise CopyRefused(
                    f"the source changed while copying ({', '.join(changed)}): stop Mercury "
                    "first, then copy again (nothing was written to the target)"
                )
            await dst.commit()
            after = await _row_counts(dst)
        report.tables = [TableCount(name, now[name], after.get(name, 0)) for name in copied]
    finally:
        await source.dispose()
        await target.dispose()


async def copy_database(
    source_url: str,
    target_url: str,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy every Mercury row from `source_url` into the empty `target_url`; see module doc.

    Raises CopyRefused (one line, nothing written) or StorageError (cannot connect).
    `progress(table, rows)` is called after each table.
    """
    src, dst = parse_database_url(source_url), parse_database_url(target_url)
    if src == dst:
        raise CopyRefused(f"source and target are the same database ({safe_url(src)})")
    if batch < 1:
        raise CopyRefused(f"batch size must be at least 1, not {batch}")
    head = head_revision()
    await _check_source(source_url, head)
    await _prepare_target(target_url, head)
    report = CopyReport(safe_url(source_url), safe_url(target_url), head)
    await _copy_rows(source_url, target_url, report, batch, progress)
    return report


__all__ = [
    "DEFAULT_BATCH",
    "CopyRefused",
    "CopyReport",
    "TableCount",
    "copied_columns",
    "copy_database",
    "model_tables",
]
