"""What the model writes, parsed from its streamed answer (mercury.api.stream_events).

The Anthropic and OpenAI Chat streams are recorded from the fake model server (the real
wire formats), the Responses API stream and the odd cases are literal SSE. Every stream is
fed split at every byte offset - also re-encoded as raw UTF-8 (so splits fall inside a
character) and with CRLF or CR line ends - and must give the same events.
"""

from __future__ import annotations

import http.client
import json
import tracemalloc
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import structlog

from mercury.api.stream_events import (
    NAME_MAX,
    AnthropicStreamEvents,
    CallEnded,
    CallStarted,
    OpenAIStreamEvents,
    StreamEvent,
    StreamEventParser,
    StreamHooks,
    TextDelta,
    ToolCall,
    stream_event_parser,
)
from mercury.api.usage import Provider
from tests.fakes import model_server as fm

TEXT = "Let me look: naïve café, 你好 🌍 — done."
REPLY = [
    fm.Text(TEXT),
    fm.ToolCall("bash", {"command": "ls /space"}),
    fm.ToolCall("read_file", {"path": "notes.md"}),
]
EXPECTED: list[StreamEvent] = [TextDelta(TEXT), ToolCall("bash"), ToolCall("read_file")]


def _record(path: str, body: dict[str, Any]) -> bytes:
    """The raw bytes of one streamed answer of the fake model server."""
    with fm.FakeModelServer() as fake:
        fake.script([fm.Turn(REPLY)])
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Type", "").startswith("text/event-stream")
            return resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def recorded() -> dict[str, bytes]:
    return {
        "anthropic": _record(
            "/v1/messages",
            {"model": "claude-test", "max_tokens": 50, "messages": [], "stream": True},
        ),
        "openai": _record(
            "/v1/chat/completions",
            {
                "model": "gpt-test",
                "messages": [],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ),
    }


def raw_utf8(stream: bytes) -> bytes:
    """The same stream with its JSON re-encoded unescaped: multi-byte UTF-8 on the wire,
    as the providers send it (the fake escapes everything to ASCII)."""
    out = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            line = b"data: " + json.dumps(json.loads(line[6:]), ensure_ascii=False).encode()
        out.append(line)
    return b"\n".join(out)


def merged(events: Sequence[StreamEvent]) -> list[StreamEvent]:
    """Consecutive text joined: how events split across chunks compare with one chunk's."""
    out: list[StreamEvent] = []
    for event in events:
        if isinstance(event, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + event.text)
        else:
            out.append(event)
    return out


def feed_all(parser: StreamEventParser, chunks: Sequence[bytes]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.flush()


def line_endings(stream: bytes) -> Iterator[tuple[str, bytes]]:
    yield "LF", stream
    yield "CRLF", stream.replace(b"\n", b"\r\n")
    yield "CR", stream.replace(b"\n", b"\r")


def assert_every_split(provider: Provider, stream: bytes, expected: list[StreamEvent]) -> None:
    for ending, variant in line_endings(stream):
        whole = feed_all(stream_event_parser(provider), [variant])
        assert whole == expected, ending  # one chunk: its texts merged, nothing else
        for cut in range(len(variant) + 1):
            events = feed_all(stream_event_parser(provider), [variant[:cut], variant[cut:]])
            assert merged(events) == expected, (ending, cut)
        # Byte by byte: the worst a network can do.
        single = feed_all(stream_event_parser(provider), [bytes([b]) for b in variant])
        assert merged(single) == expected, ending


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("encoding", ["as recorded", "raw utf-8"])
def test_recorded_stream_split_at_every_byte(
    recorded: dict[str, bytes], provider: Provider, encoding: str
) -> None:
    stream = recorded[provider]
    if encoding == "raw utf-8":
        stream = raw_utf8(stream)
        assert "🌍".encode() in stream
    assert_every_split(provider, stream, EXPECTED)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_text_comes_out_as_each_event_completes(
    recorded: dict[str, bytes], provider: Provider
) -> None:
    """Byte by byte, a word is reported by the very byte that completes its event - not
    held back for the end of the answer."""
    parser = stream_event_parser(provider)
    seen: list[tuple[int, StreamEvent]] = []
    stream = raw_utf8(recorded[provider])
    for i in range(len(stream)):
        seen += [(i, e) for e in parser.feed(stream[i : i + 1])]
    texts = [(i, e) for i, e in seen if isinstance(e, TextDelta)]
    assert len(texts) == len(fm._pieces(TEXT)) > 3  # one per word, as the fake streamed them
    assert [e.text for _, e in texts] == fm._pieces(TEXT)
    for i, _ in texts:
        assert stream[i - 1 : i + 1] == b"\n\n"  # the blank line that ended the event
    assert seen[-1][0] < len(stream) - 20  # ... and the tool calls came before the end


def named_sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    """`event:` + `data:` frames with raw UTF-8 JSON, as the providers send them."""
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
        for name, data in events
    )


def _block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {
        "type": "content_block_start",
        "index": index,
        "content_block": block,
    }


def _block_delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


ANTHROPIC_THINKING = named_sse(
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
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        },
    ),
    _block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    _block_delta(0, {"type": "thinking_delta", "thinking": "secret plan"}),
    _block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
    ("ping", {"type": "ping"}),
    _block_start(1, {"type": "text", "text": ""}),
    _block_delta(1, {"type": "text_delta", "text": "Searching "}),
    _block_delta(
        1, {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "x"}}
    ),
    _block_start(
        2, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    ),
    _block_delta(2, {"type": "input_json_delta", "partial_json": '{"query": "x"}'}),
    _block_start(3, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}),
    _block_start(4, {"type": "text", "text": ""}),
    _block_delta(4, {"type": "text_delta", "text": "found it."}),
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
)


