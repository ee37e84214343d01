"""The host API on a real unix socket, in front of the fake model server.

Clients are aiohttp over a UnixConnector and the real anthropic/openai SDKs over an httpx2
transport bound to the socket - the way an agent's SDKs reach the host through its relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
from aiohttp import web

from mercury.api.auth import grant_of, require_permission
from mercury.api.server import SOCKET_NAME, HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import MeteredCall, UsageMeter
from mercury.config import Config, Secrets
from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn

ANTHROPIC_KEY = "sk-ant-hostkey-0123456789abcdef"
OPENAI_KEY = "sk-openai-hostkey-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]
BASE = "http://mercury"  # any host: the connection goes to the socket


def make_config(
    anthropic_url: str | None, openai_url: str | None, prices: dict[str, Any] | None = None
) -> Config:
    chain = []
    if anthropic_url is not None:
        chain.append({"provider": "anthropic", "model": "claude-test", "base_url": anthropic_url})
    if openai_url is not None:
        chain.append({"provider": "openai", "model": "gpt-test", "base_url": openai_url})
    return Config.model_validate({"model": {"chain": chain, "prices": prices or {}}})


PRICES = {
    "claude-test": {"input_per_mtok": 3.0, "output_per_mtok": 15.0},
    "gpt-test": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
}


@dataclass
class Host:
    server: HostApiServer
    tokens: TokenStore
    meter: UsageMeter
    socket: Path
    records: list[MeteredCall] = field(default_factory=list)
    _closers: list[Any] = field(default_factory=list)

    def http(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            timeout=aiohttp.ClientTimeout(total=20),
        )
        self._closers.append(session)
        return session

    def _transport(self) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(self.socket)))
        self._closers.append(client)
        return client

    def claude(self, token: str) -> anthropic.AsyncAnthropic:
        # As the agent: ANTHROPIC_BASE_URL=<relay>/model/anthropic, the run token as API key.
        return anthropic.AsyncAnthropic(
            base_url=f"{BASE}/model/anthropic",
            api_key=token,
            max_retries=0,
            timeout=20,
            http_client=self._transport(),
        )

    def gpt(self, token: str) -> openai.AsyncOpenAI:
        # As the agent: OPENAI_BASE_URL=<relay>/model/openai/v1.
        return openai.AsyncOpenAI(
            base_url=f"{BASE}/model/openai/v1",
            api_key=token,
            max_retries=0,
            timeout=20,
            http_client=self._transport(),
        )


StartHost = Callable[..., Any]


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as server:
        yield server


@pytest.fixture
async def start_host(tmp_path: Path) -> AsyncIterator[StartHost]:
    hosts: list[Host] = []

    async def start(
        config: Config,
        secrets: Secrets | None = None,
        routes: web.RouteTableDef | None = None,
    ) -> Host:
        root = tmp_path / f"api{len(hosts)}"
        tokens = TokenStore()
        meter = UsageMeter(config.model.prices)
        secrets = secrets or Secrets(anthropic_api_key=ANTHROPIC_KEY, openai_api_key=OPENAI_KEY)
        server = HostApiServer(root, tokens, config=config, secrets=secrets, meter=meter)
        if routes is not None:
            server.add_routes(routes)
        await server.start()
        # One socket for the test's calls (each run has its own in production; the tokens
        # decide who the caller is either way).
        sock = await server.open_run("test-run") / SOCKET_NAME
        host = Host(server=server, tokens=tokens, meter=meter, socket=sock)
        meter.add_hook(host.records.append)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        for client in host._closers:
            if isinstance(client, aiohttp.ClientSession):
                await client.close()
            else:
                await client.aclose()
        await host.server.stop()


@pytest.fixture
async def host(fake: FakeModelServer, start_host: StartHost) -> Host:
    return await start_host(make_config(fake.url, fake.url + "/v1", PRICES))


def _all_header_values(headers: dict[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in headers.items())


# --------------------------------------------------------------------------- auth


async def test_socket_and_directory_permissions(host: Host) -> None:
    # Without a container identity the socket is Mercury's alone (runs that need it get
    # theirs group-owned by the container's gid: test_attacks_api.py).
    assert stat.S_ISSOCK(host.socket.stat().st_mode)
    assert stat.S_IMODE(host.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(host.server.root.stat().st_mode) == 0o700


async def test_no_token_is_401(host: Host, fake: FakeModelServer) -> None:
    http = host.http()
    async with http.get(f"{BASE}/v1/whoami") as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["error"]["type"] == "authentication_error"
    assert "missing run token" in body["error"]["message"]
    async with http.post(f"{BASE}/model/anthropic/v1/messages", json={"model": "x"}) as resp:
        assert resp.status == 401
    # Nothing reached the model.
    assert fake.requests == []


async def test_unknown_token_is_401_also_through_the_sdk(host: Host, fake: FakeModelServer) -> None:
    host.tokens.mint("run-1", "space-a", "member")
    http = host.http()
    async with http.get(f"{BASE}/v1/whoami", headers={"x-api-key": "not-a-token"}) as resp:
        assert resp.status == 401
    with pytest.raises(anthropic.AuthenticationError) as exc:
        await host.claude("guessed-token").messages.create(
            model="claude-test", max_tokens=10, messages=HELLO
        )
    assert "unknown or expired run token" in str(exc.value)
    assert fake.requests == []


async def test_revoked_token_is_401(host: Host) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    http = host.http()
    async with http.get(f"{BASE}/v1/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
    host.tokens.revoke("run-1")
    async with http.get(f"{BASE}/v1/whoami", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 401


async def test_whoami_with_either_header_and_conflicting_headers(host: Host) -> None:
    token = host.tokens.mint("run-7", "space-a", "admin")
    other = host.tokens.mint("run-8", "space-a", "member")
    http = host.http()
    expected = {"run_id": "run-7", "space_id": "space-a", "role": "admin"}
    for headers in ({"Authorization": f"Bearer {token}"}, {"x-api-key": token}):
        async with http.get(f"{BASE}/v1/whoami", headers=headers) as resp:
            assert resp.status == 200
            assert await resp.json() == expected
    # Two different credentials: refused rather than guessing which one is meant.
    headers = {"Authorization": f"Bearer {token}", "x-api-key": other}
    async with http.get(f"{BASE}/v1/whoami", headers=headers) as resp:
        assert resp.status == 401


async def test_token_of_another_space_is_403(host: Host) -> None:
    token_a = host.tokens.mint("run-a", "space-a", "member")
    http = host.http()
    headers = {"x-api-key": token_a}
    async with http.get(f"{BASE}/spaces/space-b/info", headers=headers) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["type"] == "permission_error"
    async with http.get(f"{BASE}/spaces/space-a/info", headers=headers) as resp:
        assert resp.status == 200
        assert await resp.json() == {"space_id": "space-a", "run_id": "run-a"}


async def test_routes_added_by_later_features(start_host: StartHost, fake: FakeModelServer) -> None:
    routes = web.RouteTableDef()

    @routes.post("/spaces/{space_id}/notes")
    async def add_note(request: web.Request) -> web.Response:
        grant = grant_of(request)
        return web.json_response({"space": grant.space_id, "note": (await request.json())["n"]})

    @routes.get("/v1/admin-only")
    async def admin_only(request: web.Request) -> web.Response:
        return web.json_response({"role": require_permission(request, "admin").role})

    host = await start_host(make_config(fake.url, None), routes=routes)
    with pytest.raises(RuntimeError):
        host.server.add_routes(web.RouteTableDef())

    member = host.tokens.mint("run-m", "s1", "member")
    admin = host.tokens.mint("run-a", "s1", "admin")
    http = host.http()
    async with http.post(
        f"{BASE}/spaces/s1/notes", json={"n": "hi"}, headers={"x-api-key": member}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"space": "s1", "note": "hi"}
    async with http.post(
        f"{BASE}/spaces/s2/notes", json={"n": "hi"}, headers={"x-api-key": member}
    ) as resp:
        assert resp.status == 403
    async with http.get(f"{BASE}/v1/admin-only", headers={"x-api-key": member}) as resp:
        assert resp.status == 403
        assert "needs the admin permission" in (await resp.json())["error"]["message"]
    async with http.get(f"{BASE}/v1/admin-only", headers={"x-api-key": admin}) as resp:
        assert await resp.json() == {"role": "admin"}


# --------------------------------------------------------------------------- anthropic


async def test_anthropic_request_gets_through_with_the_host_key(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("Hello from the model.")], input_tokens=1000, output_tokens=500)])
    msg = await host.claude(token).messages.create(
        model="claude-test",
        max_tokens=100,
        messages=HELLO,
        extra_headers={"anthropic-beta": "tools-2099"},
        extra_query={"beta": "true"},
    )
    assert msg.content[0].text == "Hello from the model."
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (1000, 500)

    (req,) = fake.requests
    assert req.path == "/v1/messages"
    assert req.query == {"beta": "true"}
    assert req.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in req.headers
    assert token not in _all_header_values(req.headers)
    assert req.headers["anthropic-beta"] == "tools-2099"
    assert "anthropic-version" in req.headers
    assert req.body["messages"] == HELLO

    run = host.meter.for_run("run-1")
    assert (run.requests, run.input_tokens, run.output_tokens) == (1, 1000, 500)
    assert run.cost_usd == pytest.approx(0.0105)
    assert [(r.run_id, r.space_id, r.model) for r in host.records] == [
        ("run-1", "space-a", "claude-test")
    ]


async def test_anthropic_stream_with_tool_use_gets_through(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script(
        [
            Turn(
                [Text("Checking the files now."), ToolCall("bash", {"command": "ls /space"})],
                input_tokens=40,
                output_tokens=20,
            )
        ]
    )
    async with host.claude(token).messages.stream(
        model="claude-test", max_tokens=100, messages=HELLO
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Checking the files now."
    tool = final.content[1]
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert tool.input == {"command": "ls /space"}
    assert final.stop_reason == "tool_use"
    assert fake.requests[0].headers["x-api-key"] == ANTHROPIC_KEY
    # Usage from message_start (input) and message_delta (output) of the stream.
    run = host.meter.for_run("run-1")
    assert (run.input_tokens, run.output_tokens) == (40, 20)
    assert run.cost_usd == pytest.approx((40 * 3 + 20 * 15) / 1e6)


async def test_raw_stream_bytes_and_headers_pass_through(host: Host, fake: FakeModelServer) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Text("a b")])
    http = host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO, "stream": True},
        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["request-id"].startswith("req_")
        raw = await resp.read()
    events = [line[7:] for line in raw.decode().splitlines() if line.startswith("event: ")]
    assert events == [name for _, name in fake.requests[0].events]


async def test_incoming_credentials_never_reach_the_upstream(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Text("a"), Text("b")])
    extra = {"Cookie": "session=abc", "Proxy-Authorization": "Basic Zm9vOmJhcg=="}
    http = host.http()
    # The token in the header the other provider would use, plus stray credentials.
    async with http.post(
        f"{BASE}/model/openai/v1/chat/completions",
        json={"model": "gpt-test", "messages": HELLO},
        headers={"x-api-key": token, **extra},
    ) as resp:
        assert resp.status == 200
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
        headers={"Authorization": f"Bearer {token}", **extra},
    ) as resp:
        assert resp.status == 200
    to_openai, to_anthropic = (r.headers for r in fake.requests)
    assert to_openai["authorization"] == f"Bearer {OPENAI_KEY}"
    assert to_anthropic["x-api-key"] == ANTHROPIC_KEY
    for headers in (to_openai, to_anthropic):
        assert token not in _all_header_values(headers)
        assert "cookie" not in headers and "proxy-authorization" not in headers
    assert "x-api-key" not in to_openai
    assert "authorization" not in to_anthropic


# --------------------------------------------------------------------------- openai


async def test_openai_request_gets_through_with_the_host_key(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-2", "space-b", "member")
    fake.script([[ToolCall("bash", {"command": "date"})]])
    out = await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    calls = out.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("bash", {"command": "date"})
    ]
    (req,) = fake.requests
    # <relay>/model/openai/v1/chat/completions -> <base_url ending in /v1>/chat/completions
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "x-api-key" not in req.headers
    assert token not in _all_header_values(req.headers)
    run = host.meter.for_run("run-2")
    assert (run.input_tokens, run.output_tokens) == (10, 5)
    assert run.cost_usd == pytest.approx((10 * 1 + 5 * 2) / 1e6)


async def test_openai_stream_gets_through_and_is_metered(host: Host, fake: FakeModelServer) -> None:
    token = host.tokens.mint("run-2", "space-b", "member")
    fake.script([Turn([Text("streamed words here")], input_tokens=33, output_tokens=3)])
    stream = await host.gpt(token).chat.completions.create(
        model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == "streamed words here"
    assert fake.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    run = host.meter.for_run("run-2")
    assert (run.requests, run.input_tokens, run.output_tokens) == (1, 33, 3)


async def test_no_key_configured_sends_no_credentials(
    start_host: StartHost, fake: FakeModelServer
) -> None:
    # An Ollama-style upstream: no key at all, and the run token must not leak either.
    host = await start_host(make_config(None, fake.url + "/v1"), Secrets())
    token = host.tokens.mint("run-3", "space-c", "member")
    fake.script([Text("local model")])
    out = await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    assert out.choices[0].message.content == "local model"
    headers = fake.requests[0].headers
    assert "authorization" not in headers and "x-api-key" not in headers
    assert token not in _all_header_values(headers)
    # Unpriced model: tokens counted, no cost.
    run = host.meter.for_run("run-3")
    assert (run.input_tokens, run.cost_usd, run.unpriced_requests) == (10, None, 1)


# --------------------------------------------------------------------------- streaming


async def test_stream_is_passed_through_unbuffered(host: Host, fake: FakeModelServer) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("one two three four")], event_delay=0.3)])
    http = host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO, "stream": True},
        headers={"x-api-key": token},
    ) as resp:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        first_at = time.monotonic()
        rest = await resp.read()
    assert first.startswith(b"event: message_start")
    assert rest.rstrip().endswith(b'data: {"type": "message_stop"}')
    sent = fake.requests[0].events
    assert len(sent) >= 8
    # The first event reached the client before the fake had even sent its third one,
    # and long before the last: nothing in between holds the stream back.
    assert first_at < sent[2][0]
    assert first_at < sent[-1][0] - 1.0


async def test_sdk_sees_stream_events_as_they_are_sent(host: Host, fake: FakeModelServer) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("alpha beta gamma delta")], event_delay=0.25)])
    async with host.claude(token).messages.stream(
        model="claude-test", max_tokens=100, messages=HELLO
    ) as stream:
        async for _ in stream.text_stream:
            first_text_at = time.monotonic()
            break
        final = await stream.get_final_message()
    assert final.content[0].text == "alpha beta gamma delta"
    stop_sent = fake.requests[0].events[-1][0]
    assert first_text_at < stop_sent - 0.5


async def test_upstream_cut_mid_stream_cuts_the_client_too(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("partial answer that never ends")], drop_after=4)])
    # A cleanly terminated but truncated stream would pass for a shorter, complete answer.
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)):
        async with host.claude(token).messages.stream(
            model="claude-test", max_tokens=100, messages=HELLO
        ) as stream:
            await stream.get_final_message()
    assert fake.requests[0].outcome == "dropped"
    # The tokens spent so far are still metered (message_start's input and provisional output).
    run = host.meter.for_run("run-1")
    assert (run.requests, run.input_tokens, run.output_tokens) == (1, 10, 1)

    fake.script([Turn([Text("x y z")], drop_after=3)])
    http = host.http()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            f"{BASE}/model/openai/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO, "stream": True},
            headers={"x-api-key": token},
        ) as resp:
            await resp.read()


# --------------------------------------------------------------------------- usage


async def test_usage_per_run_and_per_space(host: Host, fake: FakeModelServer) -> None:
    t1 = host.tokens.mint("run-1", "space-a", "member")
    t2 = host.tokens.mint("run-2", "space-a", "member")
    t3 = host.tokens.mint("run-3", "space-b", "member")
    fake.script(
        [
            Turn([Text("1")], input_tokens=100, output_tokens=10),
            Turn([Text("2")], input_tokens=200, output_tokens=20),
            Turn([Text("3")], input_tokens=300, output_tokens=30),
            Turn([Text("4")], input_tokens=400, output_tokens=40),
        ]
    )
    await host.claude(t1).messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    await host.gpt(t1).chat.completions.create(model="gpt-test", messages=HELLO)
    await host.claude(t2).messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    stream = await host.gpt(t3).chat.completions.create(
        model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    async for _ in stream:
        pass

    r1 = host.meter.for_run("run-1")
    assert (r1.requests, r1.input_tokens, r1.output_tokens) == (2, 300, 30)
    assert r1.cost_usd == pytest.approx((100 * 3 + 10 * 15 + 200 * 1 + 20 * 2) / 1e6)
    a = host.meter.for_space("space-a")
    assert (a.requests, a.input_tokens, a.output_tokens) == (3, 600, 60)
    b = host.meter.for_space("space-b")
    assert (b.requests, b.input_tokens, b.output_tokens) == (1, 400, 40)
    assert b.cost_usd == pytest.approx((400 * 1 + 40 * 2) / 1e6)
    assert sorted(r.run_id for r in host.records) == ["run-1", "run-1", "run-2", "run-3"]


# --------------------------------------------------------------------------- errors


async def test_upstream_error_statuses_and_bodies_pass_through(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Error(529, "Overloaded right now"), Error(529), Error(401, "invalid api key")])
    http = host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
        headers={"x-api-key": token},
    ) as resp:
        assert resp.status == 529
        assert await resp.json() == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded right now"},
        }
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await host.claude(token).messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"

    with pytest.raises(openai.AuthenticationError) as denied:
        await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    assert denied.value.status_code == 401
    assert denied.value.code == "invalid_api_key"
    assert "invalid api key" in str(denied.value)
    # Failed calls are metered too: no tokens, each with its status.
    run = host.meter.for_run("run-1")
    assert (run.requests, run.failed_requests, run.input_tokens, run.output_tokens) == (3, 3, 0, 0)
    assert [r.status for r in host.records] == [529, 529, 401]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_down_is_502_naming_the_host_without_the_key(
    start_host: StartHost,
) -> None:
    port = _closed_port()
    down = f"http://127.0.0.1:{port}"
    host = await start_host(make_config(down, down + "/v1"))
    token = host.tokens.mint("run-1", "space-a", "member")
    http = host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
        headers={"x-api-key": token},
    ) as resp:
        assert resp.status == 502
        raw = await resp.text()
    body = json.loads(raw)
    assert body["error"]["type"] == "upstream_unreachable"
    assert f"127.0.0.1:{port}" in body["error"]["message"]
    for secret in (ANTHROPIC_KEY, OPENAI_KEY, token):
        assert secret not in raw
    with pytest.raises(openai.InternalServerError) as exc:
        await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    assert exc.value.status_code == 502
    assert OPENAI_KEY not in str(exc.value)


async def test_provider_without_a_leg_is_404(start_host: StartHost, fake: FakeModelServer) -> None:
    host = await start_host(make_config(fake.url, None))
    token = host.tokens.mint("run-1", "space-a", "member")
    with pytest.raises(openai.NotFoundError) as exc:
        await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    assert "no openai model is configured in model.chain" in str(exc.value)
    assert fake.requests == []


async def test_non_model_endpoints_are_refused(host: Host, fake: FakeModelServer) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    http = host.http()
    for path in ("/model/anthropic/v1/files", "/model/openai/v1/organization/admin_api_keys"):
        async with http.get(f"{BASE}{path}", headers={"x-api-key": token}) as resp:
            assert resp.status == 403, path
            assert "only model endpoints" in (await resp.json())["error"]["message"]
    assert fake.requests == []


async def test_leg_is_chosen_by_the_requested_model(start_host: StartHost) -> None:
    async with FakeModelServer() as first, FakeModelServer() as second:
        config = Config.model_validate(
            {
                "model": {
                    "chain": [
                        {"provider": "anthropic", "model": "claude-a", "base_url": first.url},
                        {"provider": "anthropic", "model": "claude-b", "base_url": second.url},
                    ],
                    "allowed": ["claude-haiku"],
                }
            }
        )
        host = await start_host(config)
        token = host.tokens.mint("run-1", "space-a", "member")
        first.script([Text("from first"), Text("first again")])
        second.script([Text("from second")])
        claude = host.claude(token)

        async def ask(model: str) -> str:
            msg = await claude.messages.create(model=model, max_tokens=5, messages=HELLO)
            return msg.content[0].text

        assert await ask("claude-b") == "from second"
        assert await ask("claude-a") == "from first"
        # Not in the chain but in model.allowed (an agent CLI's small model): the
        # provider's first leg.
        assert await ask("claude-haiku") == "first again"
        assert [r.model for r in first.requests] == ["claude-a", "claude-haiku"]
        assert [r.model for r in second.requests] == ["claude-b"]


async def test_stop_removes_the_sockets_and_a_restart_serves_again(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    await host.server.stop()
    assert not host.socket.exists() and not host.socket.parent.exists()
    # A folder left by a crashed process is removed by remove_stale (mercury run's start).
    stale = host.server.root / "dead-run"
    stale.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale / SOCKET_NAME))
    dead.close()
    assert host.server.remove_stale() == 1
    assert not stale.exists()
    await host.server.start()
    host.socket = await host.server.open_run("run-1") / SOCKET_NAME
    http = host.http()
    async with http.get(f"{BASE}/v1/whoami", headers={"x-api-key": token}) as resp:
        assert resp.status == 200
    await host.server.close_run("run-1")
    assert not host.socket.parent.exists()


async def test_an_api_root_that_is_a_regular_file_is_not_touched(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    path = tmp_path / "api"
    path.write_text("precious")
    server = HostApiServer(
        path,
        TokenStore(),
        config=make_config(fake.url, None),
        secrets=Secrets(),
        meter=UsageMeter(),
    )
    with pytest.raises(RuntimeError, match="not a folder"):
        await server.start()
    await server.stop()
    assert path.read_text() == "precious"


# --------------------------------------------------------------------------- defences
# Each test below reproduces one attack of a hostile agent on the model proxy (or one way
# metering lost calls) and checks it no longer gets through.


class Upstream:
    """A catch-all upstream on 127.0.0.1: records every request, answers with `answer`."""

    def __init__(self, answer: Callable[[web.Request], Any] | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.answer = answer
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((request.method, request.raw_path, headers))
        if self.answer is not None:
            return await self.answer(request)
        return web.json_response(
            {"model": "claude-test", "usage": {"input_tokens": 3, "output_tokens": 4}}
        )

    async def __aenter__(self) -> Upstream:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def raw_request(
    sock: Path, method: str, target: str, token: str, body: bytes = b""
) -> tuple[int, dict[str, Any] | None]:
    """Send exactly `method target` (no client-side normalisation or quoting) over the
    socket; the status and the JSON body, if any."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: mercury\r\nx-api-key: {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    _, _, payload = data.partition(b"\r\n\r\n")
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for `condition` (bounded; no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


@pytest.fixture
async def open_host(upstream: Upstream, start_host: StartHost) -> Host:
    """A host whose both providers go to the catch-all upstream."""
    return await start_host(make_config(upstream.url, upstream.url + "/v1"))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/model/openai/v1/models/ft:gpt-4o-mini:acme::abc123"),
        ("DELETE", "/model/openai/models/ft:gpt-4o-mini:acme::abc123"),
        ("GET", "/model/openai/v1/chat/completions"),  # lists stored completions
        ("GET", "/model/openai/v1/chat/completions/chatcmpl-1/messages"),
        ("DELETE", "/model/openai/v1/chat/completions/chatcmpl-1"),
        ("GET", "/model/openai/v1/responses/resp_1"),
        ("DELETE", "/model/openai/v1/responses/resp_1"),
        ("GET", "/model/openai/v1/responses/resp_1/input_items"),
        ("GET", "/model/openai/v1/files"),
        ("POST", "/model/openai/v1/batches"),
        ("POST", "/model/openai/v1/fine_tuning/jobs"),
        ("GET", "/model/anthropic/v1/messages/batches"),
        ("DELETE", "/model/anthropic/v1/files/file_1"),
        ("PUT", "/model/anthropic/v1/messages"),
    ],
)
async def test_other_methods_and_paths_are_refused_with_the_key_unused(
    open_host: Host, upstream: Upstream, method: str, path: str
) -> None:
    token = open_host.tokens.mint("run-1", "space-a", "member")
    http = open_host.http()
    async with http.request(
        method, f"{BASE}{path}", json={"model": "gpt-test"}, headers={"x-api-key": token}
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
    assert body["error"]["type"] == "permission_error"
    assert f"does not forward {method} /{path.split('/', 3)[3]}" in body["error"]["message"]
    assert upstream.requests == []
    assert open_host.records == []


@pytest.mark.parametrize(
    "target",
    [
        "/model/anthropic/v1/models/%2e%2e/files",
        "/model/anthropic/v1/models/%2E%2E%2Ffiles",
        "/model/anthropic/v1/models/x%2f..%2f..%2fv1%2ffiles",
        "/model/anthropic/v1/models/x%5c..%5cfiles",
        "/model/anthropic/v1/models/x%252e%252e",
        "/model/openai/v1/models/x%00",
        "/model/anthropic/v1/models/x\\..\\..\\v1\\files",
        "/model/anthropic/v1/models/../../v1/files",
        "/model/anthropic/v1//messages",
        "/model/openai/v1/./chat/completions",
        "/model/anthropic/v1/models/",
    ],
)
async def test_encoded_and_odd_paths_are_refused(
    open_host: Host, upstream: Upstream, target: str
) -> None:
    token = open_host.tokens.mint("run-1", "space-a", "member")
    method = "POST" if "messages" in target or "completions" in target else "GET"
    body = json.dumps({"model": "claude-test"}).encode() if method == "POST" else b""
    status, payload = await raw_request(open_host.socket, method, target, token, body)
    assert status == 403, (target, status, payload)
    assert payload is not None and "model proxy refuses paths" in payload["error"]["message"]
    assert upstream.requests == []


async def test_only_allow_listed_headers_reach_the_upstream(
    open_host: Host, upstream: Upstream
) -> None:
    token = open_host.tokens.mint("run-1", "space-a", "member")
    sent = {
        "Authorization": f"Bearer {token}",
        "OpenAI-Organization": "org-victim",
        "OpenAI-Project": "proj_other",
        "Anthropic-Organization-Id": "other-org",
        "X-Forwarded-For": "10.0.0.1",
        "X-Real-IP": "10.0.0.1",
        "X-HTTP-Method-Override": "DELETE",
        "Cookie": "s=1",
        "X-Custom": "anything",
        "OpenAI-Beta": "assistants=v2",
        "X-Stainless-Lang": "python",
        "Idempotency-Key": "k1",
        "User-Agent": "OpenAI/Python 1.0",
    }
    http = open_host.http()
    async with http.post(
        f"{BASE}/model/openai/v1/chat/completions", json={"model": "gpt-test"}, headers=sent
    ) as resp:
        assert resp.status == 200
    ((_, path, got),) = upstream.requests
    assert path == "/v1/chat/completions"
    assert got["authorization"] == f"Bearer {OPENAI_KEY}"
    for dropped in (
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
        "x-forwarded-for",
        "x-real-ip",
        "x-http-method-override",
        "cookie",
        "x-custom",
    ):
        assert dropped not in got, dropped
    assert token not in _all_header_values(got)
    assert got["openai-beta"] == "assistants=v2"
    assert got["x-stainless-lang"] == "python"
    assert got["idempotency-key"] == "k1"
    assert got["user-agent"] == "OpenAI/Python 1.0"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed_and_the_key_goes_nowhere_else(
    start_host: StartHost, status: int
) -> None:
    async with Upstream() as elsewhere:

        async def redirect(_request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": f"{elsewhere.url}/v1/messages"})

        async with Upstream(redirect) as first:
            host = await start_host(make_config(first.url, first.url + "/v1"))
            token = host.tokens.mint("run-1", "space-a", "member")
            http = host.http()
            async with http.post(
                f"{BASE}/model/anthropic/v1/messages",
                json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
                headers={"x-api-key": token},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 502
                assert "Location" not in resp.headers
                raw = await resp.text()
            assert "does not follow redirects" in json.loads(raw)["error"]["message"]
            assert str(elsewhere.port) not in raw
            assert len(first.requests) == 1
            assert first.requests[0][2]["x-api-key"] == ANTHROPIC_KEY
    # The other loopback port never saw a request, so never the key.
    assert elsewhere.requests == []
    (rec,) = host.records
    assert (rec.status, rec.input_tokens, rec.incomplete) == (status, 0, False)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "claude-opus-4-1", "max_tokens": 5}, 403, "'claude-opus-4-1' is not allowed"),
        ({"model": "gpt-test", "max_tokens": 5}, 403, "'gpt-test' is not allowed"),
        ({"max_tokens": 5}, 403, "names no model"),
        ({"model": None}, 403, "names no model"),
        ({"model": ["claude-test"]}, 403, "names no model"),
        ([{"model": "claude-test"}], 403, "names no model"),
        (b"model=claude-test", 400, "not a JSON object"),
        (b"", 400, "not a JSON object"),
        (b'{"model": "claude-test", "model": "claude-opus-4-1"}', 400, "duplicate key"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not a JSON object"),
    ],
)
async def test_only_allowed_models_are_called(
    open_host: Host, upstream: Upstream, body: Any, status: int, says: str
) -> None:
    token = open_host.tokens.mint("run-1", "space-a", "member")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    http = open_host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        data=data,
        headers={"x-api-key": token, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == status
        message = (await resp.json())["error"]["message"]
    assert says in message
    if status == 403:
        assert "model.allowed" in message
    assert upstream.requests == []


async def test_model_check_on_big_bodies_and_model_allowed(
    start_host: StartHost, upstream: Upstream
) -> None:
    config = make_config(upstream.url, upstream.url + "/v1")
    config.model.allowed = ["claude-haiku-4-5"]
    host = await start_host(config)
    token = host.tokens.mint("run-1", "space-a", "member")
    http = host.http()
    big = "x" * (3 * 1024**2)  # parsed off the event loop
    for model, status in (("claude-opus-4-1", 403), ("claude-haiku-4-5", 200)):
        async with http.post(
            f"{BASE}/model/anthropic/v1/messages",
            json={"model": model, "messages": [{"role": "user", "content": big}]},
            headers={"x-api-key": token},
        ) as resp:
            assert resp.status == status, model
    assert [(m, p) for m, p, _ in upstream.requests] == [("POST", "/v1/messages")]
    # The SDK's own model call and listing work.
    fake_models = await host.claude(token).models.list()
    assert fake_models is not None
    assert [p for _, p, _ in upstream.requests][-1] == "/v1/models"


# --------------------------------------------------------------------------- metering


async def test_three_calls_three_records_whatever_their_outcome(
    host: Host, fake: FakeModelServer
) -> None:
    """The run that lost one call in three: a plain one, a failed one and a stream still
    going when the run ended. Every one is a record now, and in the run's totals."""
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("ok")], input_tokens=100, output_tokens=10)], model="claude-test")
    fake.script([Error(500)], model="gpt-test")
    fake.script(
        [Turn([Text("a long answer " * 50)], input_tokens=70, event_delay=0.05)],
        model="claude-test",
    )
    await host.claude(token).messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    http = host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO, "stream": True},
        headers={"x-api-key": token},
    ) as resp:
        await resp.content.readuntil(b"\n\n")  # the stream is under way
        host.tokens.revoke("run-1")
        await host.server.proxy.close_run("run-1")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # cut, not cleanly ended
    totals = host.meter.pop_run("run-1")
    assert (totals.requests, totals.failed_requests, totals.incomplete_requests) == (3, 1, 1)
    assert totals.input_tokens == 170
    statuses = sorted((r.status, r.incomplete) for r in host.records)
    assert statuses == [(200, False), (200, True), (500, False)]
    # The provider was told to stop: the stream ended long before its last event.
    streamed = fake.requests[-1]
    assert streamed.events[-1][1] != "message_stop"


