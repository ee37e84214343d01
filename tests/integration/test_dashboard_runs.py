"""The Runs pages over real HTTP: a real App's server and SQLite database on 127.0.0.1.

Runs are stored with the storage functions the pipeline uses; the pages are read logged
in through /login, and their HTML is parsed (html.parser) rather than grepped: which rows
the list shows for each filter, the cursor to older runs, and a failed run's detail with
its prompt, attempts, model calls and (escaped) log tail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mercury.dashboard.pages import runs as runs_page
from mercury.storage import Database, RunReason, get_or_create_space, record_run
from tests.integration.dashboard_site import Node, get_page, login, parse, running

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def run_ids(doc: Node) -> list[int]:
    """The runs the list shows, in order."""
    return [int(tr.attrs["data-run-id"]) for tr in doc.find_all("tr") if "data-run-id" in tr.attrs]


def links(doc: Node) -> list[tuple[str, str]]:
    """(href, rel) of every link."""
    return [(a.attrs.get("href", ""), a.attrs.get("rel", "")) for a in doc.find_all("a")]


def texts(doc: Node, cls: str) -> list[str]:
    """The text, as written, of each element with this class."""
    return [n.raw_text for n in doc.walk() if n.has_class(cls)]


def text(doc: Node, cls: str) -> str:
    """The text, as written, of the one element with this class."""
    (only,) = texts(doc, cls)
    return only


async def _history(db: Database) -> dict[str, int]:
    await get_or_create_space(db, "alpha")
    await get_or_create_space(db, "beta")
    rows = [
        ("alpha-ok", "alpha", RunReason.OK, 0, 1_500),
        ("beta-crash", "beta", RunReason.CRASHED, 137, 9_000),
        ("alpha-timeout", "alpha", RunReason.TIMEOUT, None, 60_000),
        ("beta-ok", "beta", RunReason.OK, 0, 400),
    ]
    ids = {}
    for minutes, (name, space, reason, code, ms) in enumerate(rows):
        run = await record_run(
            db,
            space_id=space,
            reason=reason,
            exit_code=code,
            duration_ms=ms,
            input_tokens=1000 + minutes,
            output_tokens=50,
            cost_usd=0.0123,
            started_at=T0 + timedelta(minutes=minutes),
        )
        ids[name] = run.id
    return ids


async def test_the_list_filters_by_query_parameters(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        ids = await _history(site.app.db)
        names = {v: k for k, v in ids.items()}
        await login(http)

        async def shown(query: str) -> list[str]:
            return [names[i] for i in run_ids(await get_page(http, "/runs" + query))]

        assert await shown("") == ["beta-ok", "alpha-timeout", "beta-crash", "alpha-ok"]
        assert await shown("?space=alpha") == ["alpha-timeout", "alpha-ok"]
        assert await shown("?status=failed") == ["alpha-timeout", "beta-crash"]
        assert await shown("?status=ok&space=beta") == ["beta-ok"]
        assert await shown("?reason=crashed") == ["beta-crash"]
        assert await shown("?min_duration=5") == ["alpha-timeout", "beta-crash"]
        assert await shown("?exit_code=0") == ["beta-ok", "alpha-ok"]
        assert await shown("?space=nobody") == []

        page = await get_page(http, "/runs?reason=crashed")
        assert (f"/runs/{ids['beta-crash']}", "") in links(page)
        assert "/spaces/beta" in {href for href, _ in links(page)}
        assert texts(page, "badge") == ["crashed"]

        bad = await get_page(http, "/runs?exit_code=x&reason=bored", status=400)
        assert run_ids(bad) == []
        assert "exit code: a whole number" in text(bad, "error")


async def test_the_list_pages_with_a_cursor(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(runs_page, "PAGE_SIZE", 3)
    async with running(tmp_path) as site, site.client() as http:
        await get_or_create_space(site.app.db, "alpha")
        made = [
            await record_run(
                site.app.db,
                space_id="alpha",
                reason=RunReason.OK,
                started_at=T0 + timedelta(seconds=i),
            )
            for i in range(7)
        ]
        await login(http)
        seen: list[int] = []
        path: str | None = "/runs?space=alpha"
        while path is not None:
            page = await get_page(http, path)
            seen += run_ids(page)
            older = [href for href, rel in links(page) if rel == "next"]
            assert len(older) <= 1
            path = older[0] if older else None
            if path is not None:
                assert "space=alpha" in path  # the filters stay on the next page
        assert seen == [r.id for r in reversed(made)]
        await get_page(http, "/runs?before=nonsense", status=400)


async def test_a_failed_runs_detail_shows_its_log_tail_escaped(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        db = site.app.db
        await get_or_create_space(db, "alpha")
        run = await record_run(
            db,
            space_id="alpha",
            reason=RunReason.CRASHED,
            exit_code=137,
            duration_ms=4_200,
            image="mercury-agent:test",
            container_name="mercury-run-abc",
            input_tokens=1234,
            output_tokens=56,
            cost_usd=0.5,
            model="claude-test",
            error="exited with code 137 without writing result.json",
            started_at=T0,
            finished_at=T0 + timedelta(seconds=5),
            prompt="Summarize <b>the</b> report\nplease",
            attempts=[
                {
                    "leg": 0,
                    "provider": "anthropic",
                    "model": "claude-test",
                    "turn": 1,
                    "outcome": "retry",
                    "status": 529,
                    "duration_ms": 300,
                    "error": "overloaded",
                },
                {
                    "leg": 1,
                    "provider": "openai",
                    "model": "gpt-test",
                    "turn": 1,
                    "outcome": "ok",
                    "status": 200,
                    "duration_ms": 900,
                },
            ],
            model_calls=[
                {
                    "provider": "anthropic",
                    "model": "claude-test",
                    "input_tokens": 1000,
                    "output_tokens": 6,
                    "cost_usd": 0.25,
                    "status": 529,
                    "incomplete": False,
                    "at": T0.isoformat(),
                },
                {
                    "provider": "openai",
                    "model": "gpt-test",
                    "input_tokens": 234,
                    "output_tokens": 50,
                    "cost_usd": 0.25,
                    "status": None,
                    "incomplete": True,
                    "at": T0.isoformat(),
                },
            ],
            log_tail="booting\n<script>alert(1)</script>\nTraceback: boom\n",
        )
        ok = await record_run(db, space_id="alpha", reason=RunReason.OK, started_at=T0)
        await login(http)

        async with http.get(f"/runs/{run.id}") as resp:
            raw = await resp.text()
            assert resp.status == 200
        assert "<script>alert(1)</script>" not in raw  # escaped, not markup
        assert "<b>the</b>" not in raw
        page = parse(raw)
        assert text(page, "run-prompt") == "Summarize <b>the</b> report please"
        assert text(page, "run-log") == "booting\n<script>alert(1)</script>\nTraceback: boom\n"
        assert "without writing result.json" in text(page, "run-error")
        facts = text(page, "run-facts")
        for expected in ("137", "mercury-run-abc", "mercury-agent:test", "1,234 in / 56 out",
                         "$0.5000", "4 s", "claude-test"):  # fmt: skip
            assert expected in facts, expected
        attempts = text(page, "run-attempts")
        assert "anthropic · claude-test" in attempts and "overloaded" in attempts
        assert "openai · gpt-test" in attempts and "retry" in attempts
        calls = text(page, "run-calls")
        assert "529" in calls and "no answer" in calls and "cut short" in calls
        assert "1,000 / 6" in calls

        # A successful run shows no log section; an unknown run is a 404 page.
        good = await get_page(http, f"/runs/{ok.id}")
        assert texts(good, "run-log") == []
        assert "Not recorded" in " ".join(texts(good, "muted"))
        await get_page(http, "/runs/999999", status=404)


async def test_the_pages_need_a_login(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        for path in ("/runs?space=alpha", "/runs/1"):
            async with http.get(path, allow_redirects=False) as resp:
                assert resp.status == 303
                assert resp.headers["Location"].startswith("/login?next=/runs")