def test_anthropic_thinking_citations_server_tools_and_errors() -> None:
    assert_every_split(
        "anthropic",
        ANTHROPIC_THINKING,
        [TextDelta("Searching "), ToolCall("web_search"), TextDelta("found it.")],
    )


def _responses_event(kind: str, n: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, "sequence_number": n, **fields}


RESPONSES = named_sse(
    _responses_event(
        "response.created",
        0,
        response={"id": "resp_1", "status": "in_progress", "model": "gpt-5", "output": []},
    ),
    _responses_event(
        "response.output_item.added",
        1,
        output_index=0,
        item={"id": "rs_1", "type": "reasoning", "summary": []},
    ),
    _responses_event(
        "response.reasoning_summary_text.delta", 2, item_id="rs_1", delta="thinking hard"
    ),
    _responses_event(
        "response.output_item.added",
        3,
        output_index=1,
        item={"id": "msg_1", "type": "message", "role": "assistant", "content": []},
    ),
    _responses_event(
        "response.content_part.added",
        4,
        item_id="msg_1",
        part={"type": "output_text", "text": "", "annotations": []},
    ),
    _responses_event("response.output_text.delta", 5, item_id="msg_1", delta="Grüße, "),
    _responses_event("response.output_text.delta", 6, item_id="msg_1", delta="world 🌍"),
    _responses_event("response.output_text.done", 7, item_id="msg_1", text="Grüße, world 🌍"),
    _responses_event(
        "response.output_item.added",
        8,
        output_index=2,
        item={"id": "fc_1", "type": "function_call", "arguments": "", "name": "shell"},
    ),
    _responses_event(
        "response.function_call_arguments.delta", 9, item_id="fc_1", delta='{"cmd": ["ls"]}'
    ),
    _responses_event(  # the same call, done: not a second one
        "response.output_item.done",
        10,
        output_index=2,
        item={"id": "fc_1", "type": "function_call", "arguments": "{}", "name": "shell"},
    ),
    _responses_event(
        "response.output_item.added",
        11,
        output_index=3,
        item={"id": "ctc_1", "type": "custom_tool_call", "name": "apply_patch", "input": ""},
    ),
    _responses_event(
        "response.completed",
        12,
        response={
            "id": "resp_1",
            "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "x"}]}],
            "usage": {"input_tokens": 5, "output_tokens": 7},
        },
    ),
)


def test_openai_responses_api() -> None:
    assert_every_split(
        "openai",
        RESPONSES,
        [TextDelta("Grüße, world 🌍"), ToolCall("shell"), ToolCall("apply_patch")],
    )


