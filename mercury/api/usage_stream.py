"""Usage read from response bodies as they pass through the proxy, in bounded memory.

- Anthropic Messages SSE: `message_start.message.usage` (input) then `message_delta.usage`
  (cumulative output; newer API versions repeat input there too, which then wins).
- OpenAI SSE: the chunk carrying `usage` (sent last when `stream_options.include_usage`),
  or `response.usage` of a Responses API `response.completed` event.
- JSON of any size (`JsonUsageBuffer`): whole bodies up to 1 MiB are parsed; larger ones
  keep only their head and tail, where the top-level "model" and "usage" are.

Every parser's `feed()` takes raw byte chunks exactly as they pass through the proxy, split
anywhere (inside a line, a UTF-8 character or a CRLF), and `result()` is a snapshot that
may be taken at any time - also when the body was cut short.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

from mercury.api.usage import (
    Provider,
    TokenUsage,
    _anthropic_input,
    _as_dict,
    _int,
    _openai_usage,
    usage_from_json,
)

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


_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')
_MODEL_KEY = re.compile(rb'"model"\s*:\s*')
_DECODER = json.JSONDecoder()


def _value_after(buf: bytes, key: re.Pattern[bytes], *, last: bool, tries: int = 3) -> Any:
    """The JSON value following `key` in a fragment of a JSON text, or None.

    A `"usage":` byte sequence cannot occur inside a JSON string (its quotes would be
    escaped), so every match is a real key; at most `tries` of them are decoded.
    """
    matches = list(key.finditer(buf))
    for m in reversed(matches) if last else iter(matches):
        if tries <= 0:
            break
        tries -= 1
        try:
            value, _ = _DECODER.raw_decode(buf[m.end() :].decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            continue
        return value
    return None


class JsonUsageBuffer:
    """Usage of a JSON response body fed in chunks, with bounded memory.

    Up to `whole` bytes the body is kept and parsed in full. Beyond that only its first
    `head` and last `tail` bytes are kept: providers put the top-level "usage" at the end
    of the object (after the content, however long) and "model" near either end, so a
    50 MiB embeddings answer is metered too. Of several "usage" keys in the tail the last
    wins: a nested one (say, in a tool call's input) comes before the top-level one.
    A body cut short is scanned the same way; a complete one is only ever parsed.
    """

    def __init__(self, whole: int = 1 << 20, head: int = 64 << 10, tail: int = 256 << 10) -> None:
        self._whole, self._head_max, self._tail_max = whole, head, tail
        self._buf = bytearray()
        self._head = b""
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if not self._overflow and len(self._buf) > self._whole:
            self._overflow = True
            self._head = bytes(self._buf[: self._head_max])
        if self._overflow and len(self._buf) > 2 * self._tail_max:
            del self._buf[: len(self._buf) - self._tail_max]

    def result(self, provider: Provider) -> TokenUsage | None:
        if not self._overflow:
            whole = bytes(self._buf)
            try:
                data = json.loads(whole)
            except (ValueError, UnicodeDecodeError, RecursionError):
                head = tail = whole  # cut short: scan what arrived
            else:
                # A complete body is trusted as parsed: no top-level usage means none,
                # whatever "usage" keys its content may hold.
                return usage_from_json(provider, data if isinstance(data, Mapping) else {})
        else:
            head, tail = self._head, bytes(self._buf[-self._tail_max :])
        usage = _value_after(tail, _USAGE_KEY, last=True)
        if not isinstance(usage, Mapping):
            usage = _value_after(head, _USAGE_KEY, last=False)
        if not isinstance(usage, Mapping):
            return None
        model = _value_after(head, _MODEL_KEY, last=False)
        if not isinstance(model, str):
            model = _value_after(tail, _MODEL_KEY, last=True)
        return usage_from_json(provider, {"usage": usage, "model": model})
