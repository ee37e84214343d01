"""storage/usage_views.py on a real SQLite file and a real PostgreSQL (the `db` fixture of
test_storage.py runs each case on both)."""

from __future__ import annotations

from datetime import date, timedelta

from mercury.storage import Database, add_usage, get_or_create_space
from mercury.storage.stats import UsageTotals
from mercury.storage.usage_views import space_names, usage_per_day
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

TODAY = date(2026, 3, 10)


async def test_usage_per_day_sums_every_space_and_model_per_day(db: Database) -> None:
    for space in ("a", "b"):
        await get_or_create_space(db, space)
    await add_usage(db, "a", model="m1", input_tokens=10, output_tokens=1, cost_usd=0.5, day=TODAY)
    await add_usage(db, "a", model="m2", input_tokens=5, output_tokens=2, cost_usd=0.25, day=TODAY)
    await add_usage(db, "b", model="m1", input_tokens=1, output_tokens=1, runs=3, day=TODAY)
    await add_usage(db, "b", model="m1", input_tokens=7, day=TODAY - timedelta(days=2))
    await add_usage(db, "b", model="m1", input_tokens=99, day=TODAY - timedelta(days=7))  # out
    await add_usage(db, "b", model="m1", input_tokens=99, day=TODAY + timedelta(days=1))  # out
    days = await usage_per_day(db, days=7, today=TODAY)
    assert [(d.day, d.totals) for d in days] == [
        (TODAY - timedelta(days=2), UsageTotals(7, 0, 0.0, 1)),
        (TODAY, UsageTotals(16, 4, 0.75, 5)),
    ]
    assert await usage_per_day(db, days=1, today=TODAY - timedelta(days=1)) == []
    # Out-of-range periods are clamped: 0 days is today alone.
    assert [d.day for d in await usage_per_day(db, days=0, today=TODAY)] == [TODAY]


async def test_space_names_for_the_listed_ids_only(db: Database) -> None:
    await get_or_create_space(db, "web:a", name="Alpha")
    await get_or_create_space(db, "web:b", name="Beta")
    await get_or_create_space(db, "web:c", name="Gamma")
    assert await space_names(db, ["web:a", "web:b", "web:missing", "web:a"]) == {
        "web:a": "Alpha",
        "web:b": "Beta",
    }
    assert await space_names(db, []) == {}
    many = [f"x{i}" for i in range(1200)] + ["web:c"]  # more than one chunk
    assert await space_names(db, many) == {"web:c": "Gamma"}
