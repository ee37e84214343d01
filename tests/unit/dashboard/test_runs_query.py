"""The Runs list's query string, read without any I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from mercury.dashboard.pages.runs import parse_query, reason_class, table_rows
from mercury.storage import RunReason
from mercury.storage.runs import RunCursor, RunFilter


def test_no_query_is_every_run() -> None:
    query = parse_query({})
    assert query.filters == RunFilter()
    assert query.before is None and query.errors == []
    assert query.page_url() == "/runs"


def test_every_filter_is_read() -> None:
    query = parse_query(
        {
            "space": " web:main ",
            "status": "failed",
            "reason": "timeout",
            "min_duration": "2.5",
            "exit_code": "137",
            "min_tokens": "5000",
            "min_cost": "0.25",
        }
    )
    assert query.errors == []
    assert query.filters == RunFilter(
        space_id="web:main",
        reason=RunReason.TIMEOUT,
        failed=True,
        min_duration_ms=2500,
        exit_code=137,
        min_tokens=5000,
        min_cost_usd=0.25,
    )
    assert parse_query({"status": "ok"}).filters.failed is False
    assert parse_query({"exit_code": "-1"}).filters.exit_code == -1


def test_nonsense_is_named_not_guessed() -> None:
    query = parse_query(
        {
            "space": "s" * 300,
            "status": "maybe",
            "reason": "bored",
            "min_duration": "-1",
            "exit_code": "1.5",
            "min_tokens": "-3",
            "min_cost": "free",
            "before": "garbage",
        }
    )
    assert query.filters == RunFilter()
    assert query.before is None
    assert [e.split(":")[0] for e in query.errors] == [
        "space",
        "status",
        "reason",
        "minimum duration",
        "exit code",
        "minimum tokens",
        "minimum cost",
        "before",
    ]
    assert parse_query({"min_duration": "nan"}).errors
    assert parse_query({"exit_code": str(2**40)}).errors


def test_page_url_keeps_the_filters_and_adds_the_cursor() -> None:
    query = parse_query({"space": "a b", "reason": "ok", "status": "", "before": "1.2"})
    assert query.before == RunCursor.parse("1.2")
    assert query.page_url() == "/runs?space=a+b&reason=ok"
    cursor = RunCursor(datetime(2026, 1, 1, tzinfo=UTC), 9)
    url = urlsplit(query.page_url(cursor))
    assert url.path == "/runs"
    assert parse_qs(url.query) == {"space": ["a b"], "reason": ["ok"], "before": [cursor.token()]}


def test_badges_and_rows() -> None:
    assert reason_class("ok") == "ok"
    assert reason_class(RunReason.ABORTED) == "warn"
    assert {reason_class(r) for r in ("error", "crashed", "oom", "timeout", "disk")} == {"bad"}
    assert table_rows([{"leg": 1}], ("leg", "model")) == [{"leg": 1, "model": None}]
    assert table_rows(None, ("leg",)) == []
