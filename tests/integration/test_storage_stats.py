"""The dashboard's aggregates (storage/stats.py) on a real SQLite file and a real PostgreSQL.

Each case runs on both databases (the `db` fixture of test_storage.py): the hour and day
buckets are the one place where their SQL differs.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from mercury.storage import (
    Database,
    JobStatus,
    MessageRole,
    RunReason,
    add_message,
    add_usage,
    claim_next_jobs,
    enqueue_job,
    failures_by_reason,
    get_or_create_space,
    last_activity,
    queue_depth,
    record_run,
    run_summary,
    runs_per_hour,
    usage_by_space,
    usage_per_space_per_day,
    usage_today,
    usage_total,
)
from mercury.storage.stats import DURATION_BUCKETS_S, UsageTotals
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
TODAY = NOW.date()


async def _spaces(db: Database, *ids: str) -> None:
    for space_id in ids:
        await get_or_create_space(db, space_id)


async def _run(
    db: Database, space: str, reason: RunReason, at: datetime, duration_ms: int | None = 1000
) -> None:
    await record_run(db, space_id=space, reason=reason, started_at=at, duration_ms=duration_ms)


async def test_runs_per_hour_buckets_each_utc_hour_with_zeros(db: Database) -> None:
    await _spaces(db, "a", "b")
    await _run(db, "a", RunReason.OK, NOW - timedelta(minutes=10))  # 12:20, this hour
    await _run(db, "b", RunReason.TIMEOUT, NOW - timedelta(minutes=29))  # 12:01
    await _run(db, "a", RunReason.OK, datetime(2026, 3, 10, 10, 0, tzinfo=UTC))  # on the hour
    await _run(db, "a", RunReason.CRASHED, datetime(2026, 3, 10, 9, 59, 59, tzinfo=UTC))
    await _run(db, "a", RunReason.OK, NOW - timedelta(hours=5))  # outside a 3-hour window
    # An aware time in another zone lands in its UTC hour.
    at_plus2 = datetime(2026, 3, 10, 13, 15, tzinfo=timezone(timedelta(hours=2)))  # 11:15 UTC
    await _run(db, "b", RunReason.OK, at_plus2)

    hours = await runs_per_hour(db, hours=3, now=NOW)

    assert [h.hour for h in hours] == [
        datetime(2026, 3, 10, 10, tzinfo=UTC),
        datetime(2026, 3, 10, 11, tzinfo=UTC),
        datetime(2026, 3, 10, 12, tzinfo=UTC),
    ]
    assert [(h.runs, h.failed) for h in hours] == [(1, 0), (1, 0), (2, 1)]
    wider = await runs_per_hour(db, hours=4, now=NOW)
    assert [(h.runs, h.failed) for h in wider] == [(1, 1), (1, 0), (1, 0), (2, 1)]
    assert await runs_per_hour(db, hours=2, now=NOW + timedelta(days=2)) == [
        type(hours[0])(NOW.replace(minute=0) + timedelta(days=2, hours=-1), 0, 0),
        type(hours[0])(NOW.replace(minute=0) + timedelta(days=2), 0, 0),
    ]


async def test_failures_by_reason_in_a_window(db: Database) -> None:
    await _spaces(db, "a", "b")
    for reason, at in [
        (RunReason.TIMEOUT, NOW - timedelta(hours=1)),
        (RunReason.TIMEOUT, NOW - timedelta(hours=2)),
        (RunReason.TIMEOUT, NOW - timedelta(hours=3)),
        (RunReason.OOM, NOW - timedelta(minutes=5)),
        (RunReason.OK, NOW - timedelta(minutes=5)),
        (RunReason.CRASHED, NOW - timedelta(days=2)),  # before the window
    ]:
        await _run(db, "a", reason, at)
    await _run(db, "b", RunReason.OOM, NOW)

    since = NOW - timedelta(days=1)
    found = await failures_by_reason(db, since=since)
    assert found == {RunReason.TIMEOUT: 3, RunReason.OOM: 2}
    assert list(found) == [RunReason.TIMEOUT, RunReason.OOM]  # most first
    assert await failures_by_reason(db, since=since, space_id="b") == {RunReason.OOM: 1}
    assert await failures_by_reason(db, since=NOW + timedelta(seconds=1)) == {}


async def test_run_summary_counts_reasons_and_builds_a_cumulative_histogram(
    db: Database,
) -> None:
    await _spaces(db, "a")
    for reason, ms in [
        (RunReason.OK, 500),  # <= 1 s
        (RunReason.OK, 1000),  # exactly 1 s: in the le=1 bucket
        (RunReason.OK, 45_000),  # <= 60 s
        (RunReason.TIMEOUT, 600_000),  # <= 600 s
        (RunReason.CRASHED, 10_000_000),  # past every bound: only in +Inf
        (RunReason.CRASHED, None),  # never timed: counted by reason, not in the histogram
    ]:
        await _run(db, "a", reason, NOW, duration_ms=ms)

    summary = await run_summary(db)

    assert [(r.reason, r.count) for r in summary.by_reason] == [
        (RunReason.CRASHED, 2),
        (RunReason.OK, 3),
        (RunReason.TIMEOUT, 1),
    ]
    ok = next(r for r in summary.by_reason if r.reason is RunReason.OK)
    assert ok.duration_s == pytest.approx(46.5)
    assert summary.timed == 5
    assert summary.duration_s == pytest.approx(0.5 + 1 + 45 + 600 + 10_000)
    buckets = dict(summary.buckets)
    assert list(buckets) == list(DURATION_BUCKETS_S)
    assert (buckets[1], buckets[30], buckets[60], buckets[600], buckets[3600]) == (2, 2, 3, 4, 4)
    counts = [n for _, n in summary.buckets]
    assert counts == sorted(counts)  # cumulative
    later = await run_summary(db, since=NOW + timedelta(seconds=1))
    assert later.by_reason == [] and later.timed == 0 and later.buckets[-1][1] == 0


async def test_usage_today_total_and_top_spaces(db: Database) -> None:
    await _spaces(db, "a", "b", "c")
    await add_usage(db, "a", model="m1", input_tokens=100, output_tokens=10, cost_usd=0.5,
                    day=TODAY)  # fmt: skip
    await add_usage(db, "a", model="m2", input_tokens=5, output_tokens=5, cost_usd=0.25,
                    day=TODAY)  # fmt: skip
    await add_usage(db, "b", model="m1", input_tokens=1, output_tokens=1, cost_usd=2.0,
                    day=TODAY)  # fmt: skip
    await add_usage(db, "c", model="m1", input_tokens=999, output_tokens=999, cost_usd=9.0,
                    day=TODAY - timedelta(days=1))  # fmt: skip

    today = await usage_today(db, today=TODAY, top=10)

    assert today.day == TODAY
    assert today.total == UsageTotals(input_tokens=106, output_tokens=16, cost_usd=2.75, runs=3)
    assert today.total.tokens == 122
    assert [(s.space_id, s.totals.tokens, s.totals.cost_usd) for s in today.spaces] == [
        ("b", 2, 2.0),
        ("a", 120, 0.75),
    ]
    assert [s.space_id for s in (await usage_today(db, today=TODAY, top=1)).spaces] == ["b"]
    empty = await usage_today(db, today=TODAY + timedelta(days=1))
    assert empty.total == UsageTotals() and empty.spaces == []
    assert (await usage_total(db)).cost_usd == pytest.approx(11.75)
    assert [s.space_id for s in await usage_by_space(db)] == ["c", "b", "a"]


async def test_usage_per_space_per_day_sums_models_within_the_window(db: Database) -> None:
    await _spaces(db, "a", "b")
    for space, day_ago, model, tokens in [
        ("a", 0, "m1", 10),
        ("a", 0, "m2", 20),
        ("a", 2, "m1", 5),
        ("b", 2, "m1", 7),
        ("b", 3, "m1", 1000),  # outside a 3-day window
    ]:
        await add_usage(db, space, model=model, input_tokens=tokens, cost_usd=tokens / 100,
                        day=TODAY - timedelta(days=day_ago))  # fmt: skip

    rows = await usage_per_space_per_day(db, days=3, today=TODAY)

    assert [(r.day, r.space_id, r.totals.input_tokens, r.totals.runs) for r in rows] == [
        (TODAY - timedelta(days=2), "a", 5, 1),
        (TODAY - timedelta(days=2), "b", 7, 1),
        (TODAY, "a", 30, 2),
    ]
    assert all(isinstance(r.day, date) for r in rows)
    assert rows[-1].totals.cost_usd == pytest.approx(0.3)
    only_b = await usage_per_space_per_day(db, days=7, today=TODAY, space_ids=["b"])
    assert [(r.day, r.totals.input_tokens) for r in only_b] == [
        (TODAY - timedelta(days=3), 1000),
        (TODAY - timedelta(days=2), 7),
    ]
    assert len(await usage_per_space_per_day(db, days=7, today=TODAY, limit=2)) == 2


async def test_queue_depth_counts_only_queued_jobs_per_space(db: Database) -> None:
    await _spaces(db, "a", "b", "c")
    for space, n in [("a", 3), ("b", 1), ("c", 1)]:
        for _ in range(n):
            await enqueue_job(db, space)
    claimed = await claim_next_jobs(db, max_total=1, owner="test")  # a's first job -> running
    assert [j.space_id for j in claimed] == ["a"] and claimed[0].status is JobStatus.RUNNING

    assert await queue_depth(db) == {"a": 2, "b": 1, "c": 1}
    assert list(await queue_depth(db)) == ["a", "b", "c"]  # deepest first, then by id
    assert await queue_depth(db, limit=1) == {"a": 2}


async def test_last_activity_is_the_latest_message_per_space(db: Database) -> None:
    await _spaces(db, "a", "b", "quiet")
    for space, minutes in [("a", 30), ("a", 5), ("b", 60)]:
        await add_message(db, space_id=space, platform="web", role=MessageRole.USER, text="hi",
                          created_at=NOW - timedelta(minutes=minutes))  # fmt: skip

    found = await last_activity(db)

    assert found == {
        "a": NOW - timedelta(minutes=5),
        "b": NOW - timedelta(minutes=60),
        "quiet": None,
    }
    assert all(v is None or v.tzinfo is not None for v in found.values())
    assert await last_activity(db, space_ids=["b"]) == {"b": NOW - timedelta(minutes=60)}
