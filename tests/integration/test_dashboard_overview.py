"""The Overview page over real HTTP: a real App's server on 127.0.0.1, a real SQLite file.

Logged in through /login like an operator. The numbers on the page are checked against
runs, usage and jobs seeded through the storage functions; Stop is checked on a real
container run (the scripted test agent sleeping, on the real Docker engine): the run is
aborted and the space's queue cleared, and without the CSRF token nothing happens. The
live part (/overview/events) is read as a raw server-sent-events stream: it sends the
fragments, follows a change in the database, refuses strangers, stops ticking when no page
is open, and ends at shutdown. The page's HTML is read with html.parser.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from mercury.dashboard.pages.overview import FEED, OverviewData, runs_chart, sse_event
from mercury.sandbox.runner import ContainerRunner, RunningContainer
from mercury.sandbox.types import RunReason as SandboxReason
from mercury.sandbox.types import RunRequest
from mercury.storage import (
    JobStatus,
    RunReason,
    add_usage,
    enqueue_job,
    get_or_create_space,
    list_jobs,
    record_run,
)
from mercury.storage.stats import HourCount, TodayUsage, UsageTotals
from tests.integration.dashboard_site import Node, Running, csrf_token, login, parse, running


def site(
    tmp_path: Path, runner: ContainerRunner | None = None
) -> AbstractAsyncContextManager[Running]:
    """A real App's HTTP side (database, login, adapters, dashboard), with `runner` as its
    container runner (None: the page says no runner is in this process)."""
    return running(tmp_path / "site", runner=runner)


async def page_doc(http: aiohttp.ClientSession) -> Node:
    async with http.get("/overview", allow_redirects=False) as resp:
        assert resp.status == 200
        return parse(await resp.text())


def count(doc: Node, name: str) -> str:
    found = [n for n in doc.walk() if n.attrs.get("data-count") == name]
    assert len(found) == 1, name
    return found[0].text


def rows(doc: Node, table_class: str, key: str) -> dict[str, list[str]]:
    """A table's body rows by their data-<key>, as cell texts."""
    tables = [n for n in doc.find_all("table") if table_class in n.attrs.get("class", "")]
    assert len(tables) == 1, table_class
    return {
        tr.attrs[f"data-{key}"]: [td.text for td in tr.find_all("td")]
        for tr in tables[0].find_all("tr")
        if f"data-{key}" in tr.attrs
    }


# ------------------------------------------------------------------- pure parts


def test_an_sse_event_carries_each_line_of_the_fragment() -> None:
    assert sse_event("queue", "<p>a</p>\n<p>b</p>") == (
        b"event: queue\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
    )
    assert sse_event("queue", "") == b"event: queue\ndata: \n\n"


def test_the_runs_chart_stacks_ok_and_failed_runs_per_hour() -> None:
    hour = datetime(2026, 3, 10, 11, tzinfo=UTC)
    chart = runs_chart([HourCount(hour, 3, 1), HourCount(hour + timedelta(hours=1), 0, 0)])
    assert [(i.label, i.total) for i in chart.legend] == [("ok", 2.0), ("failed", 1.0)]
    assert "11:00 · ok: 2 runs" in chart.svg and "11:00 · failed: 1 run<" in chart.svg
    assert not chart.empty
    assert runs_chart([HourCount(hour, 0, 0)]).empty


def test_elapsed_time_is_never_negative() -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    data = OverviewData(
        now=now, adapters={}, running=[], queue={}, queued_total=0, queued_spaces=0, hours=[],
        failures={}, today=TodayUsage(now.date(), UsageTotals(), []),
    )  # fmt: skip
    run = RunningContainer("r", "s", "c", now + timedelta(milliseconds=3))
    assert data.elapsed_s(run) == 0.0
    assert data.elapsed_s(RunningContainer("r", "s", "c", now - timedelta(seconds=90))) == 90.0


# ------------------------------------------------------------------- the numbers


