"""What the model writes, observed in the host's model proxy while it streams (issue 13).

The real host (`RunHost`: host API server, tokens, meter) on a run's unix socket, in front
of the fake model server; the agent's side is the real anthropic/openai SDKs (or raw
aiohttp) over that socket. A hook registered with `RunHost.add_stream_hook` records every
event with the monotonic time it came, to compare its order with the fake's token times.
"""

from __future__ import annotations

import asyncio
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
import structlog
from aiohttp import web

from mercury.api.runhost import RunHost
from mercury.api.server import SOCKET_NAME
from mercury.api.stream_events import (
    CallEnded,
    CallStarted,
    StreamEvent,
    TextDelta,
    ToolCall,
)
from mercury.api.usage import MeteredCall
from mercury.config import Config, Secrets
from tests.fakes import model_server as fm

BASE = "http://mercury"  # any host: the connection goes to the socket
HELLO = [{"role": "user", "content": "hello"}]
REPLY = "The answer, as far as the model can tell, is forty-two. Ünïcödé 🌍 too."


@dataclass
class Seen:
    """What the hooks were told: (run_id, event, time.monotonic()) in order."""

    events: list[tuple[str, StreamEvent, float]] = field(default_factory=list)

    def __call__(self, run_id: str, event: StreamEvent) -> None:
        self.events.append((run_id, event, time.monotonic()))

    def of(self, run_id: str) -> list[StreamEvent]:
        return [e for r, e, _ in self.events if r == run_id]

    def text(self, run_id: str) -> str:
        return "".join(e.text for e in self.of(run_id) if isinstance(e, TextDelta))

    def calls(self, run_id: str) -> list[list[StreamEvent]]:
        """The run's events cut into model calls: each from CallStarted to CallEnded."""
        calls: list[list[StreamEvent]] = []
        for event in self.of(run_id):
            if isinstance(event, CallStarted):
                calls.append([])
            assert calls, f"{event!r} before any CallStarted"
            calls[-1].append(event)
        return calls


def shape(call: list[StreamEvent]) -> list[StreamEvent]:
    """A call's events with its text deltas joined into one (they come split by chunk)."""
    out: list[StreamEvent] = []
    for event in call:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + event.text)
        else:
            out.append(event)
    return out


@dataclass
class Rig:
    host: RunHost
    seen: Seen
    records: list[MeteredCall]
    _closers: list[Any] = field(default_factory=list)

    async def run(self, run_id: str) -> tuple[str, Path]:
        access = await self.host.open_run(run_id, "space-a", "member")
        return access.token, access.socket_dir / SOCKET_NAME

    def http(self, sock: Path) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(sock)),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._closers.append(session)
        return session

    def _transport(self, sock: Path) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(sock)))
        self._closers.append(client)
        return client

    def claude(self, token: str, sock: Path) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=f"{BASE}/model/anthropic",
            api_key=token,
            max_retries=0,
            timeout=30,
            http_client=self._transport(sock),
        )

    def gpt(self, token: str, sock: Path) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{BASE}/model/openai/v1",
            api_key=token,
            max_retries=0,
            timeout=30,
            http_client=self._transport(sock),
        )


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for `condition` (bounded; no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> AsyncIterator[fm.FakeModelServer]:
    async with fm.FakeModelServer() as server:
        yield server


async def start_rig(tmp_path: Path, anthropic_url: str, openai_url: str) -> Rig:
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "model": {
                "chain": [
                    {"provider": "anthropic", "model": "claude-test", "base_url": anthropic_url},
                    {"provider": "openai", "model": "gpt-test", "base_url": openai_url},
                ]
            },
        }
    )
    host = RunHost(config, Secrets(anthropic_api_key="sk-ant-k", openai_api_key="sk-oai-k"))
    rig = Rig(host, Seen(), [])
    host.add_stream_hook(rig.seen)
    host.meter.add_hook(rig.records.append)
    await host.start()
    return rig


@pytest.fixture
async def rig(tmp_path: Path, fake: fm.FakeModelServer) -> AsyncIterator[Rig]:
    rig = await start_rig(tmp_path, fake.url, fake.url + "/v1")
    yield rig
    for client in rig._closers:
        if isinstance(client, aiohttp.ClientSession):
            await client.close()
        else:
            await client.aclose()
    await rig.host.stop()


