"""The per-run egress proxy: a run reaches exactly its granted hosts, and nothing else.

The real host (`RunHost`, its egress.sock beside api.sock) and the real in-container
`EgressRelay` (mercury_agent.egress), with clients that find the proxy the way the
agent's tools do - through HTTP_PROXY / HTTPS_PROXY - in front of fake origins on
127.0.0.1: plain HTTP, TLS (a trustme CA) and a raw echo. A hostile run that talks to the
socket itself, with its own token or another run's, is refused just the same.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import trustme
from aiohttp import web
from mercury_agent.egress import EgressRelay, egress_env, egress_socket_for

from mercury.api.egress import EGRESS_SOCKET_NAME, parse_proxy_request
from mercury.api.runhost import RunHost
from mercury.api.server import SOCKET_NAME
from mercury.api.tokens import RunGrants
from mercury.config import Config, Secrets

SPACE = "space-a"


@dataclass
class Origin:
    """A fake web server on 127.0.0.1 that records what reached it."""

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)


async def _serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner


def _origin_app(origin_ref: list[Origin]) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        origin_ref[0].seen.append(
            {
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": (await request.read()).decode(),
            }
        )
        return web.Response(text=f"hello from {request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Rig:
    host: RunHost
    http: Origin  # plain HTTP, allowed by allow_private
    tls: Origin  # HTTPS, allowed by allow_private
    echo: Origin  # raw TCP echo, allowed by allow_private
    other: Origin  # plain HTTP on loopback NOT in allow_private
    client_ssl: ssl.SSLContext

    async def run(self, run_id: str, hosts: tuple[str, ...] = ()) -> tuple[str, Path]:
        access = await self.host.open_run(run_id, SPACE, "member", grants=RunGrants(hosts=hosts))
        return access.token, access.socket_dir / SOCKET_NAME

    def granted(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{o.port}" for o in (self.http, self.tls, self.echo))


@pytest.fixture
async def rig(ca: trustme.CA) -> AsyncIterator[Rig]:
    # A short data dir: the relay connects to the socket by path (107 bytes at most).
    data = tempfile.mkdtemp(prefix="egr", dir="/tmp")
    runners: list[web.AppRunner] = []
    http_ref: list[Origin] = []
    runner = await _serve(_origin_app(http_ref))
    runners.append(runner)
    http_ref.append(Origin(runner.addresses[0][1]))

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    tls_ref: list[Origin] = []
    runner = await _serve(_origin_app(tls_ref), server_ctx)
    runners.append(runner)
    tls_ref.append(Origin(runner.addresses[0][1]))

    other_ref: list[Origin] = []
    runner = await _serve(_origin_app(other_ref))
    runners.append(runner)
    other_ref.append(Origin(runner.addresses[0][1]))

    async def echo_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    echo_server = await asyncio.start_server(echo_conn, "127.0.0.1", 0)
    echo = Origin(echo_server.sockets[0].getsockname()[1])

    allowed = [f"127.0.0.1:{o.port}" for o in (http_ref[0], tls_ref[0], echo)]
    config = Config.model_validate({"data_dir": data, "extensions": {"allow_private": allowed}})
    host = RunHost(config, Secrets())
    await host.start()
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    try:
        yield Rig(host, http_ref[0], tls_ref[0], echo, other_ref[0], client_ssl)
    finally:
        await host.stop()
        echo_server.close()
        for r in runners:
            await r.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


@pytest.fixture
def use_proxy(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point this process's HTTP clients at a relay, the way the agent points its tools.

    NO_PROXY is left empty here: in a container it keeps loopback direct, but these fake
    origins *are* on loopback, and the point is to reach them through the proxy."""

    def apply(url: str) -> None:
        for name, value in egress_env(url).items():
            monkeypatch.setenv(name, "" if name.lower() == "no_proxy" else value)

    return apply


def _urlopen(url: str) -> tuple[int, str]:
    """GET `url` with urllib, proxies from the environment (as any Python tool does)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    try:
        with opener.open(url, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _raw(sock: Path, data: bytes) -> bytes:
    """Send `data` on the egress socket as a hostile run would, and read the whole answer."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    got = b""
    try:
        writer.write(data)
        await writer.drain()
        # The proxy may close with some of our request unread; what it sent still counts.
        while chunk := await asyncio.wait_for(reader.read(65536), 20):
            got += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return got


