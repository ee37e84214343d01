"""Both wire formats: rendering the neutral conversation, parsing replies, and the real SDKs
talking to the fake model server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
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
    MalformedReply,
    OpenAIBackend,
    anthropic_params,
    openai_params,
    parse_anthropic,
    parse_openai,
)

from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn

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
