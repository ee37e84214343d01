"""Token usage: pure extraction from provider responses, and a meter per run and per space.

The model proxy sees every response an agent gets, so usage is counted here, on the host,
from the provider's own numbers - not from whatever the agent reports.

Extraction is pure (bytes or dicts in, `TokenUsage` out) and covers:

- Anthropic Messages JSON: `usage.input_tokens` (+ cache creation/read tokens, which are
  input too) and `usage.output_tokens`.
- Anthropic Messages SSE: `message_start.message.usage` (input) then `message_delta.usage`
  (cumulative output; newer API versions repeat input there too, which then wins).
- OpenAI Chat Completions JSON `usage.prompt_tokens/completion_tokens`; the Responses API
  shape `usage.input_tokens/output_tokens` is understood as well (Codex-style CLIs).
- OpenAI SSE: the chunk carrying `usage` (sent last when `stream_options.include_usage`),
  or `response.usage` of a Responses API `response.completed` event.

Stream parsers are incremental: `feed()` takes raw byte chunks exactly as they pass through
the proxy, split anywhere (inside a line, a UTF-8 character or a CRLF).
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from mercury.config import ModelPrice
from mercury.logging import get_logger

log = get_logger(__name__)

Provider = Literal["anthropic", "openai"]


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one model response; `model` as the provider reported it, if it did."""

    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None


def _int(value: Any) -> int:
    # Providers send ints; anything else (null, missing, junk) counts as zero.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _as_dict(body: bytes | str | Mapping[str, Any]) -> Mapping[str, Any] | None:
    if isinstance(body, Mapping):
        return body
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, Mapping) else None


def _anthropic_input(usage: Mapping[str, Any]) -> int:
    # Cache writes and reads are input tokens as well; the price table has a single input
    # price, so cost is an upper bound when caching is used.
    return (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
    )


def anthropic_usage_from_json(body: bytes | str | Mapping[str, Any]) -> TokenUsage | None:
    """Usage of a non-streaming Anthropic Messages response, or None if it has none."""
    data = _as_dict(body)
    if data is None:
        return None
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return None
    model = data.get("model")
    return TokenUsage(
        input_tokens=_anthropic_input(usage),
        output_tokens=_int(usage.get("output_tokens")),
        model=model if isinstance(model, str) else None,
    )


def _openai_usage(usage: Mapping[str, Any], model: Any) -> TokenUsage:
    # Chat Completions says prompt/completion; the Responses API says input/output.
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return TokenUsage(
        input_tokens=_int(inp),
        output_tokens=_int(out),
        model=model if isinstance(model, str) else None,
    )


def openai_usage_from_json(body: bytes | str | Mapping[str, Any]) -> TokenUsage | None:
    """Usage of a non-streaming OpenAI(-compatible) response, or None if it has none."""
    data = _as_dict(body)
    if data is None:
        return None
    usage = data.get("usage")
    if isinstance(usage, Mapping):
        return _openai_usage(usage, data.get("model"))
    return None


_EOL = re.compile(rb"[\r\n]")


class SSEDataReader:
    """Incremental Server-Sent Events reader yielding each event's `data` payload.

    Lines end in LF, CRLF or CR (the SSE spec allows all three). Only byte offsets of CR/LF
    are used to split, so a multi-byte UTF-8 character cut between chunks stays intact.
    A line longer than `max_line` is dropped rather than buffered without limit: usage lives
    in small events, and a huge content delta must not cost unbounded memory.
    """

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._skipping = False  # inside an over-long line, discarding until its end
        self._max_line = max_line

    def feed(self, chunk: bytes) -> list[str]:
        """Add raw bytes; return the data payloads of events completed by them."""
        self._buf += chunk
        events: list[str] = []
        pos = 0
        while True:
            m = _EOL.search(self._buf, pos)
            if m is None:
                break
            cut = m.start()
            if self._buf[cut] == 0x0D:
                if cut + 1 == len(self._buf):
                    break  # a CR at the very end may be half of a CRLF: wait for more
                end = cut + 2 if self._buf[cut + 1] == 0x0A else cut + 1
            else:
                end = cut + 1
            start, pos = pos, end
            if self._skipping or cut - start > self._max_line:
                self._skipping = False
                continue
            line = bytes(self._buf[start:cut])
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        del self._buf[:pos]
        if len(self._buf) > self._max_line:
            self._buf.clear()
            self._skipping = True
        return events

    def flush(self) -> list[str]:
        """At end of stream: a trailing CR ends its line (nothing more can follow it)."""
        if self._buf.endswith(b"\r"):
            return self.feed(b"\n")
        return []

    def _line(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            payload = "\n".join(self._data)
            self._data = []
            return payload
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


class StreamUsageParser(Protocol):
    """`feed` raw bytes as they pass; `result` at the end (or whenever: it is a snapshot)."""

    def feed(self, chunk: bytes) -> None: ...

    def result(self) -> TokenUsage | None: ...


class AnthropicStreamUsage:
    """Usage of an Anthropic Messages SSE stream, fed raw bytes as they pass."""

    def __init__(self) -> None:
        self._reader = SSEDataReader()
        self._input: int | None = None
        self._output: int | None = None
        self._model: str | None = None

    def feed(self, chunk: bytes) -> None:
        for payload in self._reader.feed(chunk):
            self._event(payload)

    def _event(self, payload: str) -> None:
        data = _as_dict(payload)
        if data is None:
            return
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), Mapping):
            message = data["message"]
            if isinstance(message.get("model"), str):
                self._model = message["model"]
            usage = message.get("usage")
            if isinstance(usage, Mapping):
                self._input = _anthropic_input(usage)
                self._output = _int(usage.get("output_tokens"))
        elif kind == "message_delta" and isinstance(data.get("usage"), Mapping):
            usage = data["usage"]
            # Cumulative counts: the last message_delta is the final word.
            if "output_tokens" in usage:
                self._output = _int(usage.get("output_tokens"))
            if "input_tokens" in usage and usage.get("input_tokens") is not None:
                self._input = _anthropic_input(usage)

    def result(self) -> TokenUsage | None:
        for payload in self._reader.flush():
            self._event(payload)
        if self._input is None and self._output is None:
            return None
        return TokenUsage(self._input or 0, self._output or 0, self._model)