async def test_a_plain_get_reaches_a_granted_host_through_the_relay(
    rig: Rig, use_proxy: Any, logs: list[dict[str, Any]]
) -> None:
    token, api = await rig.run("run-1", rig.granted())
    async with EgressRelay(egress_socket_for(str(api)), token) as relay:
        use_proxy(relay.url)
        status, body = await asyncio.to_thread(
            _urlopen, f"http://127.0.0.1:{rig.http.port}/page?q=1"
        )
    assert (status, body) == (200, "hello from /page?q=1")
    [seen] = rig.http.seen
    # Forwarded in origin form, as one request: the proxy's own headers are gone.
    assert seen["headers"]["connection"] == "close"
    assert not any(k.startswith("proxy-") for k in seen["headers"])
    assert seen["headers"]["host"] == f"127.0.0.1:{rig.http.port}"
    [opened] = _events(logs, "egress.open")
    assert opened["run_id"] == "run-1" and opened["port"] == rig.http.port
    await rig.host.close_run("run-1")
    [closed] = _events(logs, "egress.closed")
    assert closed["bytes_in"] > len(body) and closed["bytes_out"] > 0


async def test_https_goes_through_a_connect_tunnel(
    rig: Rig, use_proxy: Any, logs: list[dict[str, Any]]
) -> None:
    token, api = await rig.run("run-1", rig.granted())
    async with EgressRelay(egress_socket_for(str(api)), token) as relay:
        use_proxy(relay.url)
        async with (
            aiohttp.ClientSession(trust_env=True) as http,
            http.get(f"https://127.0.0.1:{rig.tls.port}/secure", ssl=rig.client_ssl) as resp,
        ):
            assert resp.status == 200
            assert await resp.text() == "hello from /secure"
    assert len(rig.tls.seen) == 1
    [opened] = _events(logs, "egress.open")
    assert opened["port"] == rig.tls.port


async def test_a_host_not_granted_is_refused_and_logged(
    rig: Rig, use_proxy: Any, logs: list[dict[str, Any]]
) -> None:
    token, api = await rig.run("run-1", (f"127.0.0.1:{rig.http.port}",))
    async with EgressRelay(egress_socket_for(str(api)), token) as relay:
        use_proxy(relay.url)
        # The echo port is allowed by allow_private, but this run was not granted it.
        status, body = await asyncio.to_thread(_urlopen, f"http://127.0.0.1:{rig.echo.port}/")
        assert status == 403
        assert "is not among the hosts this run's extensions may reach" in body
        async with aiohttp.ClientSession(trust_env=True) as http:
            with pytest.raises(aiohttp.ClientHttpProxyError) as refused:
                await http.get(f"https://127.0.0.1:{rig.tls.port}/", ssl=rig.client_ssl)
            assert refused.value.status == 403
    assert rig.tls.seen == []
    refusals = _events(logs, "egress.refused")
    assert {(e["host"], e["port"]) for e in refusals} == {
        ("127.0.0.1", rig.echo.port),
        ("127.0.0.1", rig.tls.port),
    }
    assert all(e["run_id"] == "run-1" and "not among" in e["why"] for e in refusals)


async def test_a_granted_name_on_a_private_address_is_refused(
    rig: Rig, use_proxy: Any, logs: list[dict[str, Any]]
) -> None:
    port = rig.other.port  # loopback, but not in allow_private
    token, api = await rig.run("run-1", (f"127.0.0.1:{port}", f"localhost:{port}"))
    async with EgressRelay(egress_socket_for(str(api)), token) as relay:
        use_proxy(relay.url)
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
            status, body = await asyncio.to_thread(_urlopen, url)
            assert status == 403, body
            assert "is not a public address (loopback)" in body
    assert rig.other.seen == []
    whys = [e["why"] for e in _events(logs, "egress.refused")]
    assert len(whys) == 2 and all("loopback" in w for w in whys)


