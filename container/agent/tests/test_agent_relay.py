"""The in-container relay: 127.0.0.1 HTTP forwarded to a unix socket, streams unbuffered."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from mercury_agent.relay import Relay
from mercury_agent.settings import apply_env, relay_env, subprocess_env


@dataclass
class Upstream:
    """A stand-in for the host API on a unix socket."""

    socket: str
    seen: list[dict[str, object]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    # A short path: sun_path holds 107 bytes, pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="relay", dir="/tmp")
    up = Upstream(socket=f"{directory}/api.sock")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        up.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            }
        )
        return web.json_response({"ok": True}, headers={"X-Upstream": "yes"})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: one\ndata: {}\n\n")
        # The second event is sent only once the client has seen the first one.
        await asyncio.wait_for(up.release.wait(), 10)
        await resp.write(b"event: two\ndata: {}\n\n")
        await resp.write_eof()
        return resp

    async def overloaded(request: web.Request) -> web.Response:
        body = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        return web.json_response(body, status=529, headers={"Retry-After": "3"})

    app = web.Application()
    app.router.add_route("*", "/model/anthropic/v1/messages", echo)
    app.router.add_get("/stream", stream)
    app.router.add_post("/overloaded", overloaded)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, up.socket).start()
    try:
        yield up
    finally:
        up.release.set()
        await runner.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


async def test_request_is_forwarded_whole_minus_hop_by_hop_headers(upstream: Upstream) -> None:
    async with Relay(upstream.socket) as relay, aiohttp.ClientSession() as client:
        assert relay.url.startswith("http://127.0.0.1:")
        async with client.post(
            relay.url + "/model/anthropic/v1/messages?beta=true&q=a%26b%20c",
            data=b'{"model": "m"}',
            headers={
                "x-api-key": "run-token",
                "Authorization": "Bearer run-token",
                "anthropic-version": "2023-06-01",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "connection-scoped",
                "Proxy-Authorization": "Basic abc",
                "TE": "trailers",
            },
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Upstream"] == "yes"
            assert await resp.json() == {"ok": True}
    (seen,) = upstream.seen
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/model/anthropic/v1/messages?beta=true&q=a%26b%20c"
    assert seen["body"] == '{"model": "m"}'
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["x-api-key"] == "run-token"
    assert headers["authorization"] == "Bearer run-token"
    assert headers["anthropic-version"] == "2023-06-01"
    for dropped in ("x-hop", "proxy-authorization", "te"):
        assert dropped not in headers


async def test_other_methods_pass_too(upstream: Upstream) -> None:
    async with (
        Relay(upstream.socket) as relay,
        aiohttp.ClientSession() as client,
        client.get(relay.url + "/model/anthropic/v1/messages") as resp,
    ):
        assert resp.status == 200
    assert upstream.seen[0]["method"] == "GET"
    assert upstream.seen[0]["body"] == ""


async def test_streams_are_passed_on_as_they_arrive(upstream: Upstream) -> None:
    async with (
        Relay(upstream.socket) as relay,
        aiohttp.ClientSession() as client,
        client.get(relay.url + "/stream") as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        # Arrives while upstream is still holding back the rest: nothing is buffered.
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == b"event: one\ndata: {}\n\n"
        upstream.release.set()
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert rest == b"event: two\ndata: {}\n\n"


async def test_error_statuses_and_headers_come_back_unchanged(upstream: Upstream) -> None:
    async with (
        Relay(upstream.socket) as relay,
        aiohttp.ClientSession() as client,
        client.post(relay.url + "/overloaded") as resp,
    ):
        assert resp.status == 529
        assert resp.headers["Retry-After"] == "3"
        assert (await resp.json())["error"]["type"] == "overloaded_error"


async def test_unreachable_host_api_is_a_502_with_a_readable_error(tmp_path: Path) -> None:
    async with (
        Relay(str(tmp_path / "missing.sock")) as relay,
        aiohttp.ClientSession() as client,
        client.post(relay.url + "/model/openai/v1/chat/completions", data=b"{}") as resp,
    ):
        assert resp.status == 502
        body = json.loads(await resp.text())
    assert "cannot reach the host API" in body["error"]["message"]


def test_relay_env_points_both_sdks_at_the_relay_with_the_token() -> None:
    assert relay_env("http://127.0.0.1:4321/", "tok") == {
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4321/model/anthropic",
        "OPENAI_BASE_URL": "http://127.0.0.1:4321/model/openai/v1",
        "ANTHROPIC_API_KEY": "tok",
        "OPENAI_API_KEY": "tok",
        "MERCURY_API_URL": "http://127.0.0.1:4321",
        "MERCURY_API_TOKEN": "tok",
    }


def test_apply_env_drops_a_competing_credential_and_bypasses_proxies() -> None:
    env = {"ANTHROPIC_AUTH_TOKEN": "other", "NO_PROXY": "internal.example", "PATH": "/bin"}
    apply_env(env, relay_env("http://127.0.0.1:5", "tok"))
    assert "ANTHROPIC_AUTH_TOKEN" not in env
    assert env["ANTHROPIC_API_KEY"] == "tok"
    assert env["NO_PROXY"] == "internal.example,127.0.0.1,localhost"
    assert env["no_proxy"] == "127.0.0.1,localhost"
    apply_env(env, {})
    assert env["NO_PROXY"] == "internal.example,127.0.0.1,localhost"  # not repeated


def test_subprocesses_get_a_writable_home(tmp_path: Path) -> None:
    assert subprocess_env({"HOME": str(tmp_path)})["HOME"] == str(tmp_path)
    home = subprocess_env({"HOME": "/nonexistent/home"})["HOME"]
    assert home != "/nonexistent/home" and Path(home).is_dir()


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = Relay("/nowhere.sock").url
