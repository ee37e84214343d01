"""GET /metrics on a real aiohttp server over a real SQLite database, parsed back with
prometheus_client's own parser: values, auth by bearer token or login session, and 401."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from mercury.adapters.web.adapter import WebChatAdapter
from mercury.config import Config, LoadedConfig, Secrets
from mercury.dashboard import metrics
from mercury.dashboard.deps import DEPS, DashboardDeps
from mercury.http.server import HttpServer, build_app
from mercury.http.sessions import SESSION_COOKIE
from mercury.storage import (
    Database,
    RunReason,
    add_usage,
    claim_next_jobs,
    default_sqlite_url,
    enqueue_job,
    get_or_create_space,
    record_run,
    upgrade,
)
from tests.fakes.sink import RecordingSink

PASSWORD = "operator password for the metrics test"
TOKEN = "metrics-token-0123456789abcdef"


@dataclass
class Site:
    url: str
    db: Database
    adapter: WebChatAdapter

    async def get(self, **headers: str) -> tuple[int, str, dict[str, str]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.url + "/metrics", headers=headers, allow_redirects=False) as resp,
        ):
            return resp.status, await resp.text(), dict(resp.headers)


async def _seed(db: Database) -> None:
    for space in ("alpha", "beta"):
        await get_or_create_space(db, space)
    await record_run(db, space_id="alpha", reason=RunReason.OK, duration_ms=2_000)
    await record_run(db, space_id="alpha", reason=RunReason.OK, duration_ms=40_000)
    await record_run(db, space_id="alpha", reason=RunReason.TIMEOUT, duration_ms=700_000)
    await record_run(db, space_id="beta", reason=RunReason.CRASHED)  # never timed
    await add_usage(db, "alpha", model="m1", input_tokens=100, output_tokens=20, cost_usd=0.5,
                    day=date(2026, 1, 1))  # fmt: skip
    await add_usage(db, "alpha", model="m2", input_tokens=1, output_tokens=2, cost_usd=0.25)
    await add_usage(db, "beta", model="m1", input_tokens=7, output_tokens=3, cost_usd=0.125)
    for space in ("alpha", "alpha", "alpha", "beta"):
        await enqueue_job(db, space)
    await claim_next_jobs(db, owner="test", max_total=2)  # one of each space starts running


async def _site(tmp_path: Path, token: str | None) -> AsyncIterator[Site]:
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    db = Database(url)
    await _seed(db)
    adapter = WebChatAdapter(
        username="admin", password=PASSWORD, max_upload=4096, upload_dir=tmp_path / "up"
    )
    await adapter.start(RecordingSink())
    config = Config()
    secrets = Secrets(
        dashboard_password=SecretStr(PASSWORD),
        metrics_token=SecretStr(token) if token else None,
    )
    app = build_app()
    app[DEPS] = DashboardDeps(
        config=config,
        loaded=LoadedConfig(config=config, secrets=secrets, path=None),
        db=db,
        auth=adapter.auth,
        adapters={"web": adapter},
    )
    app.add_routes(metrics.routes)
    app.add_routes(adapter.routes())  # the web chat, to hand the adapter a real event
    server = HttpServer("127.0.0.1", 0, app)
    await server.start()
    try:
        yield Site(f"http://127.0.0.1:{server.bound_port}", db, adapter)
    finally:
        await server.stop()
        await adapter.stop()
        await db.dispose()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, TOKEN):
        yield s


@pytest.fixture
async def site_without_token(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, None):
        yield s


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, through prometheus_client's parser."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_scrape_with_the_token_reports_every_family(site: Site) -> None:
    status, text, headers = await site.get(Authorization=f"Bearer {TOKEN}")

    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    s = _samples(text)
    assert _value(s, "mercury_runs_total", reason="ok") == 2
    assert _value(s, "mercury_runs_total", reason="timeout") == 1
    assert _value(s, "mercury_runs_total", reason="crashed") == 1
    assert ("mercury_runs_total", (("reason", "oom"),)) not in s  # no run, no series
    # Histogram over the three timed runs: 2 s, 40 s, 700 s.
    assert _value(s, "mercury_run_duration_seconds_bucket", le="1.0") == 0
    assert _value(s, "mercury_run_duration_seconds_bucket", le="5.0") == 1
    assert _value(s, "mercury_run_duration_seconds_bucket", le="60.0") == 2
    assert _value(s, "mercury_run_duration_seconds_bucket", le="600.0") == 2
    assert _value(s, "mercury_run_duration_seconds_bucket", le="1800.0") == 3
    assert _value(s, "mercury_run_duration_seconds_bucket", le="+Inf") == 3
    assert _value(s, "mercury_run_duration_seconds_count") == 3
    assert _value(s, "mercury_run_duration_seconds_sum") == pytest.approx(742.0)
    # Four jobs, one per space claimed: alpha has 2 left queued, beta none (no series).
    assert _value(s, "mercury_queue_depth", space="alpha") == 2
    assert ("mercury_queue_depth", (("space", "beta"),)) not in s
    assert _value(s, "mercury_running_containers") == 0  # no runner in this app
    # Usage summed over every day and model.
    assert _value(s, "mercury_tokens_total", space="alpha", direction="input") == 101
    assert _value(s, "mercury_tokens_total", space="alpha", direction="output") == 22
    assert _value(s, "mercury_tokens_total", space="beta", direction="input") == 7
    assert _value(s, "mercury_cost_usd_total", space="alpha") == pytest.approx(0.75)
    assert _value(s, "mercury_cost_usd_total", space="beta") == pytest.approx(0.125)
    assert _value(s, "mercury_adapter_up", platform="web") == 1
    assert TOKEN not in text and PASSWORD not in text


async def test_adapter_down_and_last_event_follow_the_adapter(site: Site) -> None:
    last_event = "mercury_adapter_last_event_timestamp_seconds"
    _, before, _ = await site.get(Authorization=f"Bearer {TOKEN}")
    assert (last_event, (("platform", "web"),)) not in _samples(before)
    sent_at = time.time()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {PASSWORD}"}) as http,
        http.post(site.url + "/api/chat/messages", json={"space": "main", "text": "hi"}) as resp,
    ):
        assert resp.status == 202

    _, after, _ = await site.get(Authorization=f"Bearer {TOKEN}")
    assert _value(_samples(after), last_event, platform="web") == pytest.approx(sent_at, abs=5)

    await site.adapter.stop()
    _, text, _ = await site.get(Authorization=f"Bearer {TOKEN}")
    assert _value(_samples(text), "mercury_adapter_up", platform="web") == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {PASSWORD}"},  # the dashboard password is not the token
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
async def test_without_the_token_or_a_session_it_is_401(
    site: Site, headers: dict[str, str]
) -> None:
    status, text, resp_headers = await site.get(**headers)

    assert status == 401
    assert "mercury_runs" not in text
    assert resp_headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_dashboard_login_session_may_scrape(site: Site) -> None:
    session_id, _ = await site.adapter.auth.sessions.create("admin")
    cookie = site.adapter.auth.cookie_for(session_id)

    status, text, _ = await site.get(Cookie=f"{SESSION_COOKIE}={cookie}")
    assert status == 200
    assert _value(_samples(text), "mercury_runs_total", reason="ok") == 2
    # The bare id (what a leaked store row could give, were it not hashed) is no cookie.
    assert (await site.get(Cookie=f"{SESSION_COOKIE}={session_id}"))[0] == 401

    await site.adapter.auth.sessions.drop(session_id)
    status, _, _ = await site.get(Cookie=f"{SESSION_COOKIE}={cookie}")
    assert status == 401


async def test_without_a_metrics_token_only_a_session_works(site_without_token: Site) -> None:
    site = site_without_token
    assert (await site.get(Authorization="Bearer "))[0] == 401
    assert (await site.get(Authorization=f"Bearer {TOKEN}"))[0] == 401
    session_id, _ = await site.adapter.auth.sessions.create("admin")
    cookie = site.adapter.auth.cookie_for(session_id)
    assert (await site.get(Cookie=f"{SESSION_COOKIE}={cookie}"))[0] == 200