async def test_close_run_cancels_a_call_waiting_for_its_answer_and_waits_for_hooks(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    stored: list[MeteredCall] = []

    async def slow_store(rec: MeteredCall) -> None:
        await asyncio.sleep(0.2)
        stored.append(rec)

    host.meter.add_hook(slow_store)
    fake.script([Turn([Text("late")], delay=3)])
    http = host.http()
    call = asyncio.create_task(
        http.post(
            f"{BASE}/model/anthropic/v1/messages",
            json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
            headers={"x-api-key": token},
        )
    )
    await until(lambda: len(fake.requests) == 1, "the call to reach the upstream")
    assert host.server.proxy.in_flight("run-1") == 1
    await host.server.proxy.close_run("run-1")
    # Returned only once the call was recorded and its hook had stored it.
    assert host.server.proxy.in_flight("run-1") == 0
    assert [(r.status, r.incomplete) for r in stored] == [(None, True)]
    assert host.meter.pop_run("run-1").requests == 1
    with pytest.raises(aiohttp.ClientError):
        await call
    # Nothing in flight: returns at once, and again.
    await host.server.proxy.close_run("run-1")
    await host.server.proxy.close_run("no-such-run")


async def test_close_run_leaves_other_runs_alone(host: Host, fake: FakeModelServer) -> None:
    mine = host.tokens.mint("run-1", "space-a", "member")
    other = host.tokens.mint("run-2", "space-a", "member")
    fake.script([Turn([Text("slow")], delay=0.5)], model="claude-test")
    fake.script([Turn([Text("never")], delay=3)], model="gpt-test")
    stays = asyncio.create_task(
        host.claude(other).messages.create(model="claude-test", max_tokens=5, messages=HELLO)
    )
    ends = asyncio.create_task(
        host.gpt(mine).chat.completions.create(model="gpt-test", messages=HELLO)
    )
    await until(lambda: len(fake.requests) == 2, "both calls upstream")
    await host.server.proxy.close_run("run-1")
    assert (await stays).content[0].text == "slow"
    with pytest.raises(openai.APIConnectionError):
        await ends
    assert host.meter.for_run("run-2").requests == 1
    assert host.meter.for_run("run-1").incomplete_requests == 1


async def test_stop_cuts_every_call_in_flight_and_meters_each(
    start_host: StartHost, fake: FakeModelServer
) -> None:
    """Shutdown with model calls of two runs in flight - one waiting for its answer, one
    mid-stream, one mid-way through a JSON answer - and an idle connection: stop() waits
    for none of them, each call is cut (the provider sees its connection closed) and each
    is metered once, as incomplete."""
    host = await start_host(make_config(fake.url, fake.url + "/v1", PRICES))
    other = await host.server.open_run("run-2") / SOCKET_NAME
    mine = host.tokens.mint("test-run", "space-a", "member")
    theirs = host.tokens.mint("run-2", "space-b", "member")
    fake.script([Turn([Text("never")], delay=300)], model="gpt-test")
    fake.script(
        [
            Turn([Text("word " * 500)], input_tokens=33, event_delay=0.2),
            Turn([Text("slow " * 300)], body_delay=5),
        ],
        model="claude-test",
    )
    http = host.http()
    http2 = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(other)))
    host._closers.append(http2)
    async with http2.get(f"{BASE}/v1/whoami", headers={"x-api-key": theirs}) as resp:
        assert resp.status == 200  # its connection stays open, idle (keep-alive)
    waiting = asyncio.create_task(
        http2.post(
            f"{BASE}/model/openai/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO},
            headers={"x-api-key": theirs},
        )
    )
    stream = await http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO, "stream": True},
        headers={"x-api-key": mine},
    )
    await stream.content.readuntil(b"\n\n")  # the stream is under way
    slow_json = asyncio.create_task(
        http.post(
            f"{BASE}/model/anthropic/v1/messages",
            json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
            headers={"x-api-key": mine},
        )
    )
    await until(lambda: len(fake.requests) == 3, "three calls upstream")
    json_call = next(r for r in fake.requests if r.model == "claude-test" and not r.stream)
    await until(lambda: json_call.outcome == "turn", "the JSON answer to begin")

    await asyncio.wait_for(host.server.stop(), timeout=10)  # bounded: fails if it waits

    await until(lambda: all(r.closed_at is not None for r in fake.requests), "every call cut")
    assert sorted((r.status or 0, r.incomplete) for r in host.records) == [
        (0, True),
        (200, True),
        (200, True),
    ]
    assert host.meter.pop_run("test-run").input_tokens == 33  # what the stream reported
    assert host.meter.pop_run("run-2").requests == 1
    for task in (waiting, slow_json):
        with contextlib.suppress(aiohttp.ClientError):
            resp = await task
            with pytest.raises(aiohttp.ClientError):
                await resp.read()  # headers came, the body was cut
    with pytest.raises(aiohttp.ClientError):
        await stream.read()