def _chunk(*choices: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": choices}).encode()


def test_openai_tool_calls_parallel_repeated_names_and_legacy_function_call() -> None:
    stream = b"\n\n".join(
        [
            _chunk({"index": 0, "delta": {"role": "assistant", "content": None}}),
            # Two calls announced in one chunk, as some servers do.
            _chunk(
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "a", "function": {"name": "grep", "arguments": ""}},
                            {"index": 1, "id": "b", "function": {"name": "cat", "arguments": ""}},
                        ]
                    },
                }
            ),
            # A server that repeats the name on every arguments delta: still one call each.
            _chunk(
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "function": {"name": "grep", "arguments": "{}"}}
                        ]
                    },
                }
            ),
            _chunk(
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 1, "function": {"name": "cat", "arguments": "{}"}}]
                    },
                }
            ),
            # n=2: the second choice's call 0 is another call.
            _chunk(
                {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"name": "ls"}}]}}
            ),
            # No index at all: reported every time the name comes.
            _chunk({"delta": {"tool_calls": [{"function": {"name": "noindex"}}]}}),
            # The deprecated functions API.
            _chunk({"index": 0, "delta": {"function_call": {"name": "legacy", "arguments": ""}}}),
            _chunk({"index": 0, "delta": {"function_call": {"arguments": "{}"}}}),
            # Reasoning of OpenAI-compatible servers is not answer text.
            _chunk({"index": 0, "delta": {"reasoning_content": "hmm", "reasoning": "hmm"}}),
            b"data: [DONE]",
            b"",
        ]
    )
    assert_every_split(
        "openai",
        stream,
        [
            ToolCall("grep"),
            ToolCall("cat"),
            ToolCall("ls"),
            ToolCall("noindex"),
            ToolCall("legacy"),
        ],
    )


def _sse(*payloads: str) -> bytes:
    return b"".join(b"data: " + p.encode() + b"\n\n" for p in payloads)


def test_malformed_anthropic_events_are_skipped() -> None:
    good = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}'
    stream = (
        _sse(
            "not json",
            "[1, 2]",
            '"a string"',
            "null",
            '{"type":"content_block_delta","delta":"text"}',
            '{"type":"content_block_delta","delta":{"type":"text_delta","text":5}}',
            '{"type":"content_block_delta","delta":{"type":"text_delta"}}',
            '{"type":"content_block_delta","delta":{"type":"text_delta","text":""}}',
            '{"type":"content_block_start","content_block":null}',
            '{"type":"content_block_start","content_block":{"type":"tool_use","name":["x"]}}',
            '{"type":"content_block_start","content_block":{"type":"tool_use","name":""}}',
            '{"type":"content_block_start","content_block":{"type":"tool_use"}}',
            '{"type":["content_block_delta"]}',
            "[" * 100_000,  # nested past the recursion limit
            '{"type":"content_block_delta","delta":{"type":"text_delta","text":"a',  # cut
        )
        + b"data: \xff\xfe{broken utf-8\n\n"
        + b": a comment\n\nevent: only a name\n\nid: 7\nretry: 10\n\n"
        + _sse(good)
    )
    assert feed_all(AnthropicStreamEvents(), [stream]) == [TextDelta("ok")]


def test_malformed_openai_events_are_skipped() -> None:
    stream = _sse(
        "[DONE]",
        " [DONE] ",
        '{"choices": "x"}',
        '{"choices": [null, 1, "s", {"delta": null}, {"delta": []}]}',
        '{"choices": [{"delta": {"content": 7, "tool_calls": "x", "function_call": 3}}]}',
        '{"choices": [{"delta": {"tool_calls": [null, 1, {"function": "x"}, {"function": {}}]}}]}',
        '{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": 3}}]}}]}',
        '{"choices": [{"index": "0", "delta": {"tool_calls": [{"index": "0", "function": {}}]}}]}',
        '{"type": "response.output_text.delta", "delta": null}',
        '{"type": "response.output_text.delta"}',
        '{"type": "response.output_item.added", "item": "x"}',
        '{"type": "response.output_item.added", "item": {"type": "function_call"}}',
        '{"type": "response.output_item.added", "item": {"type": "message", "name": "x"}}',
        '{"type": 5, "choices": [{"delta": {"content": "still chat"}}]}',
        '{"type": "error", "error": {"message": "boom"}}',
        "{" * 100_000,
        '{"choices": [{"delta": {"content": "ok"}}]}',
    )
    assert feed_all(OpenAIStreamEvents(), [stream]) == [TextDelta("still chatok")]