async def test_the_numbers_match_the_stored_runs_usage_and_jobs(tmp_path: Path) -> None:
    async with site(tmp_path) as s, s.client() as http:
        db = s.app.db
        now = datetime.now(UTC)
        for space in ("alpha", "beta"):
            await get_or_create_space(db, space)
        for reason, ago in [
            (RunReason.OK, timedelta(minutes=5)),
            (RunReason.OK, timedelta(hours=3)),
            (RunReason.TIMEOUT, timedelta(hours=2)),
            (RunReason.TIMEOUT, timedelta(hours=5)),
            (RunReason.CRASHED, timedelta(hours=1)),
            (RunReason.ERROR, timedelta(hours=30)),  # older than 24 h: not counted
        ]:
            await record_run(db, space_id="alpha", reason=reason, started_at=now - ago)
        await add_usage(db, "alpha", model="m", input_tokens=1200, output_tokens=300,
                        cost_usd=0.5, day=now.date())  # fmt: skip
        await add_usage(db, "beta", model="m", input_tokens=10, output_tokens=5,
                        cost_usd=0.25, day=now.date())  # fmt: skip
        await add_usage(db, "beta", model="m", input_tokens=99_999, cost_usd=99.0,
                        day=now.date() - timedelta(days=1))  # fmt: skip
        for space, n in [("alpha", 1), ("beta", 3)]:
            for _ in range(n):
                await enqueue_job(db, space)

        await login(http)
        doc = await page_doc(http)
        assert count(doc, "runs-24h") == "5"
        assert count(doc, "failed-24h") == "3"
        assert rows(doc, "failures-table", "reason") == {
            "timeout": ["timeout", "2"],
            "crashed": ["crashed", "1"],
        }
        assert count(doc, "tokens-today") == "1,515"
        assert count(doc, "cost-today") == "$0.7500"
        assert rows(doc, "today-table", "space") == {
            "alpha": ["alpha", "1,500", "$0.5000"],
            "beta": ["beta", "15", "$0.2500"],
        }
        assert count(doc, "queued") == "4"
        assert rows(doc, "queue-table", "space") == {"beta": ["beta", "3"], "alpha": ["alpha", "1"]}
        charts = doc.find_all("svg")
        assert len(charts) == 1 and "5 runs, 3 failed" in charts[0].text
        # No runner in this process: said so, no Stop button.
        panel = doc.by_id("running")
        assert "Not running" in panel.text
        assert not panel.find_all("button")
        # The web chat (enabled by default) is listed with its state: not started here.
        adapters = doc.by_id("adapters")
        web = [n for n in adapters.walk() if n.attrs.get("data-platform") == "web"]
        assert len(web) == 1 and "not connected" in web[0].text
        # The page subscribes to its live stream.
        live = [n for n in doc.walk() if n.attrs.get("sse-connect")]
        assert [n.attrs["sse-connect"] for n in live] == ["/overview/events"]
        assert {n.attrs.get("sse-swap") for n in live[0].walk()} >= {
            "running", "adapters", "queue", "activity",
        }  # fmt: skip


async def test_an_empty_database_shows_zeros_and_nothing_waiting(tmp_path: Path) -> None:
    async with site(tmp_path) as s, s.client() as http:
        await login(http)
        doc = await page_doc(http)
        assert (count(doc, "runs-24h"), count(doc, "failed-24h")) == ("0", "0")
        assert (count(doc, "tokens-today"), count(doc, "cost-today")) == ("0", "$0.0000")
        assert "Nothing is waiting." in doc.by_id("queue").text
        assert "No failed run." in doc.text


async def test_metrics_are_mounted_behind_the_login(tmp_path: Path) -> None:
    async with site(tmp_path) as s, s.client() as http:
        async with http.get("/metrics") as resp:
            assert resp.status == 401
        await login(http)
        async with http.get("/metrics") as resp:
            assert resp.status == 200
            assert "mercury_running_containers 0.0" in await resp.text()


# ----------------------------------------------------------------------- Stop


def _request(space: str) -> RunRequest:
    return RunRequest(
        run_id=f"run-{uuid.uuid4().hex[:12]}", space_id=space, input={"prompt": "sleep 30"}
    )


async def _wait_running(client: docker.DockerClient, name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = await asyncio.to_thread(client.api.inspect_container, name)
            if info["State"]["Status"] == "running":
                return
        except docker.errors.NotFound:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"container {name} did not start within {timeout}s")