async def test_unreachable_upstream_is_metered(start_host: StartHost) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    host = await start_host(make_config(down, down + "/v1"))
    token = host.tokens.mint("run-1", "space-a", "member")
    with pytest.raises(openai.InternalServerError):
        await host.gpt(token).chat.completions.create(model="gpt-test", messages=HELLO)
    (rec,) = host.records
    assert (rec.status, rec.incomplete, rec.input_tokens, rec.model) == (None, True, 0, "gpt-test")


async def test_cut_by_the_upstream_is_metered_once(host: Host, fake: FakeModelServer) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("x y z")], drop_after=3)])
    http = host.http()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(
            f"{BASE}/model/openai/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO, "stream": True},
            headers={"x-api-key": token},
        ) as resp:
            await resp.read()
    await until(lambda: len(host.records) == 1, "the record")
    (rec,) = host.records
    assert (rec.status, rec.incomplete) == (200, True)


async def test_agent_going_away_mid_stream_stops_the_upstream_and_is_metered(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("word " * 200)], input_tokens=55, event_delay=0.05)])
    http = host.http()
    async with http.post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO, "stream": True},
        headers={"x-api-key": token},
    ) as resp:
        await resp.content.readuntil(b"\n\n")
        resp.connection.transport.close()  # the agent goes away
    await until(lambda: len(host.records) == 1, "the record")
    (rec,) = host.records
    assert (rec.status, rec.incomplete, rec.input_tokens) == (200, True, 55)
    assert host.server.proxy.in_flight("run-1") == 0
    # The proxy closed the upstream: the fake could not finish its 200-word stream.
    await until(lambda: fake.requests[0].outcome != "", "the fake's stream to end")
    assert fake.requests[0].events[-1][1] != "message_stop"


