"""The two wire formats, on the official SDKs: Anthropic Messages and OpenAI Chat Completions.

Rendering (neutral conversation -> request) and parsing (response -> neutral reply) are
pure functions over plain dicts, so they are unit-tested without a server. The backends
only add the SDK call. Both SDKs run with `max_retries=0`: retrying is the chain's job,
and an SDK retrying on its own would hide attempts from it and from result.json.

Every model call streams: the host's model proxy watches the answer as it is generated
(and a long generation keeps its connection busy instead of idle). The backends read the
whole stream and hand the assembled message to the same parsers as a plain answer, so
the rest of the runtime never sees a stream. A stream that breaks or ends early raises
what chain.py classifies as a transient failure, as a cut plain answer did.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from mercury_agent.conversation import (
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
    ToolDef,
    ToolResult,
    ToolUse,
)
from mercury_agent.settings import ANTHROPIC_BASE_URL, OPENAI_BASE_URL, relay_env
from mercury_agent.streaming import (
    MalformedReply,
    as_dict,
    as_int,
    assemble_openai,
    raise_stream_failure,
    relay_tls_context,
    stream_cut,
)

# The SDKs' own default is 10 minutes; the chain passes the remaining budget when smaller.
DEFAULT_TIMEOUT_S = 600.0
# Anthropic refuses empty text blocks and empty tool results.
_EMPTY_TEXT = "(empty)"
_EMPTY_RESULT = "(no output)"


class Backend(Protocol):
    """One chain leg's client."""

    provider: str
    model: str

    async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply: ...

    async def close(self) -> None: ...


def anthropic_tools(tools: list[ToolDef]) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
    ]


def anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> Anthropic `messages` (tool_use / tool_result blocks)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        blocks: list[dict[str, Any]] = []
        # tool_result blocks must come first in the user turn that answers tool calls.
        for b in msg.content:
            if isinstance(b, ToolResult):
                blocks.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": b.tool_use_id,
                        "content": b.content or _EMPTY_RESULT,
                        "is_error": b.is_error,
                    }
                )
        for b in msg.content:
            if isinstance(b, TextBlock) and b.text.strip():
                blocks.append({"type": "text", "text": b.text})
            elif isinstance(b, ToolUse):
                blocks.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
        if not blocks:
            blocks.append({"type": "text", "text": _EMPTY_TEXT})
        out.append({"role": msg.role, "content": blocks})
    return out


def anthropic_params(request: ModelRequest, model: str) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for `request`."""
    messages = anthropic_messages(request.messages)
    if messages:
        # Prompt caching: a tool loop resends the whole conversation every turn; marking
        # the newest block lets the next turn read everything before it from the cache.
        last = messages[-1]["content"][-1]
        messages[-1]["content"][-1] = {**last, "cache_control": {"type": "ephemeral"}}
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if request.system:
        params["system"] = [
            {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}
        ]
    if request.tools:
        params["tools"] = anthropic_tools(request.tools)
    return params


def parse_anthropic(response: Any, fallback_model: str = "") -> ModelReply:
    """An Anthropic Message (SDK object or dict) -> ModelReply."""
    data = as_dict(response)
    content = data.get("content")
    if not isinstance(content, list):
        raise MalformedReply("Anthropic reply has no content list")
    blocks: list[TextBlock | ToolUse] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text":
            blocks.append(TextBlock(str(block.get("text") or "")))
        elif kind == "tool_use":
            raw_input = block.get("input")
            if isinstance(raw_input, Mapping):
                blocks.append(
                    ToolUse(str(block.get("id")), str(block.get("name")), dict(raw_input))
                )
            else:
                blocks.append(
                    ToolUse(
                        str(block.get("id")),
                        str(block.get("name")),
                        {},
                        error="the tool input was not a JSON object",
                    )
                )
        # thinking / redacted_thinking / server tool blocks: not part of the answer.
    usage = data.get("usage") or {}
    # Cached prompt tokens are still input tokens: count them, or usage looks cheap.
    input_tokens = (
        as_int(usage.get("input_tokens"))
        + as_int(usage.get("cache_creation_input_tokens"))
        + as_int(usage.get("cache_read_input_tokens"))
    )
    return ModelReply(
        message=Message("assistant", list(blocks)),
        input_tokens=input_tokens,
        output_tokens=as_int(usage.get("output_tokens")),
        model=str(data.get("model") or fallback_model),
        stop_reason=data.get("stop_reason"),
    )


class AnthropicBackend:
    """A leg on AsyncAnthropic, pointed at the relay."""

    provider = "anthropic"

    def __init__(self, model: str, base_url: str, api_key: str) -> None:
        # Imported here: only runs with an Anthropic leg pay for the import (about a second).
        import anthropic

        self.model = model
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=DEFAULT_TIMEOUT_S,
            http_client=anthropic.DefaultAsyncHttpxClient(verify=relay_tls_context()),
        )

    async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply:
        params = anthropic_params(request, self.model)
        finished = False
        try:
            async with self._client.messages.stream(
                **params, timeout=timeout or DEFAULT_TIMEOUT_S
            ) as stream:
                async for event in stream:
                    finished = finished or event.type == "message_stop"
                if not finished:
                    raise stream_cut("Anthropic", "message_stop")
                message = await stream.get_final_message()
        except Exception as exc:
            raise_stream_failure(exc, "anthropic")
        return parse_anthropic(message, self.model)

    async def close(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------- OpenAI


def openai_tools(tools: list[ToolDef]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


def openai_messages(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages -> Chat Completions `messages` (tool_calls / role "tool")."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for msg in messages:
        text = msg.text()
        if msg.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            calls = [
                {
                    "id": u.id,
                    "type": "function",
                    "function": {
                        "name": u.name,
                        "arguments": u.raw_arguments
                        if u.error is not None and u.raw_arguments is not None
                        else json.dumps(u.input, ensure_ascii=False),
                    },
                }
                for u in msg.tool_uses()
            ]
            if calls:
                entry["tool_calls"] = calls
            elif not text:
                entry["content"] = _EMPTY_TEXT
            out.append(entry)
            continue
        for b in msg.content:
            if isinstance(b, ToolResult):
                content = b.content or _EMPTY_RESULT
                # Chat Completions has no error flag on tool messages: say it in the text.
                if b.is_error and not content.startswith("Error"):
                    content = f"Error: {content}"
                out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": content})
        if text or not any(isinstance(b, ToolResult) for b in msg.content):
            out.append({"role": "user", "content": text or _EMPTY_TEXT})
    return out


def openai_params(request: ModelRequest, model: str) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for `request`."""
    params: dict[str, Any] = {
        "model": model,
        "messages": openai_messages(request.system, request.messages),
    }
    # No max_tokens: OpenAI's newer models want max_completion_tokens, and compatible
    # servers (Ollama, vLLM) differ; every server has a sensible default.
    if request.tools:
        params["tools"] = openai_tools(request.tools)
    return params