class OpenAIStreamUsage:
    """Usage of an OpenAI(-compatible) SSE stream, fed raw bytes as they pass."""

    def __init__(self) -> None:
        self._reader = SSEDataReader()
        self._usage: TokenUsage | None = None
        self._model: str | None = None

    def feed(self, chunk: bytes) -> None:
        for payload in self._reader.feed(chunk):
            if payload.strip() == "[DONE]":
                continue
            self._event(payload)

    def _event(self, payload: str) -> None:
        data = _as_dict(payload)
        if data is None:
            return
        if isinstance(data.get("model"), str):
            self._model = data["model"]
        usage = data.get("usage")
        model = data.get("model")
        response = data.get("response")
        if not isinstance(usage, Mapping) and isinstance(response, Mapping):
            usage, model = response.get("usage"), response.get("model")  # Responses API
        if isinstance(usage, Mapping):
            self._usage = _openai_usage(usage, model)

    def result(self) -> TokenUsage | None:
        for payload in self._reader.flush():
            if payload.strip() != "[DONE]":
                self._event(payload)
        if self._usage is None:
            return None
        if self._usage.model is None and self._model is not None:
            return TokenUsage(self._usage.input_tokens, self._usage.output_tokens, self._model)
        return self._usage


def stream_usage_parser(provider: Provider) -> StreamUsageParser:
    return AnthropicStreamUsage() if provider == "anthropic" else OpenAIStreamUsage()


def usage_from_json(provider: Provider, body: bytes | str | Mapping[str, Any]) -> TokenUsage | None:
    if provider == "anthropic":
        return anthropic_usage_from_json(body)
    return openai_usage_from_json(body)


def cost_usd(
    prices: Mapping[str, ModelPrice], usage: TokenUsage, *models: str | None
) -> float | None:
    """Dollar cost of `usage` at the first of `models` listed in `prices`, else None."""
    for model in models:
        if model and model in prices:
            price = prices[model]
            return (
                usage.input_tokens * price.input_per_mtok
                + usage.output_tokens * price.output_per_mtok
            ) / 1_000_000
    return None


# --------------------------------------------------------------------------- meter


@dataclass(frozen=True)
class UsageRecord:
    """One metered model response of one run."""

    run_id: str
    space_id: str
    provider: str
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class UsageTotals:
    """Sums over many records. `cost_usd` is None until a priced record arrives."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    unpriced_requests: int = 0

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        if record.cost_usd is None:
            self.unpriced_requests += 1
        else:
            self.cost_usd = (self.cost_usd or 0.0) + record.cost_usd

    def copy(self) -> UsageTotals:
        return UsageTotals(**vars(self))


UsageHook = Callable[[UsageRecord], Awaitable[None] | None]


class UsageMeter:
    """Totals per run and per space, plus hooks that persist each record (e.g. to the DB).

    Runs are kept until `pop_run` (call it when a run ends); spaces accumulate for the
    process lifetime (the database is the durable record, via a hook).
    """

    def __init__(
        self,
        prices: Mapping[str, ModelPrice] | None = None,
        on_record: UsageHook | None = None,
    ) -> None:
        self._prices: Mapping[str, ModelPrice] = prices or {}
        self._hooks: list[UsageHook] = [on_record] if on_record else []
        self._runs: dict[str, UsageTotals] = {}
        self._spaces: dict[str, UsageTotals] = {}
        self._lock = threading.Lock()

    def add_hook(self, hook: UsageHook) -> None:
        """Call `hook(record)` (sync or async) for every record from now on."""
        self._hooks.append(hook)

    def make_record(
        self,
        run_id: str,
        space_id: str,
        provider: str,
        usage: TokenUsage,
        requested_model: str | None = None,
    ) -> UsageRecord:
        """Price `usage`: by the model asked for (the price table's names), else as reported."""
        return UsageRecord(
            run_id=run_id,
            space_id=space_id,
            provider=provider,
            model=requested_model or usage.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost_usd(self._prices, usage, requested_model, usage.model),
        )

    async def record(
        self,
        run_id: str,
        space_id: str,
        provider: str,
        usage: TokenUsage,
        requested_model: str | None = None,
    ) -> UsageRecord:
        """Add one response's usage to its run and space, then run the hooks."""
        rec = self.make_record(run_id, space_id, provider, usage, requested_model)
        with self._lock:
            self._runs.setdefault(run_id, UsageTotals()).add(rec)
            self._spaces.setdefault(space_id, UsageTotals()).add(rec)
        for hook in list(self._hooks):
            try:
                result = hook(rec)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The response already reached the agent; a failing store must not undo it.
                log.exception("usage hook failed", run_id=run_id, space_id=space_id)
        return rec

    def for_run(self, run_id: str) -> UsageTotals:
        with self._lock:
            return (self._runs.get(run_id) or UsageTotals()).copy()

    def for_space(self, space_id: str) -> UsageTotals:
        with self._lock:
            return (self._spaces.get(space_id) or UsageTotals()).copy()

    def pop_run(self, run_id: str) -> UsageTotals:
        """The run's totals, forgotten afterwards (call when the run ends)."""
        with self._lock:
            return self._runs.pop(run_id, None) or UsageTotals()
