"""Both wire formats: rendering the neutral conversation, parsing replies, and the real SDKs
talking to the fake model server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from mercury_agent.chain import Action, ActionKind, call_errors, classify, describe, status_of
from mercury_agent.conversation import (
    Message,
    ModelRequest,
    TextBlock,
    ToolDef,
    ToolResult,
    ToolUse,
)
from mercury_agent.providers import (
    AnthropicBackend,
    Backend,
    MalformedReply,
    OpenAIBackend,
    anthropic_params,
    assemble_openai,
    openai_params,
    parse_anthropic,
    parse_openai,
)

from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn

TOOL = ToolDef(
    "bash", "Run a command.", {"type": "object", "properties": {"command": {"type": "string"}}}
)
CONVERSATION = [
    Message("user", [TextBlock("Ada: list files")]),
    Message("assistant", [TextBlock("Looking."), ToolUse("call_1", "bash", {"command": "ls"})]),
    Message(
        "user",
        [ToolResult("call_1", "a.txt\n[exit code 0]"), ToolResult("call_2", "boom", is_error=True)],
    ),
]
REQUEST = ModelRequest(
    system="You are Mercury.", messages=CONVERSATION, tools=[TOOL], max_tokens=512
)


# ------------------------------------------------------------------ Anthropic wire format


def test_anthropic_request_shape() -> None:
    params = anthropic_params(REQUEST, "claude-x")
    assert params["model"] == "claude-x" and params["max_tokens"] == 512
    assert params["system"][0]["text"] == "You are Mercury."
    assert params["tools"] == [
        {"name": "bash", "description": "Run a command.", "input_schema": TOOL.parameters}
    ]
    user, assistant, results = params["messages"]
    assert user == {"role": "user", "content": [{"type": "text", "text": "Ada: list files"}]}
    assert assistant["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "ls"}},
    ]
    first, second = results["content"]
    assert first == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": "a.txt\n[exit code 0]",
        "is_error": False,
    }
    # The newest block is the prompt-cache breakpoint.
    assert second["is_error"] is True and second["cache_control"] == {"type": "ephemeral"}


def test_anthropic_tool_results_come_first_and_empty_text_is_never_sent() -> None:
    mixed = Message("user", [TextBlock("also this"), ToolResult("t1", ""), TextBlock("  ")])
    params = anthropic_params(ModelRequest("", [mixed], [], 10), "m")
    assert "system" not in params and "tools" not in params
    blocks = params["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["tool_result", "text"]
    assert blocks[0]["content"] == "(no output)"
    empty = anthropic_params(ModelRequest("", [Message("assistant", [])], [], 10), "m")
    assert empty["messages"][0]["content"][0]["text"] == "(empty)"


def test_parse_anthropic_reply() -> None:
    reply = parse_anthropic(
        {
            "model": "claude-x-2026",
            "stop_reason": "tool_use",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}},
            ],
            "usage": {
                "input_tokens": 10,
                "output_tokens": 7,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 1000,
            },
        }
    )
    assert reply.message.content == [
        TextBlock("Let me check."),
        ToolUse("toolu_1", "bash", {"command": "ls"}),
    ]
    assert (reply.input_tokens, reply.output_tokens) == (1110, 7)
    assert (reply.model, reply.stop_reason) == ("claude-x-2026", "tool_use")
    with pytest.raises(MalformedReply):
        parse_anthropic({"type": "message"})


# ------------------------------------------------------------------ OpenAI wire format


def test_openai_request_shape() -> None:
    params = openai_params(REQUEST, "gpt-x")
    assert params["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a command.",
                "parameters": TOOL.parameters,
            },
        }
    ]
    assert params["messages"] == [
        {"role": "system", "content": "You are Mercury."},
        {"role": "user", "content": "Ada: list files"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\n[exit code 0]"},
        # No error flag in this format: the text says it.
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: boom"},
    ]


def test_openai_replays_undecodable_arguments_as_received() -> None:
    bad = ToolUse("c9", "bash", {}, error="not JSON", raw_arguments="{oops")
    params = openai_params(ModelRequest("", [Message("assistant", [bad])], [], 10), "m")
    (message,) = params["messages"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{oops"


def test_parse_openai_reply() -> None:
    reply = parse_openai(
        {
            "model": "gpt-x",
            "choices": [
                {
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": "On it.",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                            },
                            {"function": {"name": "bash", "arguments": "{not json"}},
                            {"id": "c3", "function": {"name": "list_files", "arguments": ""}},
                        ],
                    },
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4},
        }
    )
    text, good, broken, empty = reply.message.content
    assert text == TextBlock("On it.")
    assert good == ToolUse("c1", "bash", {"command": "ls"}, raw_arguments='{"command": "ls"}')
    assert broken.id == "call_1" and broken.error and "not valid JSON" in broken.error
    assert empty.input == {} and empty.error is None
    assert (reply.input_tokens, reply.output_tokens, reply.stop_reason) == (12, 4, "tool_calls")


@pytest.mark.parametrize("data", [{"choices": []}, {"model": "x"}, {"choices": ["x"]}])
def test_parse_openai_without_a_choice_is_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(MalformedReply):
        parse_openai(data)


def test_parse_openai_tolerates_missing_usage() -> None:
    reply = parse_openai({"choices": [{"message": {"content": "hi"}}]}, "fallback")
    assert (reply.input_tokens, reply.output_tokens, reply.model) == (0, 0, "fallback")


# ------------------------------------------------------------------ the real SDKs


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_real_sdk_round_trip_with_tool_call(provider: str) -> None:
    async with FakeModelServer() as fake:
        fake.script(
            [
                Turn(
                    [Text("Checking."), ToolCall("bash", {"command": "ls"})],
                    input_tokens=21,
                    output_tokens=8,
                ),
                Turn([Text("There is a.txt.")], input_tokens=40, output_tokens=6),
            ]
        )
        backend = (
            AnthropicBackend("model-a", fake.url, "run-token")
            if provider == "anthropic"
            else OpenAIBackend("model-a", fake.url + "/v1", "run-token")
        )
        try:
            first = await backend.complete(
                ModelRequest("sys", [Message("user", [TextBlock("Ada: ls please")])], [TOOL], 256),
                30,
            )
            (call,) = first.message.tool_uses()
            assert (call.name, call.input) == ("bash", {"command": "ls"})
            assert first.message.text() == "Checking."
            assert (first.input_tokens, first.output_tokens) == (21, 8)
            history = [
                Message("user", [TextBlock("Ada: ls please")]),
                first.message,
                Message("user", [ToolResult(call.id, "a.txt")]),
            ]
            second = await backend.complete(ModelRequest("sys", history, [TOOL], 256), 30)
            assert second.message.text() == "There is a.txt."
            assert second.message.tool_uses() == []
        finally:
            await backend.close()

    first_req, second_req = fake.requests
    assert first_req.provider == provider
    assert first_req.body["model"] == "model-a"
    if provider == "anthropic":
        # Newer SDKs send the key as a bearer token; the host accepts either header.
        sent = first_req.headers.get("x-api-key") or first_req.headers["authorization"]
        assert sent.removeprefix("Bearer ") == "run-token"
        assert first_req.body["tools"][0]["name"] == "bash"
        result = second_req.body["messages"][-1]["content"][0]
        assert (result["type"], result["tool_use_id"], result["content"]) == (
            "tool_result",
            call.id,
            "a.txt",
        )
    else:
        assert first_req.headers["authorization"] == "Bearer run-token"
        assert first_req.body["messages"][0] == {"role": "system", "content": "sys"}
        assert second_req.body["messages"][-1] == {
            "role": "tool",
            "tool_call_id": call.id,
            "content": "a.txt",
        }


# ------------------------------------------------------------------ streamed calls


def backend_for(provider: str, fake_url: str, model: str = "model-s") -> Backend:
    if provider == "anthropic":
        return AnthropicBackend(model, fake_url, "run-token")
    return OpenAIBackend(model, fake_url + "/v1", "run-token")


ASK = ModelRequest("sys", [Message("user", [TextBlock("Ada: go")])], [TOOL], 256)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_calls_stream_and_assemble_text_tool_calls_and_usage(provider: str) -> None:
    long_args = {"command": "printf '%s' " + "x" * 300, "timeout_s": 20}
    async with FakeModelServer() as fake:
        fake.script(
            [
                Turn(
                    [
                        Text("Let me look at this for you."),
                        ToolCall("bash", long_args, id="call_first"),
                        ToolCall("read_file", {"path": "a.txt"}, id="call_second"),
                    ],
                    input_tokens=1234,
                    output_tokens=56,
                ),
                Turn([Text("All done, nothing else to do.")], input_tokens=7, output_tokens=3),
            ]
        )
        backend = backend_for(provider, fake.url)
        try:
            first = await backend.complete(ASK, 30)
            second = await backend.complete(ASK, 30)
        finally:
            await backend.close()

    assert first.message.text() == "Let me look at this for you."
    assert [(u.id, u.name, u.input, u.error) for u in first.message.tool_uses()] == [
        ("call_first", "bash", long_args, None),
        ("call_second", "read_file", {"path": "a.txt"}, None),
    ]
    # Exactly what the fake reported, not the provisional numbers of a stream's start.
    assert (first.input_tokens, first.output_tokens) == (1234, 56)
    assert first.stop_reason == ("tool_use" if provider == "anthropic" else "tool_calls")
    assert first.model == "model-s"
    assert second.message.text() == "All done, nothing else to do."
    assert (second.input_tokens, second.output_tokens) == (7, 3)
    assert second.stop_reason == ("end_turn" if provider == "anthropic" else "stop")

    for req in fake.requests:
        assert req.stream is True and req.body["stream"] is True
        # Several text deltas and each tool call's arguments in two: the client joined them.
        assert sum(1 for _, name in req.events if name in ("content_block_delta", "chunk")) > 4
        if provider == "openai":
            assert req.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (401, ActionKind.FAIL, "auth"),
        (429, ActionKind.NEXT_LEG, "rate_limited"),
        (500, ActionKind.RETRY, "server_error"),
        (529, ActionKind.RETRY, "overloaded"),
    ],
)
async def test_an_error_status_is_classified_as_before(
    provider: str, status: int, kind: ActionKind, reason: str
) -> None:
    async with FakeModelServer() as fake:
        fake.script([Error(status)])
        backend = backend_for(provider, fake.url)
        try:
            with pytest.raises(call_errors()) as info:
                await backend.complete(ASK, 30)
        finally:
            await backend.close()
    assert classify(info.value) == Action(kind, reason)
    assert status_of(info.value) == status
    assert describe(info.value).startswith(f"HTTP {status}: fake ")


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_a_stream_cut_midway_is_a_transient_connection_error(provider: str) -> None:
    async with FakeModelServer() as fake:
        fake.script([Turn([Text("a long answer that is cut")], drop_after=4)])
        backend = backend_for(provider, fake.url)
        try:
            with pytest.raises(call_errors()) as info:
                await backend.complete(ASK, 30)
        finally:
            await backend.close()
    assert fake.requests[0].outcome == "dropped"
    assert classify(info.value) == Action(ActionKind.RETRY, "connection_error")


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_a_stream_that_stalls_times_out(provider: str) -> None:
    async with FakeModelServer() as fake:
        # The headers and first event come at once, the next one far beyond the timeout.
        fake.script([Turn([Text("slow words")], event_delay=30)])
        backend = backend_for(provider, fake.url)
        try:
            with pytest.raises(call_errors()) as info:
                await backend.complete(ASK, 0.3)
        finally:
            await backend.close()
    assert classify(info.value) == Action(ActionKind.RETRY, "timeout")
    assert describe(info.value) == "timed out"


# Anthropic reports a failure that happens after the 200 headers as an `error` event.
_MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "model-s",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    },
}


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


@pytest.fixture
async def raw_anthropic() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 answering /v1/messages with the SSE bytes queued in the list."""
    answers: list[bytes] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(answers.pop(0))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", answers
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("error_type", "status", "kind", "reason"),
    [
        ("overloaded_error", 529, ActionKind.RETRY, "overloaded"),
        ("api_error", 500, ActionKind.RETRY, "server_error"),
        ("rate_limit_error", 429, ActionKind.NEXT_LEG, "rate_limited"),
        ("authentication_error", 401, ActionKind.FAIL, "auth"),
    ],
)
async def test_an_error_event_in_an_anthropic_stream_is_classified_as_its_status(
    raw_anthropic: tuple[str, list[bytes]],
    error_type: str,
    status: int,
    kind: ActionKind,
    reason: str,
) -> None:
    url, answers = raw_anthropic
    error = {"type": "error", "error": {"type": error_type, "message": "mid-stream trouble"}}
    answers.append(_sse(_MESSAGE_START, error))
    backend = AnthropicBackend("model-s", url, "run-token")
    try:
        with pytest.raises(call_errors()) as info:
            await backend.complete(ASK, 30)
    finally:
        await backend.close()
    assert (classify(info.value), status_of(info.value)) == (Action(kind, reason), status)
    assert describe(info.value) == f"HTTP {status}: mid-stream trouble"


