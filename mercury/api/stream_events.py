"""What the model writes, read from its streamed answer as it passes through the proxy.

The chat user sees a reply grow while the model writes it (issue 13): the model proxy
feeds every chunk of a streamed 2xx answer to a parser from here, after the chunk went
on to the agent, and hands the events to whoever registered a `StreamHook`:

    CallStarted(provider, model)  a streamed model answer began (one per model call)
    TextDelta(text)               visible answer text (no thinking, no tool-call JSON)
    ToolCall(name)                the model asked for a tool, as soon as its name is known
    CallEnded(complete)           the answer ended; False when it was cut or cancelled

Formats understood (chunks split anywhere, as for `usage_stream`: inside a line, a UTF-8
character or a CRLF):

- Anthropic Messages SSE: `content_block_start` of a `tool_use` block (also the
  server-side `server_tool_use`/`mcp_tool_use`, e.g. web search) -> ToolCall(name);
  `content_block_delta` with a `text_delta` -> TextDelta. Thinking, signatures, tool
  input JSON, citations, pings and errors are not answer text and are ignored.
- OpenAI Chat Completions SSE: `choices[*].delta.content` -> TextDelta;
  `choices[*].delta.tool_calls[*].function.name` (and the legacy `delta.function_call`)
  -> ToolCall, once per tool call even if a server repeats the name; `[DONE]` ends it.
- OpenAI Responses API SSE: `response.output_text.delta` -> TextDelta(delta);
  `response.output_item.added` of a `function_call` (or Codex's `custom_tool_call`)
  item -> ToolCall(name).

The answer is untrusted (it is the model's, and a prompt injection steers the model):
a malformed event is skipped, memory is bounded (one SSE line of at most `max_line`
bytes is buffered; longer ones are dropped whole), tool names are cut to `NAME_MAX`
characters, and `StreamHooks` never lets a hook's failure reach the proxy's relay.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mercury.api.usage import Provider
from mercury.api.usage_stream import SSEDataReader
from mercury.logging import get_logger

log = get_logger(__name__)

# A tool name is an identifier; anything longer is junk, cut so a hook can show it.
NAME_MAX = 200
# OpenAI tool calls seen per answer, for de-duplication (bounded: a hostile stream could
# number its tool calls without end; past this, repeated names may be reported twice).
_SEEN_MAX = 1024
# Runs whose failing hook was logged; cleared past this (then a failure logs again) so a
# host that never calls `forget` does not grow without bound.
_FAILED_MAX = 4096


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A streamed 2xx model answer began (one per model call = one agent turn)."""

    provider: str
    model: str | None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text the model wrote (visible answer text only; no thinking, no tool JSON)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asked for a tool (its name, as soon as it is known)."""

    name: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The streamed answer ended; complete=False when cut or failed."""

    complete: bool


StreamEvent = CallStarted | TextDelta | ToolCall | CallEnded
# (run_id, event); called synchronously on the proxy's event loop: it must be cheap.
StreamHook = Callable[[str, StreamEvent], None]


class StreamEventParser(Protocol):
    """`feed` raw bytes as they pass; `flush` once when the stream ended whole."""

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def flush(self) -> list[StreamEvent]: ...


