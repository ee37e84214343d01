"""The fake model server, checked with the real anthropic and openai SDKs as clients."""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn

TOOLS_ANTHROPIC = [
    {
        "name": "bash",
        "description": "run a command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    }
]
TOOLS_OPENAI = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "run a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    }
]
HELLO = [{"role": "user", "content": "hello"}]


def _credential(headers: dict[str, str]) -> str | None:
    """The API key a request carried, however the SDK chose to send it."""
    auth = headers.get("authorization", "")
    return headers.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else None)


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as server:
        yield server


@pytest.fixture
async def claude(fake: FakeModelServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # Anthropic's base URL has no /v1: the SDK appends /v1/messages.
    async with anthropic.AsyncAnthropic(
        base_url=fake.url, api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def gpt(fake: FakeModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    # OpenAI-compatible base URLs include /v1: the SDK appends /chat/completions.
    async with openai.AsyncOpenAI(
        base_url=fake.url + "/v1", api_key="sk-openai-test", max_retries=0
    ) as client:
        yield client


# --------------------------------------------------------------------------- anthropic


async def test_anthropic_text_reply_and_recorded_request(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Text("Hello there, human.")])
    msg = await claude.messages.create(model="claude-test", max_tokens=100, messages=HELLO)
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello there, human."
    assert msg.stop_reason == "end_turn"
    assert msg.model == "claude-test"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (10, 5)

    (req,) = fake.requests
    assert (req.method, req.path, req.provider, req.model) == (
        "POST",
        "/v1/messages",
        "anthropic",
        "claude-test",
    )
    # Recorded as sent (this SDK version sends its api_key as a Bearer token).
    assert _credential(req.headers) == "sk-ant-test"
    assert "anthropic-version" in req.headers
    assert req.body["messages"] == HELLO
    assert req.stream is False
    assert fake.remaining() == 0


async def test_anthropic_tool_calls_parse_in_sdk(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script(
        [
            [
                Text("Let me look."),
                ToolCall("bash", {"command": "ls -la"}),
                ToolCall("bash", {"command": "pwd"}, id="toolu_fixed"),
            ]
        ]
    )
    msg = await claude.messages.create(
        model="claude-test", max_tokens=100, messages=HELLO, tools=TOOLS_ANTHROPIC
    )
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    first, second = msg.content[1], msg.content[2]
    assert isinstance(first, anthropic.types.ToolUseBlock)
    assert (first.name, first.input) == ("bash", {"command": "ls -la"})
    assert first.id.startswith("toolu_")
    assert second.id == "toolu_fixed"
    assert fake.requests[0].body["tools"][0]["name"] == "bash"


async def test_anthropic_stream_text_and_tool_use(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script(
        [
            Turn(
                [Text("Streaming works fine."), ToolCall("bash", {"command": "echo hi"})],
                input_tokens=42,
                output_tokens=17,
            )
        ]
    )
    async with claude.messages.stream(
        model="claude-test", max_tokens=100, messages=HELLO, tools=TOOLS_ANTHROPIC
    ) as stream:
        pieces = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    # Several deltas, joined by the SDK.
    assert len(pieces) > 1
    assert "".join(pieces) == "Streaming works fine."
    assert final.stop_reason == "tool_use"
    tool = final.content[1]
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    # input_json_delta pieces were reassembled into the arguments.
    assert (tool.name, tool.input) == ("bash", {"command": "echo hi"})
    assert (final.usage.input_tokens, final.usage.output_tokens) == (42, 17)

    req = fake.requests[0]
    assert req.stream is True
    names = [name for _, name in req.events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in names


async def test_anthropic_raw_stream_events(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Text("abc def")])
    stream = await claude.messages.create(
        model="claude-test", max_tokens=10, messages=HELLO, stream=True
    )
    types = [event.type async for event in stream]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert types.count("content_block_delta") == 2


async def test_anthropic_query_string_is_ignored_and_recorded(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Text("beta ok")])
    # Claude Code calls /v1/messages?beta=true.
    msg = await claude.messages.create(
        model="claude-test", max_tokens=10, messages=HELLO, extra_query={"beta": "true"}
    )
    assert msg.content[0].text == "beta ok"
    assert fake.requests[0].path == "/v1/messages"
    assert fake.requests[0].query == {"beta": "true"}


async def test_anthropic_error_statuses_map_to_typed_errors(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Error(529), Error(401, "invalid x-api-key"), Error(429)])
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await claude.messages.create(model="m", max_tokens=10, messages=HELLO)
    assert isinstance(overloaded.value, anthropic.APIStatusError)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"

    with pytest.raises(anthropic.AuthenticationError) as denied:
        await claude.messages.create(model="m", max_tokens=10, messages=HELLO)
    assert denied.value.status_code == 401
    assert "invalid x-api-key" in str(denied.value)

    # Errors come before any SSE, also for streaming requests.
    with pytest.raises(anthropic.RateLimitError):
        async with claude.messages.stream(model="m", max_tokens=10, messages=HELLO) as s:
            await s.get_final_message()


async def test_unscripted_request_is_a_clear_500(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    with pytest.raises(anthropic.InternalServerError) as exc:
        await claude.messages.create(model="m", max_tokens=10, messages=HELLO)
    assert exc.value.status_code == 500
    assert "no scripted turn left" in str(exc.value)
    with pytest.raises(openai.InternalServerError) as exc2:
        await gpt.chat.completions.create(model="m", messages=HELLO)
    assert "no scripted turn left" in str(exc2.value)
    assert [r.outcome for r in fake.requests] == ["unscripted", "unscripted"]


async def test_per_model_queues_win_over_the_shared_queue(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Text("shared")])
    fake.script([Error(529), Text("from b")], model="model-b")

    async def ask(model: str) -> str:
        msg = await claude.messages.create(model=model, max_tokens=10, messages=HELLO)
        return msg.content[0].text

    with pytest.raises(anthropic.InternalServerError):
        await ask("model-b")
    assert await ask("model-b") == "from b"
    # model-b's queue is empty now: it falls back to the shared queue.
    assert await ask("model-b") == "shared"
    assert fake.remaining() == fake.remaining("model-b") == 0


# --------------------------------------------------------------------------- openai


async def test_openai_text_reply_and_recorded_request(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([Turn([Text("Hi from GPT.")], input_tokens=7, output_tokens=3)])
    out = await gpt.chat.completions.create(model="gpt-test", messages=HELLO)
    choice = out.choices[0]
    assert choice.message.content == "Hi from GPT."
    assert choice.finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (7, 3)
    req = fake.requests[0]
    assert (req.path, req.provider, req.model) == ("/v1/chat/completions", "openai", "gpt-test")
    assert req.headers["authorization"] == "Bearer sk-openai-test"


async def test_openai_tool_calls_parse_in_sdk(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([[ToolCall("bash", {"command": "ls"}), ToolCall("bash", {"command": "id"})]])
    out = await gpt.chat.completions.create(model="gpt-test", messages=HELLO, tools=TOOLS_OPENAI)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"command": "ls"},
        {"command": "id"},
    ]
    assert all(c.function.name == "bash" and c.id.startswith("call_") for c in calls)


async def test_openai_stream_with_usage_and_tool_calls(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script(
        [
            Turn(
                [Text("Working on it."), ToolCall("bash", {"command": "uname -a"})],
                input_tokens=30,
                output_tokens=12,
            )
        ]
    )
    stream = await gpt.chat.completions.create(
        model="gpt-test",
        messages=HELLO,
        tools=TOOLS_OPENAI,
        stream=True,
        stream_options={"include_usage": True},
    )
    text: list[str] = []
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    finish = None
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            for tc in choice.delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names[tc.index] = tc.function.name
                if tc.function and tc.function.arguments:
                    args[tc.index] = args.get(tc.index, "") + tc.function.arguments
            finish = choice.finish_reason or finish
    assert len(text) > 1
    assert "".join(text) == "Working on it."
    assert names == {0: "bash"}
    assert json.loads(args[0]) == {"command": "uname -a"}
    assert finish == "tool_calls"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 12)
    assert [name for _, name in fake.requests[0].events][-1] == "[DONE]"


async def test_openai_stream_helper_final_completion(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([Text("one two three")])
    async with gpt.chat.completions.stream(
        model="gpt-test", messages=HELLO, stream_options={"include_usage": True}
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "one two three"
    assert final.usage is not None and final.usage.total_tokens == 15


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([Text("x")])
    stream = await gpt.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


async def test_openai_error_statuses_map_to_typed_errors(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([Error(401), Error(429), Error(500), Error(404, "no such model")])
    with pytest.raises(openai.AuthenticationError) as denied:
        await gpt.chat.completions.create(model="m", messages=HELLO)
    assert denied.value.status_code == 401
    assert denied.value.code == "invalid_api_key"
    with pytest.raises(openai.RateLimitError):
        await gpt.chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        await gpt.chat.completions.create(model="m", messages=HELLO, stream=True)
    with pytest.raises(openai.NotFoundError, match="no such model"):
        await gpt.chat.completions.create(model="m", messages=HELLO)


# --------------------------------------------------------------------------- timing


async def test_event_delay_spaces_out_sse_events(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Turn([Text("a b c")], event_delay=0.05)])
    async with claude.messages.stream(model="m", max_tokens=10, messages=HELLO) as s:
        await s.get_final_message()
    times = [t for t, _ in fake.requests[0].events]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 8
    assert min(gaps) >= 0.04


async def test_drop_after_cuts_the_stream(fake: FakeModelServer, gpt: openai.AsyncOpenAI) -> None:
    fake.script([Turn([Text("never finished")], drop_after=2)])
    stream = await gpt.chat.completions.create(model="m", messages=HELLO, stream=True)
    # This SDK version lets its transport's error through rather than wrapping it.
    with pytest.raises((httpx2.RemoteProtocolError, openai.APIConnectionError)):
        async for _ in stream:
            pass
    assert fake.requests[0].outcome == "dropped"
    assert len(fake.requests[0].events) == 2


# --------------------------------------------------------------------------- other threads


def _http(url: str, data: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(data).encode() if data is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if data is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_runs_in_its_own_thread_and_is_scriptable_over_http() -> None:
    with FakeModelServer() as fake:
        # Scripted over HTTP, as another process would.
        queued = _http(
            fake.url + "/_fake/script",
            {
                "turns": [
                    {"text": "over http"},
                    {"tool_call": {"name": "bash", "arguments": {"command": "ls"}}},
                    {"error": 529},
                ]
            },
        )
        assert queued == {"ok": True, "queued": 3}
        client = anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0)
        first = client.messages.create(model="m", max_tokens=10, messages=HELLO)
        assert first.content[0].text == "over http"
        second = client.messages.create(model="m", max_tokens=10, messages=HELLO)
        assert second.content[0].type == "tool_use"
        with pytest.raises(anthropic.InternalServerError):
            client.messages.create(model="m", max_tokens=10, messages=HELLO)

        recorded = _http(fake.url + "/_fake/requests")
        assert [r["outcome"] for r in recorded] == ["turn", "turn", "error"]
        assert _credential(recorded[0]["headers"]) == "k"

        assert _http(fake.url + "/_fake/reset", {}) == {"ok": True}
        assert fake.requests == []
        # Scripting from this (non-server) thread with the Python API works too.
        fake.script([Text("direct")])
        client2 = openai.OpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0)
        out = client2.chat.completions.create(model="m", messages=HELLO)
        assert out.choices[0].message.content == "direct"
        client.close()
        client2.close()
