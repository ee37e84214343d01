"""The in-container egress relay (127.0.0.1 -> egress.sock, preamble first) and the run
token header the API relay adds; against stand-in unix servers that record what arrives."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from mercury_agent.egress import EgressRelay, egress_env, egress_socket_for
from mercury_agent.relay import Relay

TOKEN = "run-token-0123456789abcdef"


@dataclass
class FakeEgress:
    """A stand-in for the host's egress.sock: records the first line, then echoes."""

    socket: str
    preambles: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)


@pytest.fixture
async def egress() -> AsyncIterator[FakeEgress]:
    directory = tempfile.mkdtemp(prefix="egress", dir="/tmp")
    fake = FakeEgress(socket=f"{directory}/egress.sock")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fake.preambles.append(await reader.readuntil(b"\r\n"))
        head = await reader.readuntil(b"\r\n\r\n")
        fake.received.append(head)
        if head.startswith(b"CONNECT "):
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            while data := await reader.read(1024):
                writer.write(data.upper())
                await writer.drain()
        else:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
        writer.close()

    server = await asyncio.start_unix_server(serve, fake.socket)
    try:
        yield fake
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


async def test_each_connection_starts_with_the_preamble_then_passes_bytes(
    egress: FakeEgress,
) -> None:
    async with EgressRelay(egress.socket, TOKEN) as relay:
        assert relay.url == f"http://127.0.0.1:{relay.port}"
        for word in (b"ping", b"pong"):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            assert await reader.readuntil(b"\r\n\r\n") == (
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            )
            writer.write(word)
            assert await asyncio.wait_for(reader.readexactly(4), 5) == word.upper()
            writer.close()
    assert egress.preambles == [f"MERCURY-RUN {TOKEN}\r\n".encode()] * 2
    assert egress.received[0].startswith(b"CONNECT example.com:443 HTTP/1.1\r\n")


async def test_a_refusal_from_the_host_reaches_an_http_client(egress: FakeEgress) -> None:
    async with (
        EgressRelay(egress.socket, TOKEN) as relay,
        aiohttp.ClientSession() as http,
        http.get("http://example.com/x", proxy=relay.url) as resp,
    ):
        assert resp.status == 403
        assert await resp.text() == "nope"
    assert egress.received[0].startswith(b"GET http://example.com/x HTTP/1.1\r\n")


async def test_without_the_host_socket_the_client_gets_a_502() -> None:
    async with EgressRelay("/nonexistent/egress.sock", TOKEN) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


async def test_stop_cuts_open_tunnels(egress: FakeEgress) -> None:
    relay = EgressRelay(egress.socket, TOKEN)
    await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await relay.stop()
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        rest = b""
    assert rest == b""
    writer.close()


def test_a_token_with_line_breaks_is_refused() -> None:
    with pytest.raises(ValueError, match="one word"):
        EgressRelay("/x/egress.sock", "a\r\nCONNECT evil:1")


def test_the_proxy_variables_and_the_socket_path() -> None:
    env = egress_env("http://127.0.0.1:4567")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://127.0.0.1:4567"
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1,localhost"
    assert egress_socket_for("/run/mercury-api/api.sock") == "/run/mercury-api/egress.sock"


def test_only_the_api_relay_stays_direct() -> None:
    """Loopback addresses other than the API relay go through the proxy (where the host
    decides), so an operator-allowed loopback service is reachable; the relay is not
    proxied, whichever name it is called by."""
    import urllib.request

    env = egress_env("http://127.0.0.1:4567", direct="http://127.0.0.1:3000")
    assert env["NO_PROXY"] == "127.0.0.1:3000,localhost:3000"
    old = {k: os.environ.get(k) for k in ("no_proxy", "NO_PROXY")}
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = env["NO_PROXY"]
    try:
        assert urllib.request.proxy_bypass_environment("127.0.0.1:3000")
        assert urllib.request.proxy_bypass_environment("localhost:3000")
        assert not urllib.request.proxy_bypass_environment("127.0.0.1:8080")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
async def api_socket() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    directory = tempfile.mkdtemp(prefix="relaytok", dir="/tmp")
    path = f"{directory}/api.sock"
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    try:
        yield path, seen
    finally:
        await runner.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_relay_adds_the_run_token_header_when_given_one(
    api_socket: tuple[str, list[dict[str, str]]],
) -> None:
    path, seen = api_socket
    async with aiohttp.ClientSession() as http:
        async with Relay(path, token=TOKEN) as relay:
            # A service client's own Authorization passes; a forged run token is replaced.
            headers = {"Authorization": "Bearer service-own", "X-Mercury-Run-Token": "forged"}
            async with http.get(f"{relay.url}/v1/ext/e/svc/s/x", headers=headers) as resp:
                assert resp.status == 200
        async with Relay(path) as relay, http.get(f"{relay.url}/v1/whoami") as resp:
            assert resp.status == 200
    with_token, without = seen
    assert with_token["x-mercury-run-token"] == TOKEN
    assert with_token["authorization"] == "Bearer service-own"
    assert "x-mercury-run-token" not in without