def test_tool_names_are_cut_to_a_bounded_length() -> None:
    long = "x" * 50_000
    anthropic = _sse(
        json.dumps(
            {"type": "content_block_start", "content_block": {"type": "tool_use", "name": long}}
        )
    )
    openai = _sse(
        json.dumps({"choices": [{"delta": {"tool_calls": [{"function": {"name": long}}]}}]})
    )
    assert feed_all(AnthropicStreamEvents(), [anthropic]) == [ToolCall("x" * NAME_MAX)]
    assert feed_all(OpenAIStreamEvents(), [openai]) == [ToolCall("x" * NAME_MAX)]


def _anthropic_text(text: str) -> bytes:
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }
    return (
        b"event: content_block_delta\r\ndata: "
        + json.dumps(delta, ensure_ascii=False).encode()
        + b"\r\n\r\n"
    )


def test_a_big_delta_under_the_line_limit_arrives_whole() -> None:
    big = "é" * (300 * 1024)  # 600 KiB of UTF-8 in one event, fed in 64 KiB pieces
    stream = _anthropic_text("before ") + _anthropic_text(big) + _anthropic_text(" after")
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    assert merged(feed_all(AnthropicStreamEvents(), chunks)) == [
        TextDelta("before " + big + " after")
    ]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_huge_line_is_dropped_in_bounded_memory(provider: Provider) -> None:
    """A 16 MiB line (a hostile or broken upstream) costs at most about the line limit and
    is skipped whole; the events around it still come through."""
    if provider == "anthropic":
        before, after = _anthropic_text("before"), _anthropic_text("after")
    else:
        before = _sse('{"choices": [{"delta": {"content": "before"}}]}')
        after = _sse('{"choices": [{"delta": {"content": "after"}}]}')
    piece = b"a" * 65536
    parser = stream_event_parser(provider)
    events = parser.feed(before + b"data: " + piece)
    tracemalloc.start()
    try:
        for _ in range(256):
            events += parser.feed(piece)
        events += parser.feed(b"tail of the huge line\r\n\r\n" + after)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == [TextDelta("before"), TextDelta("after")]
    assert peak < 4 * 1024**2


# --------------------------------------------------------------------------- hooks


def test_a_failing_hook_is_logged_once_per_run_without_text_and_others_still_run() -> None:
    hooks = StreamHooks()
    got: list[tuple[str, StreamEvent]] = []

    def broken(run_id: str, event: StreamEvent) -> None:
        raise RuntimeError(f"cannot show {event!r}")

    hooks.add(broken)
    hooks.add(lambda run_id, event: got.append((run_id, event)))
    assert hooks
    secret_text = "the model's private words"
    body = _sse(json.dumps({"choices": [{"delta": {"content": secret_text}}]}))
    with structlog.testing.capture_logs() as logs:
        for run in ("run-1", "run-1", "run-2"):
            tap = hooks.tap(run, "openai", "gpt-test")
            tap.start()
            tap.feed(body)
            tap.end(True)
            tap.end(False)  # a second end emits nothing
    failures = [e for e in logs if e["event"] == "stream hook failed"]
    assert [(e["run_id"], e["error"]) for e in failures] == [
        ("run-1", "RuntimeError"),
        ("run-2", "RuntimeError"),
    ]
    assert secret_text not in repr(logs)
    one_call = [CallStarted("openai", "gpt-test"), TextDelta(secret_text), CallEnded(True)]
    assert [e for r, e in got if r == "run-1"] == one_call * 2
    assert [e for r, e in got if r == "run-2"] == one_call
    hooks.forget("run-1")
    with structlog.testing.capture_logs() as logs:
        hooks.emit("run-1", CallEnded(False))
    assert [e["run_id"] for e in logs] == ["run-1"]


def test_a_tap_never_started_emits_nothing_and_a_cut_one_ends_incomplete() -> None:
    hooks = StreamHooks()
    got: list[StreamEvent] = []
    hooks.add(lambda _run, event: got.append(event))
    tap = hooks.tap("r", "anthropic", None)
    tap.feed(_anthropic_text("ignored"))
    tap.end(False)
    assert got == []
    tap = hooks.tap("r", "anthropic", None)
    tap.start()
    tap.start()
    tap.feed(_anthropic_text("half")[:-3])  # the event is not complete: no text
    tap.end(False)
    tap.feed(_anthropic_text("late"))
    assert got == [CallStarted("anthropic", None), CallEnded(False)]
