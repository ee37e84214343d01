"""The Health page over real HTTP: `mercury doctor`'s own checks against a real App (its
SQLite database, the real Docker engine), and the cache that keeps reloads from
re-running them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mercury.checks import CheckResult, Status
from mercury.dashboard.pages.health import HealthCache, check_rows, health_cache, summary
from tests.integration.dashboard_site import Node, login, parse, running

MISSING_IMAGE = "mercury-test-no-such-image:never"


def check_table(root: Node) -> dict[str, tuple[str, str, str]]:
    """Check name -> (status, detail, fix), from the rows of the page."""
    section = root.find("section", id="health-checks")
    rows = {}
    for tr in section.find_all("tr"):
        if not tr.has_class("check-row"):
            continue
        status, name, detail, fix = (td.text for td in tr.find_all("td"))
        rows[name] = (tr.attrs["data-status"], detail, fix)
        assert status.startswith(tr.attrs["data-status"])
    return rows


async def test_health_page_runs_the_doctor_checks_with_their_fixes(tmp_path: Path) -> None:
    async with running(tmp_path, container={"image": MISSING_IMAGE}) as site:
        async with site.client() as http:
            await login(http)
            async with http.get("/health", allow_redirects=False) as resp:
                assert resp.status == 200
                root = parse(await resp.text())
        rows = check_table(root)
        assert rows["Docker engine reachable"][0] == "ok"
        assert rows["database reachable and migrated"][0] == "ok"
        assert rows["data dir writable"] == ("ok", str(tmp_path), "—")
        # No config file: a warning with its fix.
        assert rows["config valid"][0] == "warn"
        assert "mercury init" in rows["config valid"][2]
        # The missing agent image fails, and the row says how to fix it.
        assert rows["agent image present"] == (
            "fail",
            f"{MISSING_IMAGE} not found on the engine",
            "build it: mercury image build",
        )
        alert = root.find("p", role="status")
        assert "A required check fails" in alert.text
        # The Refresh control works with and without JavaScript.
        refresh = next(a for a in root.find_all("a") if a.attrs.get("hx-get"))
        assert refresh.attrs["href"] == "/health?fresh=1"
        assert refresh.attrs["hx-get"] == "/health/checks?fresh=1"


async def test_reloads_share_one_run_and_refresh_runs_again(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        cache = health_cache(site.app.dashboard.deps)  # type: ignore[union-attr]
        assert cache is health_cache(site.app.dashboard.deps)  # type: ignore[union-attr]
        async with site.client() as http:
            await login(http)
            pages = await asyncio.gather(*(http.get("/health") for _ in range(3)))
            for resp in pages:
                assert resp.status == 200
                resp.release()
            async with http.get("/health/checks") as resp:
                assert resp.status == 200
                fragment = await resp.text()
            assert cache.runs == 1  # three pages and a fragment, one run of the checks
            assert "<html" not in fragment and 'id="health-checks"' in fragment
            assert 'hx-trigger="every 30s"' in fragment
            # The Refresh button asks for a new run (allowed at once here).
            cache.min_fresh_s = 0
            async with http.get("/health/checks?fresh=1") as resp:
                assert resp.status == 200
            assert cache.runs == 2
            async with http.get("/health?fresh=1") as resp:
                assert resp.status == 200
            assert cache.runs == 3
        # A stranger gets no checks (and starts no run).
        async with site.client() as stranger:
            async with stranger.get("/health/checks", allow_redirects=False) as resp:
                assert resp.status == 303
            async with stranger.get(
                "/health/checks", headers={"HX-Request": "true"}, allow_redirects=False
            ) as resp:
                assert resp.status == 401
        assert cache.runs == 3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_cache_expires_and_limits_forced_runs() -> None:
    clock = Clock()
    calls = 0

    async def run() -> list[CheckResult]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return [CheckResult(f"run {calls}", Status.OK, "fine")]

    cache = HealthCache(run, cache_s=10, min_fresh_s=2, clock=clock)
    first = await asyncio.gather(*(cache.get() for _ in range(5)))
    assert calls == 1 and all(r is first[0] for r in first)  # concurrent: one run
    clock.now += 1
    assert (await cache.get(fresh=True)).rows[0].name == "run 1"  # too soon to force
    clock.now += 2
    assert (await cache.get(fresh=True)).rows[0].name == "run 2"
    clock.now += 9
    assert (await cache.get()).rows[0].name == "run 2"  # still young
    clock.now += 2
    assert (await cache.get()).rows[0].name == "run 3"  # expired


async def test_a_hanging_or_crashing_check_run_is_a_failed_row() -> None:
    async def hang() -> list[CheckResult]:
        await asyncio.sleep(60)
        return []

    report = await HealthCache(hang, timeout_s=0.05).get()
    assert [(r.name, r.status) for r in report.rows] == [("checks finished", "fail")]

    async def crash() -> list[CheckResult]:
        raise RuntimeError("engine said postgresql://u:hunter2secret@db/x is gone")

    report = await HealthCache(crash).get()
    assert report.rows[0].status == "fail"
    assert "hunter2secret" not in report.rows[0].detail
    assert "mercury doctor" in report.rows[0].fix


def test_rows_scrub_credentials_and_soften_optional_failures() -> None:
    rows = check_rows(
        [
            CheckResult("db", Status.FAIL, "postgresql+asyncpg://u:s3cr3tpass@h/db refused"),
            CheckResult("opt", Status.FAIL, "meh", "do x", required=False),
            CheckResult("tok", Status.OK, "xoxb-1234567890-abcdefghij set"),
        ]
    )
    assert "s3cr3tpass" not in rows[0].detail and rows[0].badge == "bad"
    assert rows[1].badge == "warn" and rows[1].fix == "do x"
    assert "abcdefghij" not in rows[2].detail
    assert summary(rows) == {"ok": 1, "warn": 0, "fail": 2, "skip": 0}