async def test_a_run_without_grants_is_refused_even_on_the_socket_itself(rig: Rig) -> None:
    token, api = await rig.run("run-1")
    sock = api.parent / EGRESS_SOCKET_NAME
    for request in (
        f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET http://127.0.0.1:{rig.http.port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        answer = await _raw(sock, f"MERCURY-RUN {token}\r\n{request}".encode())
        assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer
    assert rig.http.seen == []


async def test_another_runs_token_or_none_is_a_407(rig: Rig) -> None:
    token_1, _api_1 = await rig.run("run-1", rig.granted())
    _token_2, api_2 = await rig.run("run-2")
    sock_2 = api_2.parent / EGRESS_SOCKET_NAME
    connect = f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n\r\n"
    for preamble in (f"MERCURY-RUN {token_1}\r\n", "MERCURY-RUN not-a-token\r\n", ""):
        answer = await _raw(sock_2, (preamble + connect).encode())
        assert answer.startswith(b"HTTP/1.1 407 "), (preamble, answer)
        assert b"Proxy-Authenticate: MERCURY-RUN" in answer


async def test_malformed_and_oversized_requests_are_400(rig: Rig) -> None:
    token, api = await rig.run("run-1", rig.granted())
    sock = api.parent / EGRESS_SOCKET_NAME
    for request in (
        "BREW /pot HTCPCP/1.0\r\n\r\n",
        "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",
        f"GET ftp://127.0.0.1:{rig.http.port}/ HTTP/1.1\r\n\r\n",
        f"GET http://u:p@127.0.0.1:{rig.http.port}/ HTTP/1.1\r\n\r\n",
        f"GET http://127.0.0.1:{rig.http.port}/ HTTP/1.1\r\nX: a\nHost: b\r\n\r\n",
        f"GET http://127.0.0.1:{rig.http.port}/ HTTP/1.1\r\nX: {'a' * 17000}\r\n\r\n",
    ):
        answer = await _raw(sock, f"MERCURY-RUN {token}\r\n{request}".encode())
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (request[:40], answer)
    assert rig.http.seen == []


async def test_closing_the_run_removes_the_socket_and_cuts_its_tunnels(rig: Rig) -> None:
    token, api = await rig.run("run-1", rig.granted())
    sock = api.parent / EGRESS_SOCKET_NAME
    assert sock.is_socket()
    async with EgressRelay(egress_socket_for(str(api)), token) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n\r\n".encode())
        assert await reader.readuntil(b"\r\n\r\n") == (
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        )
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        assert rig.host.egress.connections("run-1") == 1

        await rig.host.close_run("run-1")
        assert not sock.exists()
        try:
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            rest = b""
        assert rest == b""  # the tunnel was cut, not left open
        writer.close()
        # A new connection finds no socket: the relay answers 502 itself.
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 502 "), answer
        writer.close()
    assert rig.host.egress.open_runs() == set()


async def test_an_idle_tunnel_is_closed(rig: Rig, logs: list[dict[str, Any]]) -> None:
    rig.host.egress.idle_timeout = 0.2  # the default is a minute
    token, api = await rig.run("run-1", rig.granted())
    async with EgressRelay(egress_socket_for(str(api)), token) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(f"CONNECT 127.0.0.1:{rig.echo.port} HTTP/1.1\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        # Nothing more either way: the host ends the tunnel (the echo server would not).
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    [closed] = _events(logs, "egress.closed")
    assert (closed["bytes_out"], closed["bytes_in"]) == (4, 4)


async def test_connections_over_the_cap_are_refused(rig: Rig) -> None:
    token, api = await rig.run("run-1", rig.granted())
    sock = api.parent / EGRESS_SOCKET_NAME
    cap = rig.host.egress.max_connections
    held = [await asyncio.open_unix_connection(str(sock)) for _ in range(cap)]
    try:
        for _, w in held:
            w.write(b"MERCURY-RUN ")  # and nothing more: each holds its slot
            await w.drain()
        while rig.host.egress.connections("run-1") < cap:
            await asyncio.sleep(0.01)
        answer = await _raw(sock, f"MERCURY-RUN {token}\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 503 "), answer
    finally:
        for _, w in held:
            w.close()


def test_an_absolute_form_request_is_rewritten_for_the_origin() -> None:
    target = parse_proxy_request(
        b"POST http://example.com:8080/a/b?c=d HTTP/1.1\r\n"
        b"Host: evil.example\r\nProxy-Authorization: Basic eA==\r\n"
        b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\n"
    )
    assert (target.host, target.port) == ("example.com", 8080)
    assert target.head == (
        b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n"
    )
