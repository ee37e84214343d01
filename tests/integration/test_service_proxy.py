"""Extensions' credentialed services through the host: the secret never enters the run.

The real host (`RunHost` with its service routes on the run's api.sock) and the real
in-container relay (mercury_agent.relay, given the run token) in front of a fake service
on 127.0.0.1 that records every request. The credential comes from the host's environment
(monkeypatch.setenv); the container's side never sends it and never sees it, nor does the
log (Mercury's JSON log and the raw records both).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from mercury_agent.relay import Relay
from yarl import URL

from mercury.api.runhost import RunHost
from mercury.api.server import SOCKET_NAME
from mercury.api.tokens import RunGrants, ServiceGrant
from mercury.config import Config, Secrets
from mercury.logging import clear_secret_values, configure_logging

SPACE = "space-a"
SECRET = "ghp_Xq81secretValueNotShapedLikeAKey42"  # not token-shaped: only we keep it out
VAR = "EXT_TEST_GITHUB_TOKEN"
EXT = "gh-tools"


@dataclass
class FakeService:
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    fake = FakeService()

    def record(request: web.Request, body: bytes) -> None:
        fake.seen.append(
            {
                "method": request.method,
                "path": request.raw_path.partition("?")[0],  # as sent, still encoded
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            }
        )

    async def api(request: web.Request) -> web.Response:
        record(request, await request.read())
        return web.json_response({"ok": True}, headers={"X-Service": "fake"})

    async def stream(request: web.Request) -> web.StreamResponse:
        record(request, await request.read())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        # The second event only once the container has seen the first one.
        await asyncio.wait_for(fake.release.wait(), 10)
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    async def mcp(request: web.Request) -> web.Response:
        record(request, await request.read())
        return web.Response(
            text='event: message\ndata: {"jsonrpc": "2.0", "id": 1, "result": {}}\n\n',
            content_type="text/event-stream",
            headers={"Mcp-Session-Id": "s-1"},
        )

    app = web.Application()
    app.router.add_get("/api/stream", stream)
    app.router.add_route("*", "/api/{tail:.*}", api)
    app.router.add_route("*", "/mcp", mcp)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


@pytest.fixture
def log_output(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """Mercury's logging at debug into a buffer, plus caplog's raw records."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    clear_secret_values()
    configure_logging("debug", "json", stream)
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    yield stream
    root.handlers[:], root.level = saved
    structlog.reset_defaults()
    clear_secret_values()


@pytest.fixture
async def host() -> AsyncIterator[RunHost]:
    data = tempfile.mkdtemp(prefix="svc", dir="/tmp")  # short: the relay dials the path
    host = RunHost(Config.model_validate({"data_dir": data}), Secrets())
    await host.start()
    yield host
    await host.stop()
    shutil.rmtree(data, ignore_errors=True)


def grants(fake: FakeService, extension: str = EXT) -> RunGrants:
    auth = {"Authorization": f"Bearer ${{{VAR}}}", "X-Static": "static"}
    return RunGrants(
        services=(
            ServiceGrant(extension, "github", f"{fake.url}/api", auth),
            ServiceGrant(extension, "notes", f"{fake.url}/mcp", auth),
            ServiceGrant(extension, "broken", f"{fake.url}/api", {"X-Key": "${EXT_TEST_UNSET}"}),
        )
    )


async def open_run(host: RunHost, run_id: str, g: RunGrants | None) -> tuple[str, Path]:
    access = await host.open_run(run_id, SPACE, "member", grants=g)
    return access.token, access.socket_dir / SOCKET_NAME


async def call(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes = b""
) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers or {}, data=data or None) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [e for e in lines if e.get("event") == name]