async def ask(rig: Rig, provider: str, token: str, sock: Path) -> tuple[str, list[str]]:
    """One streamed model call through the SDK, as the agent makes it: (text, tool names)."""
    if provider == "anthropic":
        async with rig.claude(token, sock).messages.stream(
            model="claude-test", max_tokens=100, messages=HELLO
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        return text, [b.name for b in final.content if isinstance(b, anthropic.types.ToolUseBlock)]
    chunks = await rig.gpt(token, sock).chat.completions.create(
        model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, tools = "", []
    async for chunk in chunks:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            tools += [c.function.name for c in choice.delta.tool_calls or [] if c.function.name]
    return text, tools


def one_call_ended(seen: Seen, run_id: str) -> Callable[[], bool]:
    return lambda: any(isinstance(e, CallEnded) for e in seen.of(run_id))


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_a_streamed_answer_is_seen_call_by_call(
    rig: Rig, fake: fm.FakeModelServer, provider: str
) -> None:
    model = "claude-test" if provider == "anthropic" else "gpt-test"
    token, sock = await rig.run("run-1")
    fake.script(
        [
            [fm.Text("Let me look first."), fm.ToolCall("bash", {"command": "ls /space"})],
            fm.Text(REPLY),
        ]
    )
    assert await ask(rig, provider, token, sock) == ("Let me look first.", ["bash"])
    await until(one_call_ended(rig.seen, "run-1"), "the first call's end")
    assert await ask(rig, provider, token, sock) == (REPLY, [])
    await until(lambda: len(rig.records) == 2, "both calls metered")
    await until(lambda: rig.seen.of("run-1")[-1] == CallEnded(True), "the second call's end")

    tool_turn, text_turn = rig.seen.calls("run-1")
    assert shape(tool_turn) == [
        CallStarted(provider, model),
        TextDelta("Let me look first."),
        ToolCall("bash"),
        CallEnded(True),
    ]
    assert shape(text_turn) == [CallStarted(provider, model), TextDelta(REPLY), CallEnded(True)]
    assert {r for r, _, _ in rig.seen.events} == {"run-1"}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_text_is_seen_while_the_model_is_still_writing(
    rig: Rig, fake: fm.FakeModelServer, provider: str
) -> None:
    token, sock = await rig.run("run-1")
    fake.script([fm.Turn([fm.Text(REPLY)], tokens_per_second=40)])
    assert (await ask(rig, provider, token, sock))[0] == REPLY
    await until(one_call_ended(rig.seen, "run-1"), "the call's end")
    (sent,) = fake.requests
    assert len(sent.token_times) == len(fm._pieces(REPLY)) > 5
    texts = [at for r, e, at in rig.seen.events if isinstance(e, TextDelta)]
    # Order, not speed: the first words reached the hook before the model wrote its last.
    assert texts[0] < sent.token_times[-1]
    assert len(texts) > 1 and texts[1] < sent.token_times[-1]


@pytest.mark.parametrize(("provider", "drop_after"), [("anthropic", 5), ("openai", 3)])
async def test_a_stream_cut_by_the_upstream_ends_incomplete(
    rig: Rig, fake: fm.FakeModelServer, provider: str, drop_after: int
) -> None:
    token, sock = await rig.run("run-1")
    fake.script([fm.Turn([fm.Text(REPLY)], drop_after=drop_after)])
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIError, openai.APIError)):
        await ask(rig, provider, token, sock)
    await until(one_call_ended(rig.seen, "run-1"), "the call's end")
    assert fake.requests[0].outcome == "dropped"
    (call,) = rig.seen.calls("run-1")
    assert isinstance(call[0], CallStarted)
    assert call[-1] == CallEnded(False)
    assert [e for e in call if isinstance(e, CallEnded)] == [CallEnded(False)]
    text = rig.seen.text("run-1")
    assert text and REPLY.startswith(text) and text != REPLY  # what came before the cut


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_close_run_mid_stream_ends_the_call_incomplete_before_it_returns(
    rig: Rig, fake: fm.FakeModelServer, provider: str
) -> None:
    token, sock = await rig.run("run-1")
    fake.script([fm.Turn([fm.Text("word " * 300)], tokens_per_second=20)])
    path, body = (
        ("anthropic/v1/messages", {"model": "claude-test", "max_tokens": 5})
        if provider == "anthropic"
        else ("openai/v1/chat/completions", {"model": "gpt-test"})
    )
    http = rig.http(sock)
    resp = await http.post(
        f"{BASE}/model/{path}",
        json={**body, "messages": HELLO, "stream": True},
        headers={"x-api-key": token},
    )
    assert resp.status == 200
    await until(lambda: "word" in rig.seen.text("run-1"), "the first words")
    await rig.host.close_run("run-1")
    # Synchronously, before close_run returned: the call ended, incomplete, once.
    (call,) = rig.seen.calls("run-1")
    assert call[-1] == CallEnded(False)
    assert sum(isinstance(e, CallEnded) for e in call) == 1
    await until(lambda: fake.requests[0].closed_at is not None, "the provider told to stop")
    with pytest.raises(aiohttp.ClientError):
        await resp.read()
    resp.release()


