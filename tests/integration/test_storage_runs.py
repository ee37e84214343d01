"""Run records (storage/runs.py) on a real SQLite file and a real PostgreSQL server.

What a record keeps for its dashboard page (prompt summary, attempts, model calls, log
tail) goes in bounded and comes back as stored; the dashboard's list filters and pages in
SQL (`find_runs`), with a cursor that neither repeats nor skips runs started at the same
instant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mercury.storage import Database, RunReason, get_or_create_space, record_run
from mercury.storage.runs import (
    ENTRY_TEXT_CHARS,
    LOG_TAIL_CHARS,
    MAX_ATTEMPTS,
    MAX_MODEL_CALLS,
    PROMPT_SUMMARY_CHARS,
    RunCursor,
    RunFilter,
    find_runs,
    get_run,
)
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def test_a_run_keeps_its_details_bounded(db: Database) -> None:
    await get_or_create_space(db, "a")
    attempts = [
        {
            "leg": i,
            "provider": "anthropic",
            "model": "claude-test",
            "turn": 1,
            "outcome": "retry",
            "status": 529,
            "duration_ms": 120,
            "error": "x" * 5000,
            "secret_key": "the agent may write anything",
            "nested": {"deep": [1, 2]},
        }
        for i in range(MAX_ATTEMPTS + 10)
    ]
    calls = [
        {
            "provider": "anthropic",
            "model": "claude-test",
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": 0.001,
            "status": 200,
            "incomplete": False,
            "at": T0.isoformat(),
        }
    ] * (MAX_MODEL_CALLS + 5)
    log = "".join(f"line {i}\n" for i in range(5000))
    run = await record_run(
        db,
        space_id="a",
        reason=RunReason.CRASHED,
        exit_code=137,
        started_at=T0,
        prompt="  please\n\tsummarize   " + "word " * 200,
        attempts=attempts,
        model_calls=calls,
        log_tail=log,
    )
    stored = await get_run(db, run.id)
    assert stored is not None
    assert stored.prompt_summary is not None
    assert stored.prompt_summary.startswith("please summarize word word")
    assert len(stored.prompt_summary) == PROMPT_SUMMARY_CHARS
    assert stored.prompt_summary.endswith("…")
    assert stored.attempts is not None and len(stored.attempts) == MAX_ATTEMPTS
    first = stored.attempts[0]
    assert set(first) == {
        "leg",
        "provider",
        "model",
        "turn",
        "outcome",
        "status",
        "duration_ms",
        "error",
    }
    assert len(first["error"]) == ENTRY_TEXT_CHARS
    assert [a["leg"] for a in stored.attempts[:3]] == [0, 1, 2]
    assert stored.model_calls is not None and len(stored.model_calls) == MAX_MODEL_CALLS
    assert stored.model_calls[0] == calls[0]
    assert stored.log_tail is not None
    assert len(stored.log_tail) <= LOG_TAIL_CHARS
    assert stored.log_tail.endswith("line 4999\n")
    assert stored.log_tail.startswith("line ")  # cut on a line boundary
    assert stored == run


async def test_a_run_without_details_and_junk_attempts(db: Database) -> None:
    await get_or_create_space(db, "a")
    plain = await record_run(db, space_id="a", reason=RunReason.OK, started_at=T0)
    junk = await record_run(
        db, space_id="a", reason=RunReason.ERROR, attempts="not a list", prompt=" \n "
    )
    for run_id in (plain.id, junk.id):
        stored = await get_run(db, run_id)
        assert stored is not None
        assert stored.prompt_summary is None
        assert stored.attempts is None
        assert stored.model_calls is None
        assert stored.log_tail is None
    assert await get_run(db, 999_999) is None


async def _runs(db: Database) -> dict[str, int]:
    """A small history over two spaces; name -> run id."""
    await get_or_create_space(db, "a")
    await get_or_create_space(db, "b")
    rows = [
        ("a-ok-fast", "a", RunReason.OK, 0, 800, 0),
        ("a-timeout", "a", RunReason.TIMEOUT, None, 60_000, 1),
        ("b-crash", "b", RunReason.CRASHED, 137, 5_000, 2),
        ("b-ok-slow", "b", RunReason.OK, 0, 30_000, 3),
        ("a-error", "a", RunReason.ERROR, 1, 2_000, 4),
    ]
    ids = {}
    for name, space, reason, code, ms, minutes in rows:
        run = await record_run(
            db,
            space_id=space,
            reason=reason,
            exit_code=code,
            duration_ms=ms,
            started_at=T0 + timedelta(minutes=minutes),
        )
        ids[name] = run.id
    return ids


async def _names(db: Database, ids: dict[str, int], f: RunFilter) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    page = await find_runs(db, f, limit=100)
    assert page.next is None
    return [by_id[item.id] for item in page.items]


async def test_find_runs_filters_in_sql_newest_first(db: Database) -> None:
    ids = await _runs(db)
    assert await _names(db, ids, RunFilter()) == [
        "a-error",
        "b-ok-slow",
        "b-crash",
        "a-timeout",
        "a-ok-fast",
    ]
    assert await _names(db, ids, RunFilter(space_id="a")) == ["a-error", "a-timeout", "a-ok-fast"]
    assert await _names(db, ids, RunFilter(reason=RunReason.CRASHED)) == ["b-crash"]
    assert await _names(db, ids, RunFilter(failed=True)) == ["a-error", "b-crash", "a-timeout"]
    assert await _names(db, ids, RunFilter(failed=False)) == ["b-ok-slow", "a-ok-fast"]
    assert await _names(db, ids, RunFilter(min_duration_ms=5_000)) == [
        "b-ok-slow",
        "b-crash",
        "a-timeout",
    ]
    assert await _names(db, ids, RunFilter(exit_code=0)) == ["b-ok-slow", "a-ok-fast"]
    assert await _names(db, ids, RunFilter(space_id="b", failed=True, exit_code=137)) == ["b-crash"]
    assert await _names(db, ids, RunFilter(space_id="nobody")) == []
    item = (await find_runs(db, RunFilter(reason=RunReason.CRASHED))).items[0]
    assert (item.space_id, item.exit_code, item.duration_ms) == ("b", 137, 5_000)
    assert item.reason is RunReason.CRASHED and item.started_at == T0 + timedelta(minutes=2)


async def test_find_runs_pages_with_a_cursor_through_equal_start_times(db: Database) -> None:
    await get_or_create_space(db, "a")
    # Seven runs, three of them started at the very same instant: the id breaks the tie.
    starts = [T0, T0, T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    starts += [T0 - timedelta(seconds=1), T0 - timedelta(microseconds=1)]
    made = [await record_run(db, space_id="a", reason=RunReason.OK, started_at=at) for at in starts]
    expected = [r.id for r in sorted(made, key=lambda r: (r.started_at, r.id), reverse=True)]
    seen: list[int] = []
    cursor: RunCursor | None = None
    pages = 0
    while True:
        page = await find_runs(db, before=cursor, limit=2)
        seen += [item.id for item in page.items]
        pages += 1
        if page.next is None:
            break
        # The cursor survives its trip through a URL.
        cursor = RunCursor.parse(page.next.token())
        assert cursor == page.next
    assert seen == expected
    assert pages == 4
    exact = await find_runs(db, limit=7)
    assert [i.id for i in exact.items] == expected and exact.next is None


async def test_find_runs_by_tokens_and_cost(db: Database) -> None:
    await get_or_create_space(db, "t")
    spend = {"cheap": (100, 20, 0.001), "dear": (9_000, 1_000, 0.75), "unpriced": (5_000, 0, None)}
    ids = {}
    for minute, (name, (tin, tout, cost)) in enumerate(spend.items()):
        run = await record_run(
            db,
            space_id="t",
            reason=RunReason.OK,
            input_tokens=tin,
            output_tokens=tout,
            cost_usd=cost,
            started_at=T0 + timedelta(minutes=minute),
        )
        ids[name] = run.id
    assert await _names(db, ids, RunFilter(min_tokens=5_000)) == ["unpriced", "dear"]
    assert await _names(db, ids, RunFilter(min_tokens=10_000)) == ["dear"]
    assert await _names(db, ids, RunFilter(min_cost_usd=0.01)) == ["dear"]
    assert await _names(db, ids, RunFilter(min_cost_usd=0)) == ["dear", "cheap"]