async def test_an_anthropic_stream_ending_early_is_transient(
    raw_anthropic: tuple[str, list[bytes]],
) -> None:
    url, answers = raw_anthropic
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    answers.append(_sse(_MESSAGE_START, {**block, "content_block": {"type": "text", "text": ""}}))
    backend = AnthropicBackend("model-s", url, "run-token")
    try:
        with pytest.raises(ConnectionError, match="before message_stop") as info:
            await backend.complete(ASK, 30)
    finally:
        await backend.close()
    assert classify(info.value) == Action(ActionKind.RETRY, "connection_error")


# ------------------------------------------------------------------ assembling OpenAI chunks


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "gpt-s", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_openai_chunks_are_joined_by_tool_call_index() -> None:
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Look"}),
        _chunk({"content": "ing."}),
        _chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "bash"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "read_file"}}]}),
        # Fragments of two calls interleaved; the id and name repeated, as some servers do.
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"path"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": '{"com'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"name": "bash", "arguments": 'mand"'}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "a"}'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "ls"}'}}]}),
        _chunk({}, "tool_calls"),
        {"model": "gpt-s", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
    ]
    reply = parse_openai(assemble_openai(chunks))
    assert reply.message.content == [
        TextBlock("Looking."),
        ToolUse("c1", "bash", {"command": "ls"}, raw_arguments='{"command": "ls"}'),
        ToolUse("c2", "read_file", {"path": "a"}, raw_arguments='{"path": "a"}'),
    ]
    assert (reply.input_tokens, reply.output_tokens) == (9, 4)
    assert (reply.model, reply.stop_reason) == ("gpt-s", "tool_calls")


def test_openai_chunks_without_indexes_or_usage() -> None:
    chunks = [
        {"choices": [{"delta": {"tool_calls": [{"id": "a", "function": {"name": "x"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"id": "b", "function": {"name": "y"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
    ]
    reply = parse_openai(assemble_openai(chunks), "fallback")
    assert [(u.id, u.name, u.input) for u in reply.message.tool_uses()] == [
        ("a", "x", {}),
        ("b", "y", {}),
    ]
    assert (reply.input_tokens, reply.output_tokens, reply.model) == (0, 0, "fallback")


def test_openai_stream_without_finish_reason_or_choices() -> None:
    with pytest.raises(ConnectionError, match="finish_reason"):
        assemble_openai([_chunk({"content": "half an ans"})])
    with pytest.raises(MalformedReply, match="no choices"):
        parse_openai(assemble_openai([{"model": "m", "choices": []}]))