def _decode_arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    if raw is None or raw == "":
        return {}, None
    if isinstance(raw, Mapping):  # some compatible servers send an object
        return dict(raw), None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return {}, f"the arguments were not valid JSON ({exc})"
    if not isinstance(value, dict):
        return {}, "the arguments were not a JSON object"
    return value, None


def parse_openai(response: Any, fallback_model: str = "") -> ModelReply:
    """A ChatCompletion (SDK object or dict) -> ModelReply."""
    data = as_dict(response)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise MalformedReply("OpenAI-compatible reply has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    blocks: list[TextBlock | ToolUse] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        blocks.append(TextBlock(content))
    elif isinstance(content, list):  # some servers send content parts
        text = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        if text:
            blocks.append(TextBlock(text))
    for i, call in enumerate(message.get("tool_calls") or []):
        if not isinstance(call, Mapping):
            continue
        fn = call.get("function") or {}
        raw = fn.get("arguments")
        args, error = _decode_arguments(raw)
        blocks.append(
            ToolUse(
                # Some compatible servers omit ids; the reply must still pair with them.
                id=str(call.get("id") or f"call_{i}"),
                name=str(fn.get("name") or ""),
                input=args,
                error=error,
                raw_arguments=raw if isinstance(raw, str) else None,
            )
        )
    usage = data.get("usage") or {}
    return ModelReply(
        message=Message("assistant", list(blocks)),
        input_tokens=as_int(usage.get("prompt_tokens")),
        output_tokens=as_int(usage.get("completion_tokens")),
        model=str(data.get("model") or fallback_model),
        stop_reason=choice.get("finish_reason"),
    )


class OpenAIBackend:
    """A leg on AsyncOpenAI (OpenAI or any compatible server), pointed at the relay."""

    provider = "openai"

    def __init__(self, model: str, base_url: str, api_key: str) -> None:
        import openai  # see AnthropicBackend: imported by the legs that use it

        self.model = model
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=DEFAULT_TIMEOUT_S,
            http_client=openai.DefaultAsyncHttpxClient(verify=relay_tls_context()),
        )

    async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply:
        chunks: list[dict[str, Any]] = []
        try:
            stream = await self._client.chat.completions.create(
                **openai_params(request, self.model),
                stream=True,
                # The usage arrives in a last chunk without choices; servers that do not
                # know the option answer 400, which the chain treats as "try another leg".
                stream_options={"include_usage": True},
                timeout=timeout or DEFAULT_TIMEOUT_S,
            )
            try:
                async for chunk in stream:
                    chunks.append(as_dict(chunk))
            finally:
                await stream.close()
        except Exception as exc:
            raise_stream_failure(exc, "openai")
        return parse_openai(assemble_openai(chunks), self.model)

    async def close(self) -> None:
        await self._client.close()


PROVIDERS = frozenset({"anthropic", "openai"})


def preload(providers: set[str] | frozenset[str]) -> list[str]:
    """Import the SDKs `providers` need now, so the import (about a second) is not taken
    from the model budget or the first call's timeout. Unknown names are ignored; returns
    the providers loaded, sorted. (A warm container also makes a first call before it
    waits, which loads what the SDKs import lazily: waiting.warm_up.)"""
    loaded = sorted(set(providers) & PROVIDERS)
    for provider in loaded:
        importlib.import_module(provider)
    return loaded


def make_backend(provider: str, model: str, relay_url: str, token: str) -> Backend:
    """The backend of one leg. Every leg talks to the relay; a leg's base_url is the host's."""
    urls = relay_env(relay_url, token)
    if provider == "anthropic":
        return AnthropicBackend(model, urls[ANTHROPIC_BASE_URL], token)
    if provider == "openai":
        return OpenAIBackend(model, urls[OPENAI_BASE_URL], token)
    raise ValueError(f"unknown provider {provider!r}")
