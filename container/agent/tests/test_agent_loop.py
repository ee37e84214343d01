"""The tool loop: turns, tool results, usage, max_turns, and a mid-run switch of provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mercury_agent.chain import Chain
from mercury_agent.contract import AgentError, LegSpec
from mercury_agent.conversation import (
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolResult,
    ToolUse,
)
from mercury_agent.loop import run_loop
from mercury_agent.providers import AnthropicBackend, Backend, OpenAIBackend
from mercury_agent.tools import TOOLS, ToolContext

from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn

PROMPT = [Message("user", [TextBlock("Ada: go")])]


class Scripted:
    """A backend replaying neutral replies and keeping every request it got."""

    provider, model = "anthropic", "scripted"

    def __init__(self, replies: list[list[Any]]) -> None:
        self.replies = replies
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply:
        self.requests.append(ModelRequest(request.system, list(request.messages), [], 0))
        blocks = self.replies.pop(0)
        return ModelReply(Message("assistant", blocks), 10, 2, "scripted-1")

    async def close(self) -> None:
        pass


def scripted_chain(backend: Scripted) -> Chain:
    return Chain(
        [LegSpec("anthropic", "scripted")], lambda leg: backend, retries_per_leg=0, budget_s=None
    )


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    (tmp_path / "space").mkdir()
    (tmp_path / "tmp").mkdir()
    return ToolContext(space_dir=tmp_path / "space", tmp_dir=tmp_path / "tmp", bash_timeout_s=20)


async def loop(chain: Chain, ctx: ToolContext, max_turns: int = 5) -> Any:
    return await run_loop(
        chain,
        system="sys",
        messages=PROMPT,
        tools=TOOLS,
        ctx=ctx,
        max_turns=max_turns,
        max_tokens=64,
    )


async def test_tool_calls_are_run_and_answered_until_a_final_text(ctx: ToolContext) -> None:
    backend = Scripted(
        [
            [
                TextBlock("Writing."),
                ToolUse("t1", "write_file", {"path": "x.txt", "content": "42"}),
            ],
            [ToolUse("t2", "read_file", {"path": "x.txt"}), ToolUse("t3", "nope", {})],
            [TextBlock("x.txt holds 42.")],
        ]
    )
    result = await loop(scripted_chain(backend), ctx)
    assert result.text == "x.txt holds 42."
    assert (result.usage.input_tokens, result.usage.output_tokens) == (30, 6)
    assert result.usage.model == "scripted-1"
    assert result.turns == 3
    assert (ctx.space_dir / "x.txt").read_text() == "42"
    # The second request ends with the first tool's result, the third with both results
    # of the second turn, in call order (the unknown tool as an error).
    assert backend.requests[1].messages[-1].content == [ToolResult("t1", "wrote 2 bytes to x.txt")]
    read, unknown = backend.requests[2].messages[-1].content
    assert read == ToolResult("t2", "42")
    assert isinstance(unknown, ToolResult) and unknown.is_error
    assert "unknown tool 'nope'" in unknown.content


async def test_an_empty_last_turn_answers_with_what_the_model_said_last(ctx: ToolContext) -> None:
    backend = Scripted([[TextBlock("Sending the file now."), ToolUse("t1", "list_files", {})], []])
    result = await loop(scripted_chain(backend), ctx)
    assert result.text == "Sending the file now."


async def test_an_empty_answer_does_not_reach_into_the_chat_history(ctx: ToolContext) -> None:
    backend = Scripted([[]])
    history = [Message("assistant", [TextBlock("old bot message")]), *PROMPT]
    result = await run_loop(
        scripted_chain(backend),
        system="s",
        messages=history,
        tools=TOOLS,
        ctx=ctx,
        max_turns=2,
        max_tokens=8,
    )
    assert result.text == ""


async def test_undecodable_arguments_are_answered_with_a_tool_error(ctx: ToolContext) -> None:
    backend = Scripted(
        [
            [
                ToolUse(
                    "t1", "bash", {}, error="the arguments were not valid JSON", raw_arguments="{"
                )
            ],
            [TextBlock("retrying is up to me")],
        ]
    )
    await loop(scripted_chain(backend), ctx)
    (result,) = backend.requests[1].messages[-1].content
    assert isinstance(result, ToolResult) and result.is_error
    assert "not valid JSON" in result.content


async def test_max_turns_is_a_clear_error_with_the_usage_so_far(ctx: ToolContext) -> None:
    backend = Scripted([[ToolUse(f"t{i}", "list_files", {})] for i in range(3)])
    with pytest.raises(AgentError) as info:
        await loop(scripted_chain(backend), ctx, max_turns=3)
    assert info.value.error_class == "max_turns"
    assert "3 turns" in str(info.value)
    assert info.value.usage is not None and info.value.usage.input_tokens == 30


async def test_every_tool_call_is_recorded_and_kept_when_the_run_fails(
    ctx: ToolContext,
) -> None:
    backend = Scripted(
        [
            [ToolUse("t1", "write_file", {"path": "big.txt", "content": "x" * 5000})],
            [ToolUse("t2", "nope", {}), ToolUse("t3", "bash", {}, error="bad", raw_arguments="{")],
            [ToolUse("t4", "list_files", {})],
        ]
    )
    record: list[dict[str, Any]] = []
    with pytest.raises(AgentError) as info:
        await run_loop(
            scripted_chain(backend),
            system="s",
            messages=PROMPT,
            tools=TOOLS,
            ctx=ctx,
            max_turns=3,
            max_tokens=8,
            record=record,
        )
    assert info.value.tools is record
    assert [(r["name"], r["ok"]) for r in record] == [
        ("write_file", True),
        ("nope", False),
        ("bash", False),
        ("list_files", True),
    ]
    write = record[0]
    assert len(write["input"]) == 2000 and write["input"].startswith('{"path": "big.txt"')
    assert write["output"] == "wrote 5000 bytes to big.txt"
    assert "unknown tool 'nope'" in record[1]["output"]
    assert record[2]["input"] == "{"  # as received: it was not JSON
    assert all(isinstance(r["ms"], int) and r["ms"] >= 0 for r in record)


async def test_a_chain_failure_keeps_the_usage_spent_before_it(ctx: ToolContext) -> None:
    class TimesOutLater(Scripted):
        async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply:
            if not self.replies:
                raise TimeoutError()
            return await super().complete(request, timeout)

    backend = TimesOutLater([[ToolUse("t1", "list_files", {})]])
    with pytest.raises(AgentError) as info:
        await loop(scripted_chain(backend), ctx)
    assert info.value.error_class == "model"
    assert info.value.usage is not None and info.value.usage.input_tokens == 10


async def test_the_conversation_moves_to_the_other_provider_mid_run(ctx: ToolContext) -> None:
    """Leg 1 (Anthropic) calls a tool, then fails; leg 2 (OpenAI) gets the whole history."""
    async with FakeModelServer() as fake:
        fake.script([ToolCall("bash", {"command": "echo hi"}), Error(529)], model="claude-1")
        fake.script(
            [Turn([Text("It printed hi.")], input_tokens=50, output_tokens=4)], model="gpt-1"
        )

        def factory(leg: LegSpec) -> Backend:
            if leg.provider == "anthropic":
                return AnthropicBackend(leg.model, fake.url, "k")
            return OpenAIBackend(leg.model, fake.url + "/v1", "k")

        chain = Chain(
            [LegSpec("anthropic", "claude-1"), LegSpec("openai", "gpt-1")],
            factory,
            retries_per_leg=0,
            budget_s=30,
        )
        try:
            result = await loop(chain, ctx)
        finally:
            await chain.close()

    assert result.text == "It printed hi."
    assert (result.usage.input_tokens, result.usage.output_tokens) == (60, 9)
    assert result.usage.model == "gpt-1"
    assert [(a["leg"], a["outcome"]) for a in chain.attempts] == [
        (0, "ok"),
        (0, "next_leg"),
        (1, "ok"),
    ]
    _, failed, moved = fake.requests
    # The Anthropic request that failed already carried the tool call, with its id.
    tool_id = failed.body["messages"][1]["content"][0]["id"]
    # The OpenAI leg sees the Anthropic turn re-rendered in its own wire format.
    assert moved.body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Ada: go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": tool_id,
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "echo hi"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": tool_id, "content": "hi\n[exit code 0]"},
    ]