@pytest.mark.docker
async def test_stop_aborts_the_running_container_and_clears_the_queue(
    tmp_path: Path, runner: ContainerRunner, docker_client: docker.DockerClient
) -> None:
    async with site(tmp_path, runner=runner) as s, s.client() as http:
        db = s.app.db
        for space in ("space-a", "space-b"):
            await get_or_create_space(db, space)
        waiting = [await enqueue_job(db, "space-a") for _ in range(2)]
        other = await enqueue_job(db, "space-b")
        req = _request("space-a")
        before = datetime.now(UTC)
        task = asyncio.create_task(runner.run(req))
        container = f"mercury-{runner.config.instance}-{req.run_id}"
        try:
            await _wait_running(docker_client, container)
            # The runner's read-only view of it.
            [live] = runner.active_runs()
            assert (live.run_id, live.space_id, live.container) == (
                req.run_id, "space-a", container,
            )  # fmt: skip
            assert before - timedelta(seconds=1) <= live.started_at <= datetime.now(UTC)
            assert not live.stopping

            await login(http)
            doc = await page_doc(http)
            row = rows(doc, "running-table", "run")[req.run_id]
            assert row[:3] == ["space-a", req.run_id, container]
            [form] = doc.by_id("running").find_all("form")
            assert form.attrs["action"] == "/overview/spaces/space-a/stop"
            token = await csrf_token(http)

            # Without the CSRF token: refused, nothing happens.
            async with http.post(form.attrs["action"], allow_redirects=False) as resp:
                assert resp.status == 403
            await asyncio.sleep(0.3)
            assert not task.done()
            queued = await list_jobs(db, space_id="space-a", status=JobStatus.QUEUED)
            assert len(queued) == 2

            # As htmx sends it: the header token; the answer is the fresh fragment.
            async with http.post(
                form.attrs["action"],
                headers={"X-CSRF-Token": token, "HX-Request": "true"},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 200
                fragment = parse(await resp.text())
            notice = fragment.by_id("overview-notice")
            assert notice.attrs.get("hx-swap-oob") == "true"
            assert notice.text == (
                "space-a: Stopped the running request. Cleared 2 waiting message(s)."
            )
            result = await asyncio.wait_for(task, 15)
        finally:
            if not task.done():
                await runner.abort("space-a")
                await task
        assert result.reason is SandboxReason.ABORTED
        for job in waiting:
            [stored] = [j for j in await list_jobs(db, space_id="space-a") if j.id == job.id]
            assert stored.status is JobStatus.ABORTED
        [kept] = await list_jobs(db, space_id="space-b")
        assert (kept.id, kept.status) == (other.id, JobStatus.QUEUED)
        assert runner.active_runs() == []
        doc = await page_doc(http)
        assert "No container is running." in doc.by_id("running").text
        assert rows(doc, "queue-table", "space") == {"space-b": ["space-b", "1"]}

        # A plain form (no JavaScript) posts the token as a field and is sent back.
        async with http.post(
            "/overview/spaces/space-b/stop", data={"csrf": token}, allow_redirects=False
        ) as resp:
            assert (resp.status, resp.headers["Location"]) == (303, "/overview")
        [kept] = await list_jobs(db, space_id="space-b")
        assert kept.status is JobStatus.ABORTED


async def test_stop_without_a_runner_says_so_and_refuses_strangers(tmp_path: Path) -> None:
    async with site(tmp_path) as s:
        async with (
            s.client() as stranger,
            stranger.post("/overview/spaces/a/stop", allow_redirects=False) as resp,
        ):
            assert resp.status == 401
        async with s.client() as http:
            await login(http)
            token = await csrf_token(http)
            async with http.post(
                "/overview/spaces/a/stop", headers={"X-CSRF-Token": token}
            ) as resp:
                assert resp.status == 503 and "not running" in await resp.text()


# ----------------------------------------------------------------- live stream


async def read_events(resp: aiohttp.ClientResponse, wanted: set[str]) -> dict[str, str]:
    """Read SSE events until each name in `wanted` came once; name -> its HTML."""
    got: dict[str, str] = {}
    name, data = None, []
    while not wanted <= set(got):
        line = (await asyncio.wait_for(resp.content.readline(), 10)).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and name is not None:
            got[name] = "\n".join(data)
            name, data = None, []
    return got


async def test_the_event_stream_sends_fresh_fragments_and_stops_when_closed(
    tmp_path: Path,
) -> None:
    async with site(tmp_path) as s, s.client() as http:
        feed = s.app.http.app[FEED]
        feed.interval = 0.05
        await login(http)
        async with http.get("/overview/events") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            events = await read_events(resp, {"running", "adapters", "queue", "activity"})
            assert "Nothing is waiting." in events["queue"]
            assert "Not running" in events["running"]
            assert feed.open_streams == 1 and feed.ticking
            # A job queued now shows on the open page at a following tick.
            await get_or_create_space(s.app.db, "live")
            await enqueue_job(s.app.db, "live")
            deadline = time.monotonic() + 10
            while True:
                html = (await read_events(resp, {"queue"}))["queue"]
                if 'data-space="live"' in html:
                    break
                assert time.monotonic() < deadline, html
            queue = parse(html)
            assert rows(queue, "queue-table", "space") == {"live": ["live", "1"]}
        # The page went away: the stream is forgotten and the ticking stops.
        deadline = time.monotonic() + 5
        while feed.open_streams or feed.ticking:
            assert time.monotonic() < deadline, (feed.open_streams, feed.ticking)
            await asyncio.sleep(0.05)


async def test_the_event_stream_refuses_strangers(tmp_path: Path) -> None:
    async with site(tmp_path) as s, s.client() as http:
        async with http.get("/overview/events", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        async with http.get("/overview/events", headers={"HX-Request": "true"}) as resp:
            assert resp.status == 401
        assert s.app.http.app[FEED].open_streams == 0


async def test_shutdown_ends_open_streams_at_once(tmp_path: Path) -> None:
    async with site(tmp_path) as s, s.client() as http:
        feed = s.app.http.app[FEED]
        feed.interval = 0.05
        await login(http)
        async with http.get("/overview/events") as resp:
            await read_events(resp, {"running"})
            started = time.monotonic()
            await s.app.http.stop()
            assert time.monotonic() - started < 5
            rest: Any = b""
            while chunk := await asyncio.wait_for(resp.content.read(65536), 5):
                rest += chunk
        assert feed.open_streams == 0 and not feed.ticking
        assert not re.search(rb"Traceback", rest)
