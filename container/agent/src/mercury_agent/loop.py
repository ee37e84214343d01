"""The tool-use loop: ask the model, run the tools it calls, repeat until it answers.

It is wire-format agnostic: the conversation is neutral (conversation.py) and the chain
renders it for whichever leg is serving. A turn is one model call; after `max_turns`
calls that still ask for tools the run ends with a clear error rather than looping on.

Every tool call is recorded for the run record (result.json `tools`): name, ok, ms, and
its input and output cut to RECORD_TEXT_CHARS, the first MAX_TOOL_RECORDS calls.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from mercury_agent.chain import Chain
from mercury_agent.contract import MAX_TURNS, AgentError, Usage
from mercury_agent.conversation import Message, ModelRequest, ToolDef, ToolResult, ToolUse
from mercury_agent.tools import ToolContext, ToolOutcome, run_tool

MAX_TOOL_RECORDS = 200
RECORD_TEXT_CHARS = 2000
RECORD_NAME_CHARS = 128


def _cap(text: str, limit: int = RECORD_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tool_record(call: ToolUse, outcome: ToolOutcome, ms: int) -> dict[str, Any]:
    """One entry of result.json `tools`: the call's input as JSON (as received when it was
    not JSON), its output, both cut to RECORD_TEXT_CHARS."""
    if call.error is not None:
        given = call.raw_arguments or ""
    else:
        given = json.dumps(call.input, ensure_ascii=False, default=str)
    return {
        "name": _cap(call.name, RECORD_NAME_CHARS),
        "ok": not outcome.is_error,
        "ms": max(0, ms),
        "input": _cap(given),
        "output": _cap(outcome.content),
    }


@dataclass(frozen=True)
class LoopResult:
    text: str
    usage: Usage
    turns: int


def _final_text(history: list[Message]) -> str:
    """The answer: the last turn's text; if that turn is empty (models sometimes end with
    nothing after a tool call), the last thing the model said in this run."""
    for message in reversed(history):
        if message.role == "assistant" and message.text().strip():
            return message.text().strip()
        if message.role == "user" and not any(isinstance(b, ToolResult) for b in message.content):
            break  # do not reach back into the chat history
    return ""


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


async def run_loop(
    chain: Chain,
    *,
    system: str,
    messages: list[Message],
    tools: list[ToolDef],
    ctx: ToolContext,
    max_turns: int,
    max_tokens: int,
    record: list[dict[str, Any]] | None = None,
) -> LoopResult:
    """Run the conversation to a final answer; AgentError (max_turns, or the chain's).

    `record` receives one tool_record per tool call as calls finish (the first
    MAX_TOOL_RECORDS), so the caller has them when this raises; AgentError.tools too.
    """
    history = list(messages)
    input_tokens = output_tokens = 0
    model = ""

    def usage() -> Usage:
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens, model=model)

    for turn in range(1, max_turns + 1):
        request = ModelRequest(system=system, messages=history, tools=tools, max_tokens=max_tokens)
        try:
            reply = await chain.complete(request, turn)
        except AgentError as exc:
            exc.usage = usage()
            exc.tools = record
            raise
        input_tokens += reply.input_tokens
        output_tokens += reply.output_tokens
        model = reply.model or model
        history.append(reply.message)
        calls = reply.message.tool_uses()
        if not calls:
            return LoopResult(text=_final_text(history), usage=usage(), turns=turn)
        results: list[ToolResult] = []
        for call in calls:
            started = time.monotonic()
            if call.error is not None:
                outcome = ToolOutcome(
                    f"Error: {call.error}; call {call.name} again with a JSON object of arguments",
                    is_error=True,
                )
            else:
                outcome = await run_tool(ctx, call.name, call.input)
            elapsed = int((time.monotonic() - started) * 1000)
            _log(f"tool {call.name}: {'error' if outcome.is_error else 'ok'} in {elapsed} ms")
            if record is not None and len(record) < MAX_TOOL_RECORDS:
                record.append(tool_record(call, outcome, elapsed))
            results.append(ToolResult(call.id, outcome.content, outcome.is_error))
        history.append(Message("user", list(results)))
    error = AgentError(
        f"the model was still calling tools after {max_turns} turns (model.max_turns); "
        "no final answer",
        MAX_TURNS,
        usage(),
    )
    error.tools = record
    raise error