def _load(payload: str) -> Mapping[str, Any] | None:
    """An SSE data payload as a JSON object, or None (not JSON, not an object, [DONE])."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        return None
    return data if isinstance(data, Mapping) else None


def _name(value: Any) -> str | None:
    return value[:NAME_MAX] if isinstance(value, str) and value else None


def _text(value: Any) -> TextDelta | None:
    return TextDelta(value) if isinstance(value, str) and value else None


class _SSEEvents(ABC):
    """Shared part: SSE framing, JSON decoding, merging a chunk's consecutive texts."""

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._reader = SSEDataReader(max_line)

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return self._events(self._reader.feed(chunk))

    def flush(self) -> list[StreamEvent]:
        return self._events(self._reader.flush())

    def _events(self, payloads: Iterable[str]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for payload in payloads:
            data = _load(payload)
            if data is None:
                continue
            for event in self._parse(data):
                if event is None:
                    continue
                # One TextDelta per chunk and run of text: fewer hook calls, same text.
                if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
                    out[-1] = TextDelta(out[-1].text + event.text)
                else:
                    out.append(event)
        return out

    @abstractmethod
    def _parse(self, data: Mapping[str, Any]) -> Iterator[StreamEvent | None]:
        """The events of one decoded SSE payload (None entries are skipped)."""


_ANTHROPIC_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


class AnthropicStreamEvents(_SSEEvents):
    """Events of an Anthropic Messages SSE stream."""

    def _parse(self, data: Mapping[str, Any]) -> Iterator[StreamEvent | None]:
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, Mapping) and delta.get("type") == "text_delta":
                yield _text(delta.get("text"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            if not isinstance(block, Mapping):
                return
            if block.get("type") in _ANTHROPIC_TOOL_BLOCKS:
                name = _name(block.get("name"))
                yield ToolCall(name) if name else None
            elif block.get("type") == "text":
                yield _text(block.get("text"))  # "" in practice; text if a server sends it


_RESPONSES_TOOL_ITEMS = frozenset({"function_call", "custom_tool_call"})


class OpenAIStreamEvents(_SSEEvents):
    """Events of an OpenAI Chat Completions or Responses API SSE stream (told apart per
    event: Responses events have a `type` starting with "response.")."""

    def __init__(self, max_line: int = 1 << 20) -> None:
        super().__init__(max_line)
        self._seen: set[tuple[int, int]] = set()  # (choice, tool call) indexes reported

    def _parse(self, data: Mapping[str, Any]) -> Iterator[StreamEvent | None]:
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            yield self._responses(kind, data)
            return
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, Mapping):
                continue
            yield _text(delta.get("content"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    if isinstance(call, Mapping):
                        yield self._tool(choice.get("index"), call.get("index"), call)
            legacy = delta.get("function_call")
            if isinstance(legacy, Mapping):
                name = _name(legacy.get("name"))
                yield ToolCall(name) if name else None

    def _tool(self, choice: Any, index: Any, call: Mapping[str, Any]) -> ToolCall | None:
        function = call.get("function")
        name = _name(function.get("name")) if isinstance(function, Mapping) else None
        if name is None:
            return None
        if isinstance(index, int):
            # The name comes with a call's first delta; some servers repeat it on each.
            key = (choice if isinstance(choice, int) else 0, index)
            if key in self._seen:
                return None
            if len(self._seen) < _SEEN_MAX:
                self._seen.add(key)
        return ToolCall(name)

    @staticmethod
    def _responses(kind: str, data: Mapping[str, Any]) -> StreamEvent | None:
        if kind == "response.output_text.delta":
            return _text(data.get("delta"))
        if kind == "response.output_item.added":
            item = data.get("item")
            if isinstance(item, Mapping) and item.get("type") in _RESPONSES_TOOL_ITEMS:
                name = _name(item.get("name"))
                return ToolCall(name) if name else None
        return None


def stream_event_parser(provider: Provider) -> StreamEventParser:
    """A fresh parser for one streamed answer of `provider`."""
    return AnthropicStreamEvents() if provider == "anthropic" else OpenAIStreamEvents()


class StreamHooks:
    """The registered hooks, and which runs already had a hook failure logged."""

    def __init__(self) -> None:
        self._hooks: list[StreamHook] = []
        self._failed: set[str] = set()

    def add(self, hook: StreamHook) -> None:
        self._hooks.append(hook)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def tap(self, run_id: str, provider: Provider, model: str | None) -> StreamTap:
        return StreamTap(self, run_id, provider, model)

    def forget(self, run_id: str) -> None:
        """The run is over: a later failure of its id (none expected) would log again."""
        self._failed.discard(run_id)

    def emit(self, run_id: str, event: StreamEvent) -> None:
        """Call every hook; one that raises is logged once per run and otherwise ignored."""
        for hook in tuple(self._hooks):
            try:
                hook(run_id, event)
            except Exception as exc:
                self.report_failure(run_id, "stream hook failed", exc, hook)

    def report_failure(self, run_id: str, what: str, exc: Exception, hook: object = None) -> None:
        """Log `what` failed, the first time for `run_id` (no text content, no secrets)."""
        if run_id in self._failed:
            return
        if len(self._failed) >= _FAILED_MAX:
            self._failed.clear()
        self._failed.add(run_id)
        # The exception's type only: its message (or a traceback's locals) may quote the
        # model's text, which does not belong in the logs.
        log.warning(
            what,
            run_id=run_id,
            hook=getattr(hook, "__qualname__", type(hook).__name__) if hook else None,
            error=type(exc).__name__,
        )


class StreamTap:
    """One streamed answer as the hooks see it: `start`, `feed` each chunk, `end` once.

    Never raises: a parser failure stops this answer's text events (logged once per run),
    a hook failure is contained by `StreamHooks.emit`.
    """

    def __init__(
        self, hooks: StreamHooks, run_id: str, provider: Provider, model: str | None
    ) -> None:
        self._hooks = hooks
        self._run_id = run_id
        self._provider: Provider = provider
        self._model = model
        self._parser: StreamEventParser | None = None
        self._started = False
        self._ended = False

    def start(self) -> None:
        """Emit CallStarted (once); the chunks fed from now on are parsed."""
        if self._started:
            return
        self._started = True
        self._parser = stream_event_parser(self._provider)
        self._hooks.emit(self._run_id, CallStarted(self._provider, self._model))

    def feed(self, chunk: bytes) -> None:
        """The events of one chunk, emitted in order (call it after the chunk went on)."""
        self._parse(lambda parser: parser.feed(chunk))

    def end(self, complete: bool) -> None:
        """Emit CallEnded(complete), once, if the answer was started."""
        if not self._started or self._ended:
            return
        if complete:
            self._parse(lambda parser: parser.flush())  # a last line ended by a lone CR
        self._ended = True
        self._parser = None
        self._hooks.emit(self._run_id, CallEnded(complete))

    def _parse(self, parse: Callable[[StreamEventParser], list[StreamEvent]]) -> None:
        parser = self._parser
        if parser is None:
            return
        try:
            events = parse(parser)
        except Exception as exc:
            self._parser = None  # its state is unknown now: no more events from it
            self._hooks.report_failure(self._run_id, "stream event parser failed", exc)
            return
        for event in events:
            self._hooks.emit(self._run_id, event)