async def test_the_agent_going_away_mid_stream_ends_the_call_incomplete(
    rig: Rig, fake: fm.FakeModelServer
) -> None:
    token, sock = await rig.run("run-1")
    fake.script([fm.Turn([fm.Text("word " * 300)], tokens_per_second=50)])
    async with rig.http(sock).post(
        f"{BASE}/model/anthropic/v1/messages",
        json={"model": "claude-test", "max_tokens": 5, "messages": HELLO, "stream": True},
        headers={"x-api-key": token},
    ) as resp:
        await until(lambda: "word" in rig.seen.text("run-1"), "the first words")
        assert resp.connection is not None
        resp.connection.transport.close()  # the agent goes away
    await until(one_call_ended(rig.seen, "run-1"), "the call's end")
    (call,) = rig.seen.calls("run-1")
    assert call[-1] == CallEnded(False)
    assert len(rig.seen.text("run-1")) < len("word " * 300)


async def test_a_raising_hook_changes_nothing_for_the_agent(
    rig: Rig, fake: fm.FakeModelServer
) -> None:
    calls = 0

    def broken(run_id: str, event: StreamEvent) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"cannot render {event!r}")

    after = Seen()
    rig.host.add_stream_hook(broken)
    rig.host.add_stream_hook(after)  # registered after the broken one: still called
    token, sock = await rig.run("run-1")
    fake.script(
        [
            [fm.Text(REPLY), fm.ToolCall("read_file", {"path": "a.md"})],
            fm.Text("second answer"),
        ]
    )
    with structlog.testing.capture_logs() as logs:
        assert await ask(rig, "anthropic", token, sock) == (REPLY, ["read_file"])
        async with rig.http(sock).post(
            f"{BASE}/model/openai/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO, "stream": True},
            headers={"x-api-key": token},
        ) as resp:
            assert resp.status == 200
            raw = await resp.read()
        await until(lambda: len(rig.records) == 2, "both calls metered")
        await until(lambda: after.of("run-1").count(CallEnded(True)) == 2, "both ends")
    # Every frame the fake sent reached the agent, through to [DONE]; both calls whole.
    frames = [f for f in raw.split(b"\n\n") if f.strip()]
    assert len(frames) == len(fake.requests[1].events)
    assert frames[-1] == b"data: [DONE]"
    assert [(r.status, r.incomplete) for r in rig.records] == [(200, False), (200, False)]
    # The hooks before and after the broken one got every event.
    assert [shape(c) for c in after.calls("run-1")] == [
        [
            CallStarted("anthropic", "claude-test"),
            TextDelta(REPLY),
            ToolCall("read_file"),
            CallEnded(True),
        ],
        [CallStarted("openai", "gpt-test"), TextDelta("second answer"), CallEnded(True)],
    ]
    assert rig.seen.of("run-1") == after.of("run-1")
    # The broken hook ran for every event, and was logged once for the run, without text.
    assert calls == len(after.events)
    failures = [e for e in logs if e["event"] == "stream hook failed"]
    assert [(e["run_id"], e["error"]) for e in failures] == [("run-1", "ValueError")]
    assert "cannot render" not in repr(logs) and "second answer" not in repr(logs)


async def test_non_streamed_answers_emit_nothing(rig: Rig, fake: fm.FakeModelServer) -> None:
    token, sock = await rig.run("run-1")
    fake.script([fm.Text("json answer"), fm.Error(529), fm.Error(429)])
    msg = await rig.claude(token, sock).messages.create(
        model="claude-test", max_tokens=10, messages=HELLO
    )
    assert msg.content[0].text == "json answer"
    with pytest.raises(anthropic.APIStatusError):  # asked to stream, answered JSON
        await ask(rig, "anthropic", token, sock)
    with pytest.raises(openai.RateLimitError):
        await ask(rig, "openai", token, sock)
    await until(lambda: len(rig.records) == 3, "three calls metered")
    assert rig.seen.events == []


async def test_an_error_status_with_an_event_stream_emits_nothing(tmp_path: Path) -> None:
    """A 5xx that says text/event-stream (some gateways do) is no model answer."""
    frame = b'event: error\ndata: {"type": "error", "error": {"type": "api_error"}}\n\n'

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        delta = b'data: {"choices": [{"delta": {"content": "not an answer"}}]}\n\n'
        return web.Response(status=503, body=frame + delta, content_type="text/event-stream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    rig = await start_rig(tmp_path, url, url + "/v1")
    try:
        token, sock = await rig.run("run-1")
        async with rig.http(sock).post(
            f"{BASE}/model/openai/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO, "stream": True},
            headers={"x-api-key": token},
        ) as resp:
            assert resp.status == 503
            assert (await resp.read()).startswith(frame)
        await until(lambda: len(rig.records) == 1, "the call metered")
        assert rig.seen.events == []
    finally:
        for client in rig._closers:
            await client.close()
        await rig.host.stop()
        await runner.cleanup()
