"""The host API on a real unix socket, in front of the fake model server.

Clients are aiohttp over a UnixConnector and the real anthropic/openai SDKs over an httpx2
transport bound to the socket - the way an agent's SDKs reach the host through its relay.
"""

from __future__ import annotations

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

from mercury.api.auth import grant_of, require_role
from mercury.api.server import HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter, UsageRecord
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
    records: list[UsageRecord] = field(default_factory=list)
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
        sock = tmp_path / f"api{len(hosts)}" / "api.sock"
        tokens = TokenStore()
        meter = UsageMeter(config.model.prices)
        secrets = secrets or Secrets(anthropic_api_key=ANTHROPIC_KEY, openai_api_key=OPENAI_KEY)
        server = HostApiServer(sock, tokens, config=config, secrets=secrets, meter=meter)
        if routes is not None:
            server.add_routes(routes)
        host = Host(server=server, tokens=tokens, meter=meter, socket=sock)
        meter.add_hook(host.records.append)
        await server.start()
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
    assert stat.S_ISSOCK(host.socket.stat().st_mode)
    assert stat.S_IMODE(host.socket.stat().st_mode) == 0o666
    assert stat.S_IMODE(host.socket.parent.stat().st_mode) == 0o755


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
        return web.json_response({"role": require_role(request, "admin").role})

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
        assert "needs role admin" in (await resp.json())["error"]["message"]
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
    out = await host.gpt(token).chat.completions.create(model="llama3", messages=HELLO)
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
    # Failed calls cost nothing.
    assert host.meter.for_run("run-1").requests == 0


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
                    ]
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
        # Not in the chain (e.g. an agent CLI's small model): the provider's first leg.
        assert await ask("claude-haiku") == "first again"
        assert [r.model for r in first.requests] == ["claude-a", "claude-haiku"]
        assert [r.model for r in second.requests] == ["claude-b"]


async def test_stop_removes_the_socket_and_restart_reuses_the_path(
    host: Host, fake: FakeModelServer
) -> None:
    token = host.tokens.mint("run-1", "space-a", "member")
    await host.server.stop()
    assert not host.socket.exists()
    # A stale socket file left by a crashed process is replaced on start.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(host.socket))
    stale.close()
    await host.server.start()
    http = host.http()
    async with http.get(f"{BASE}/v1/whoami", headers={"x-api-key": token}) as resp:
        assert resp.status == 200


async def test_socket_path_that_is_a_regular_file_is_not_deleted(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    path = tmp_path / "api.sock"
    path.write_text("precious")
    server = HostApiServer(
        path,
        TokenStore(),
        config=make_config(fake.url, None),
        secrets=Secrets(),
        meter=UsageMeter(),
    )
    with pytest.raises(RuntimeError, match="not a socket"):
        await server.start()
    await server.stop()
    assert path.read_text() == "precious"
