"""Usage extraction (pure, incremental streams and JSON of any size) and the usage meter."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mercury.api.usage import (
    MeteredCall,
    TokenUsage,
    UsageMeter,
    anthropic_usage_from_json,
    cost_usd,
    openai_usage_from_json,
)
from mercury.api.usage_stream import (
    AnthropicStreamUsage,
    JsonUsageBuffer,
    OpenAIStreamUsage,
    SSEDataReader,
)
from mercury.config import ModelPrice

# --------------------------------------------------------------------------- JSON


def test_anthropic_json_usage_counts_cache_tokens_as_input() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {
            "input_tokens": 100,
            "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 3,
            "output_tokens": 7,
        },
    }
    expected = TokenUsage(123, 7, "claude-sonnet-4-5-20250929")
    assert anthropic_usage_from_json(body) == expected
    assert anthropic_usage_from_json(json.dumps(body)) == expected
    assert anthropic_usage_from_json(json.dumps(body).encode()) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'{"type": "message"}', b'{"usage": 5}', b"\xff\xfe"],
)
def test_json_without_usage_gives_none(body: bytes) -> None:
    assert anthropic_usage_from_json(body) is None
    assert openai_usage_from_json(body) is None


def test_anthropic_json_null_fields_count_as_zero() -> None:
    body = {"usage": {"input_tokens": 5, "cache_read_input_tokens": None, "output_tokens": None}}
    assert anthropic_usage_from_json(body) == TokenUsage(5, 0, None)


def test_openai_chat_json_usage() -> None:
    body = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }
    assert openai_usage_from_json(body) == TokenUsage(11, 4, "gpt-4o-mini")


def test_openai_responses_api_json_usage() -> None:
    body = {"object": "response", "model": "o4", "usage": {"input_tokens": 9, "output_tokens": 2}}
    assert openai_usage_from_json(json.dumps(body)) == TokenUsage(9, 2, "o4")


# --------------------------------------------------------------------------- SSE reader


def _feed_split(reader: SSEDataReader, data: bytes, cuts: list[int]) -> list[str]:
    out: list[str] = []
    last = 0
    for cut in [*cuts, len(data)]:
        out += reader.feed(data[last:cut])
        last = cut
    return out + reader.flush()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_sse_reader_handles_every_line_ending_split_anywhere(eol: bytes) -> None:
    text = (
        b": keep-alive comment"
        + eol
        + b"event: a"
        + eol
        + b'data: {"x": "\xc3\xa9t\xc3\xa9"}'
        + eol
        + eol
        + b"data: line one"
        + eol
        + b"data:line two"
        + eol
        + eol
        + b"data: [DONE]"
        + eol
        + eol
    )
    expected = ['{"x": "été"}', "line one\nline two", "[DONE]"]
    whole = SSEDataReader()
    assert whole.feed(text) + whole.flush() == expected
    for i in range(len(text) + 1):
        assert _feed_split(SSEDataReader(), text, [i]) == expected, f"cut at {i}"
    # Byte by byte: cuts inside the UTF-8 characters and between CR and LF.
    assert _feed_split(SSEDataReader(), text, list(range(1, len(text)))) == expected


def test_sse_reader_drops_an_over_long_line_and_carries_on() -> None:
    reader = SSEDataReader(max_line=64)
    events = reader.feed(b"data: " + b"x" * 50)
    events += reader.feed(b"y" * 50 + b"\n\n")
    events += reader.feed(b'data: {"ok": 1}\n\n')
    assert events == ['{"ok": 1}']


# --------------------------------------------------------------------------- streams


def _sse(events: list[tuple[str | None, dict[str, Any] | str]]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += f"event: {name}\n".encode()
        payload = data if isinstance(data, str) else json.dumps(data)
        out += f"data: {payload}\n\n".encode()
    return out


ANTHROPIC_STREAM = _sse(
    [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "usage": {
                        "input_tokens": 25,
                        "cache_read_input_tokens": 5,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "héllo wörld 🌍"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
)


def test_anthropic_stream_usage_fed_whole() -> None:
    parser = AnthropicStreamUsage()
    parser.feed(ANTHROPIC_STREAM)
    assert parser.result() == TokenUsage(30, 15, "claude-x")


def test_anthropic_stream_usage_split_at_every_position() -> None:
    for i in range(0, len(ANTHROPIC_STREAM) + 1, 3):
        parser = AnthropicStreamUsage()
        parser.feed(ANTHROPIC_STREAM[:i])
        parser.feed(ANTHROPIC_STREAM[i:])
        assert parser.result() == TokenUsage(30, 15, "claude-x"), f"cut at {i}"
    parser = AnthropicStreamUsage()
    for b in ANTHROPIC_STREAM:
        parser.feed(bytes([b]))
    assert parser.result() == TokenUsage(30, 15, "claude-x")


def test_anthropic_stream_cut_short_still_counts_input() -> None:
    parser = AnthropicStreamUsage()
    parser.feed(ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: ping")])
    assert parser.result() == TokenUsage(30, 1, "claude-x")


def test_anthropic_stream_message_delta_input_tokens_win() -> None:
    stream = _sse(
        [
            (
                "message_start",
                {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
            ),
            (
                "message_delta",
                {"type": "message_delta", "usage": {"input_tokens": 40, "output_tokens": 9}},
            ),
        ]
    )
    parser = AnthropicStreamUsage()
    parser.feed(stream)
    assert parser.result() == TokenUsage(40, 9, None)


def test_anthropic_stream_without_usage_gives_none() -> None:
    parser = AnthropicStreamUsage()
    parser.feed(b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n')
    assert parser.result() is None


def _openai_chunk(content: str | None, usage: Any = None, **extra: Any) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"object": "chat.completion.chunk", "model": "gpt-x", "choices": choices, **extra} | (
        {"usage": usage}
    )


OPENAI_STREAM = _sse(
    [
        (None, _openai_chunk("Hel")),
        (None, _openai_chunk("lo ✓")),
        (None, _openai_chunk(None, {"prompt_tokens": 12, "completion_tokens": 2})),
        (None, "[DONE]"),
    ]
)


def test_openai_stream_usage_from_final_chunk_split_anywhere() -> None:
    for i in range(len(OPENAI_STREAM) + 1):
        parser = OpenAIStreamUsage()
        parser.feed(OPENAI_STREAM[:i])
        parser.feed(OPENAI_STREAM[i:])
        assert parser.result() == TokenUsage(12, 2, "gpt-x"), f"cut at {i}"


def test_openai_stream_without_include_usage_gives_none() -> None:
    parser = OpenAIStreamUsage()
    parser.feed(_sse([(None, _openai_chunk("hi")), (None, "[DONE]")]))
    assert parser.result() is None


def test_openai_responses_api_stream_usage() -> None:
    parser = OpenAIStreamUsage()
    parser.feed(
        _sse(
            [
                ("response.output_text.delta", {"type": "response.output_text.delta"}),
                (
                    "response.completed",
                    {
                        "type": "response.completed",
                        "response": {
                            "model": "o4",
                            "usage": {"input_tokens": 8, "output_tokens": 3},
                        },
                    },
                ),
            ]
        )
    )
    assert parser.result() == TokenUsage(8, 3, "o4")


# --------------------------------------------------------------------------- JSON buffer


def _feed_chunks(buf: JsonUsageBuffer, data: bytes, size: int) -> JsonUsageBuffer:
    for i in range(0, len(data), size):
        buf.feed(data[i : i + size])
    return buf


def test_json_buffer_small_body_is_parsed_whole() -> None:
    body = json.dumps(
        {"model": "claude-x", "content": [], "usage": {"input_tokens": 7, "output_tokens": 3}}
    ).encode()
    assert _feed_chunks(JsonUsageBuffer(), body, 5).result("anthropic") == TokenUsage(
        7, 3, "claude-x"
    )


def test_json_buffer_meters_bodies_over_any_cap() -> None:
    """The old proxy stopped buffering at its cap and then metered nothing: an answer over
    16 MiB was free. Head and tail are enough: usage and model are at the ends."""
    vectors = [
        {"object": "embedding", "index": i, "embedding": [0.0123] * 1500} for i in range(400)
    ]
    body = json.dumps(
        {
            "object": "list",
            "data": vectors,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 4321, "total_tokens": 4321},
        }
    ).encode()
    assert len(body) > 3 * 1024**2
    buf = _feed_chunks(JsonUsageBuffer(), body, 65_521)
    assert buf.result("openai") == TokenUsage(4321, 0, "text-embedding-3-small")
    assert len(buf._buf) <= 2 * 256 * 1024  # memory stays bounded


def test_json_buffer_takes_the_top_level_usage_not_one_in_the_content() -> None:
    tool_input = {"usage": {"input_tokens": 1, "output_tokens": 1}, "pad": "x" * 2_000_000}
    body = json.dumps(
        {
            "model": "claude-x",
            "content": [{"type": "tool_use", "name": "t", "input": tool_input}],
            "usage": {"input_tokens": 900, "output_tokens": 80},
        }
    ).encode()
    assert _feed_chunks(JsonUsageBuffer(), body, 100_000).result("anthropic") == TokenUsage(
        900, 80, "claude-x"
    )


def test_json_buffer_complete_body_without_usage_is_none_whatever_its_content() -> None:
    body = json.dumps({"content": [{"input": {"usage": {"input_tokens": 10**9}}}]}).encode()
    assert _feed_chunks(JsonUsageBuffer(), body, 7).result("anthropic") is None
    assert JsonUsageBuffer().result("openai") is None


def test_json_buffer_cut_short_after_usage_still_counts() -> None:
    body = b'{"model": "gpt-x", "usage": {"prompt_tokens": 12, "completion_tokens": 4}, "choi'
    assert _feed_chunks(JsonUsageBuffer(), body, 3).result("openai") == TokenUsage(12, 4, "gpt-x")
    assert JsonUsageBuffer().result("openai") is None
    cut = JsonUsageBuffer()
    cut.feed(b'{"model": "gpt-x", "choices": [{"message": {"content": "half')
    assert cut.result("openai") is None


# --------------------------------------------------------------------------- cost, meter

PRICES = {
    "claude-sonnet-4-5": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0),
    "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6),
}


def test_cost_uses_the_first_listed_model() -> None:
    usage = TokenUsage(1000, 500, "claude-sonnet-4-5-20250929")
    assert cost_usd(PRICES, usage, "claude-sonnet-4-5") == pytest.approx(0.0105)
    # Requested name unknown, reported name listed:
    assert cost_usd(PRICES, TokenUsage(1_000_000, 0, "gpt-4o-mini"), "x", "gpt-4o-mini") == (
        pytest.approx(0.15)
    )
    assert cost_usd(PRICES, usage, "unknown", None) is None
    assert cost_usd({}, usage, "claude-sonnet-4-5") is None


async def test_meter_totals_per_run_and_per_space() -> None:
    meter = UsageMeter(PRICES)
    await meter.record("r1", "s1", "anthropic", TokenUsage(1000, 500), "claude-sonnet-4-5")
    await meter.record("r1", "s1", "anthropic", TokenUsage(1000, 500), "claude-sonnet-4-5")
    await meter.record("r2", "s1", "openai", TokenUsage(10, 5, "llama3"), None)
    await meter.record("r3", "s2", "openai", TokenUsage(1_000_000, 0), "gpt-4o-mini")

    r1 = meter.for_run("r1")
    assert (r1.requests, r1.input_tokens, r1.output_tokens) == (2, 2000, 1000)
    assert r1.cost_usd == pytest.approx(0.021)
    assert r1.unpriced_requests == 0

    r2 = meter.for_run("r2")
    assert (r2.input_tokens, r2.output_tokens, r2.cost_usd, r2.unpriced_requests) == (
        10,
        5,
        None,
        1,
    )

    s1 = meter.for_space("s1")
    assert (s1.requests, s1.input_tokens, s1.output_tokens) == (3, 2010, 1005)
    assert s1.cost_usd == pytest.approx(0.021)
    assert s1.unpriced_requests == 1
    assert meter.for_space("s2").cost_usd == pytest.approx(0.15)

    # Returned totals are copies.
    meter.for_run("r1").requests = 99
    assert meter.for_run("r1").requests == 2

    popped = meter.pop_run("r1")
    assert popped.requests == 2
    assert meter.for_run("r1").requests == 0
    assert meter.for_space("s1").requests == 3  # spaces keep their totals


async def test_meter_hooks_get_each_record_and_a_failing_hook_is_contained() -> None:
    seen_sync: list[MeteredCall] = []
    seen_async: list[MeteredCall] = []

    async def store(rec: MeteredCall) -> None:
        seen_async.append(rec)

    def broken(_rec: MeteredCall) -> None:
        raise RuntimeError("database down")

    meter = UsageMeter(PRICES, on_record=seen_sync.append)
    meter.add_hook(broken)
    meter.add_hook(store)
    rec = await meter.record(
        "r1", "s1", "anthropic", TokenUsage(10, 20, "claude-sonnet-4-5-2025"), "claude-sonnet-4-5"
    )
    assert seen_sync == [rec] and seen_async == [rec]
    assert (rec.run_id, rec.space_id, rec.provider, rec.model) == (
        "r1",
        "s1",
        "anthropic",
        "claude-sonnet-4-5",
    )
    assert rec.cost_usd == pytest.approx((10 * 3 + 20 * 15) / 1e6)
    assert meter.for_run("r1").requests == 1


async def test_failed_and_incomplete_calls_are_counted_with_zero_tokens() -> None:
    meter = UsageMeter(PRICES)
    await meter.record("r1", "s1", "openai", TokenUsage(), "gpt-4o-mini", status=500)
    await meter.record("r1", "s1", "openai", TokenUsage(), "gpt-4o-mini", status=None)
    await meter.record(
        "r1", "s1", "anthropic", TokenUsage(10, 1), "claude-sonnet-4-5", status=200, incomplete=True
    )
    await meter.record("r1", "s1", "anthropic", TokenUsage(10, 5), "claude-sonnet-4-5", status=200)
    run = meter.pop_run("r1")
    assert (run.requests, run.failed_requests, run.incomplete_requests) == (4, 2, 1)
    assert (run.input_tokens, run.output_tokens) == (20, 6)


async def test_add_counts_at_once_and_its_hooks_survive_the_callers_cancellation() -> None:
    """Recording in a cancelled task's finally: totals before any await, hooks in tasks of
    the meter's own, so cancelling the proxy's handler cannot lose the record."""
    stored: list[MeteredCall] = []
    release = asyncio.Event()

    async def slow_store(rec: MeteredCall) -> None:
        await release.wait()
        stored.append(rec)

    meter = UsageMeter(PRICES, on_record=slow_store)
    started = asyncio.Event()

    async def handler() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            rec = meter.make_record("r1", "s1", "anthropic", TokenUsage(5, 2), status=200)
            meter.add(rec)

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert meter.for_run("r1").requests == 1  # counted synchronously
    release.set()
    await meter.drain()
    assert [r.input_tokens for r in stored] == [5]


async def test_a_record_after_pop_run_is_not_lost_silently_nor_leaked() -> None:
    seen: list[MeteredCall] = []
    meter = UsageMeter(on_record=seen.append)
    await meter.record("r1", "s1", "openai", TokenUsage(1, 1), status=200)
    assert meter.pop_run("r1").requests == 1
    await meter.record("r1", "s1", "openai", TokenUsage(2, 2), status=200)
    # Not a new run entry nobody will ever pop; still the space's and the hooks'.
    assert meter.for_run("r1").requests == 0
    assert meter.for_space("s1").requests == 2
    assert len(seen) == 2


def test_hostile_nesting_in_a_stream_does_not_break_the_meter() -> None:
    """An upstream event nested deeper than Python's parser recurses is skipped, not raised
    into the proxy's relay (which would cut the agent's stream)."""
    from mercury.api.usage_stream import AnthropicStreamUsage, OpenAIStreamUsage

    deep = b"data: " + b"[" * 200_000 + b"\n\n"
    for parser in (AnthropicStreamUsage(), OpenAIStreamUsage()):
        parser.feed(deep)
        parser.feed(b'data: {"type": "message_delta", "usage": {"output_tokens": 3}}\n\n')
        parser.result()