async def test_agent_going_away_before_a_json_answer_still_meters_its_tokens(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    fake.script([Turn([Text("slow answer")], input_tokens=40, output_tokens=9, delay=0.5)])
    with pytest.raises(TimeoutError):  # the agent gives up and closes its connection
        await host.http().post(
            f"{BASE}/model/anthropic/v1/messages",
            json={"model": "claude-test", "max_tokens": 5, "messages": HELLO},
            headers={"x-api-key": token},
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    await until(lambda: len(host.records) == 1, "the record")
    (rec,) = host.records
    assert (rec.input_tokens, rec.output_tokens, rec.incomplete) == (40, 9, True)


async def test_json_answer_over_the_old_buffer_cap_is_metered(start_host: StartHost) -> None:
    filler = b"a" * (17 * 1024**2)

    async def huge(_request: web.Request) -> web.Response:
        body = (
            b'{"id": "chatcmpl-1", "model": "gpt-test", "choices": [{"index": 0, "message": '
            b'{"role": "assistant", "content": "' + filler + b'"}}], '
            b'"usage": {"prompt_tokens": 11, "completion_tokens": 22}}'
        )
        return web.Response(body=body, content_type="application/json")

    async with Upstream(huge) as big:
        host = await start_host(make_config(None, big.url + "/v1"))
        token = host.tokens.mint("run-1", "space-a", "member")
        http = host.http()
        async with http.post(
            f"{BASE}/model/openai/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO},
            headers={"x-api-key": token},
        ) as resp:
            assert len(await resp.read()) > len(filler)
    (rec,) = host.records
    assert (rec.input_tokens, rec.output_tokens, rec.incomplete) == (11, 22, False)