async def test_the_host_adds_the_credential_and_the_secret_stays_on_the_host(
    host: RunHost,
    service: FakeService,
    monkeypatch: pytest.MonkeyPatch,
    log_output: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(VAR, SECRET)
    token, sock = await open_run(host, "run-1", grants(service))
    answers: list[str] = []
    async with Relay(str(sock), token=token) as relay:
        base = f"{relay.url}/v1/ext/{EXT}"
        # The container's own credentials and cookies do not pass; the grant's header does.
        status, headers, body = await call(
            f"{base}/svc/github/repos/a%2Fb/issues?per_page=5&state=open",
            "POST",
            {"Authorization": "Bearer container-own", "Cookie": "c=1", "X-Custom": "kept"},
            b'{"title": "t"}',
        )
        assert status == 200 and json.loads(body) == {"ok": True}
        assert headers["X-Service"] == "fake"
        answers.append(body + json.dumps(headers))
        # A remote MCP server: its URL exactly, its stream and session header back.
        status, headers, body = await call(f"{base}/mcp/notes", "POST", data=b"{}")
        assert status == 200 and '"jsonrpc": "2.0"' in body
        assert headers["Mcp-Session-Id"] == "s-1"
        answers.append(body + json.dumps(headers))

    # Without the relay, the run token as a plain bearer works too (and goes no further).
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http,
        http.get(
            f"http://mercury/v1/ext/{EXT}/svc/github/user",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 200
        answers.append(await resp.text() + json.dumps(dict(resp.headers)))

    first, mcp, direct = service.seen
    assert (first["method"], first["path"], first["query"]) == (
        "POST",
        "/api/repos/a%2Fb/issues",
        "per_page=5&state=open",
    )
    assert first["body"] == '{"title": "t"}'
    for seen in (first, mcp, direct):
        assert seen["headers"]["authorization"] == f"Bearer {SECRET}"
        assert seen["headers"]["x-static"] == "static"
        assert "cookie" not in seen["headers"]
        assert "x-mercury-run-token" not in seen["headers"]
        assert not any(token in v for v in seen["headers"].values())
    assert first["headers"]["x-custom"] == "kept"
    assert mcp["path"] == "/mcp"
    assert direct["path"] == "/api/user"

    usage = await host.close_run("run-1")
    assert usage.requests == 0  # no model calls: service calls are counted on their own
    calls = events(log_output, "service.call")
    assert [(c["service"], c["method"], c["status"]) for c in calls] == [
        ("github", "POST", 200),
        ("notes", "POST", 200),
        ("github", "GET", 200),
    ]
    assert calls[0]["extension"] == EXT and calls[0]["run_id"] == "run-1"
    assert calls[0]["bytes_out"] == len(b'{"title": "t"}') and calls[0]["bytes_in"] > 0
    [tally] = events(log_output, "service.usage")
    assert tally["calls"] == {f"{EXT}/github": 2, f"{EXT}/notes": 1}
    # Never the secret, the query string or the header values, in any form (the filled-in
    # values are also registered for redaction; the next test checks what is logged raw).
    rendered = log_output.getvalue()
    raw = caplog.text + "".join(repr(r.msg) + repr(r.args) for r in caplog.records)
    for text in (rendered, raw):
        assert SECRET not in text
        assert "per_page" not in text
        assert "container-own" not in text
    assert not any(SECRET in a for a in answers)


async def test_the_secret_is_never_handed_to_the_logger(
    host: RunHost, service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the proxy logs, before any redaction: no header value, no query, no secret."""
    monkeypatch.setenv(VAR, SECRET)
    token, sock = await open_run(host, "run-1", grants(service))
    with structlog.testing.capture_logs() as captured:
        async with Relay(str(sock), token=token) as relay:
            base = f"{relay.url}/v1/ext/{EXT}"
            assert (await call(f"{base}/svc/github/x?q=needle", "PUT", data=b"1"))[0] == 200
            assert (await call(f"{base}/svc/broken/x"))[0] == 502
            assert (await call(f"{base}/svc/absent/x"))[0] == 403
        await host.close_run("run-1")
    names = [e["event"] for e in captured]
    assert {"service.call", "service.unconfigured", "service.refused", "service.usage"} <= set(
        names
    )
    assert SECRET not in repr(captured) and "needle" not in repr(captured)
    assert token not in repr(captured)


async def test_a_service_not_granted_is_refused_and_never_reached(
    host: RunHost, service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, SECRET)
    token_1, sock_1 = await open_run(host, "run-1", grants(service, "other-ext"))
    token_2, sock_2 = await open_run(host, "run-2", None)
    for token, sock in ((token_1, sock_1), (token_2, sock_2)):
        async with Relay(str(sock), token=token) as relay:
            for path in ("svc/github/user", "mcp/notes", "svc/nope/x"):
                status, _headers, body = await call(f"{relay.url}/v1/ext/{EXT}/{path}")
                assert status == 403, body
                message = json.loads(body)["error"]["message"]
                assert "not granted" in message
                assert "other-ext" not in message and SECRET not in body
    assert service.seen == []


async def test_a_missing_host_variable_is_a_502_naming_it(
    host: RunHost, service: FakeService, monkeypatch: pytest.MonkeyPatch, log_output: io.StringIO
) -> None:
    monkeypatch.setenv(VAR, SECRET)
    monkeypatch.delenv("EXT_TEST_UNSET", raising=False)
    token, sock = await open_run(host, "run-1", grants(service))
    async with Relay(str(sock), token=token) as relay:
        status, _headers, body = await call(f"{relay.url}/v1/ext/{EXT}/svc/broken/x")
    assert status == 502
    assert json.loads(body)["error"]["message"] == (
        "service broken is not configured on the host (EXT_TEST_UNSET unset)"
    )
    assert service.seen == []
    [line] = events(log_output, "service.unconfigured")
    assert line["missing"] == ["EXT_TEST_UNSET"] and line["service"] == "broken"


async def test_a_streamed_answer_passes_chunk_by_chunk(
    host: RunHost, service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, SECRET)
    token, sock = await open_run(host, "run-1", grants(service))
    async with (
        Relay(str(sock), token=token) as relay,
        aiohttp.ClientSession() as http,
        http.get(f"{relay.url}/v1/ext/{EXT}/svc/github/stream") as resp,
    ):
        assert resp.status == 200
        # Read before the service sends the rest: a buffered hop would hang here.
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        assert first == b"data: one\n\n"
        service.release.set()
        assert await asyncio.wait_for(resp.content.read(), 10) == b"data: two\n\n"


async def test_dot_segments_cannot_climb_out_of_the_base_url(
    host: RunHost, service: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, SECRET)
    token, sock = await open_run(host, "run-1", grants(service))
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
        for tail in ("%2e%2e/admin", "a/%2E/b", "a/%2e%2E"):
            # encoded=True: sent as written, not normalized by the client.
            url = URL(f"http://mercury/v1/ext/{EXT}/svc/github/{tail}", encoded=True)
            async with http.get(
                url,
                headers={"X-Mercury-Run-Token": token},
            ) as resp:
                assert resp.status == 400, tail
    assert service.seen == []
