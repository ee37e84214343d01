"""The fake model server's model speed (time to first token, token rate), seen by the real
anthropic and openai SDKs.

The benchmarks of issue 13 (first visible text, warm vs cold) rest on this pacing, so it
is checked from the client's side: every time is measured from just before the request
was sent, and only lower bounds are asserted (a token never comes before it is due). No
upper bound on wall-clock time: a loaded machine can only make things later.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.model_server import (
    FakeModelServer,
    RecordedRequest,
    Text,
    ToolCall,
    Turn,
    turn_from_json,
)

HELLO = [{"role": "user", "content": "hello"}]
FIRST = 0.3  # seconds to the first token
RATE = 40.0  # tokens a second
# Eight words: eight text deltas in both wire formats.
WORDS = "one two three four five six seven eight"


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer(first_token_delay=FIRST, tokens_per_second=RATE) as server:
        yield server


@pytest.fixture
async def claude(fake: FakeModelServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0) as c:
        yield c


@pytest.fixture
async def gpt(fake: FakeModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0) as c:
        yield c


def assert_paced(arrivals: list[float], first: float, rate: float) -> None:
    """Token k arrived no sooner than first + k / rate after the request was sent."""
    for k, at in enumerate(arrivals):
        due = first + k / rate
        assert at >= due, f"token {k} arrived at {at:.3f}s, before it was due at {due:.3f}s"


def assert_server_paced(rec: RecordedRequest, count: int) -> None:
    """The fake's own write times: the same schedule, counted from when its answer began."""
    assert rec.started_at is not None and rec.received_at is not None
    assert rec.received_at <= rec.started_at
    written = [t - rec.started_at for t in rec.token_times]
    assert len(written) == count
    assert_paced(written, rec.first_token_delay, float(rec.tokens_per_second or 0))


# --------------------------------------------------------------------------- streams


async def test_anthropic_stream_paces_text_and_tool_deltas(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([[Text(WORDS), ToolCall("bash", {"command": "echo hi"})]])
    arrivals: dict[str, list[float]] = {}
    text = ""
    t0 = time.monotonic()
    stream = await claude.messages.create(model="m", max_tokens=100, messages=HELLO, stream=True)
    async for event in stream:
        arrivals.setdefault(event.type, []).append(time.monotonic() - t0)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    assert text == WORDS  # pacing changes when, not what

    # 8 words, then the tool call's arguments in two halves: 10 tokens, all paced.
    deltas = arrivals["content_block_delta"]
    assert len(deltas) == 10
    assert_paced(deltas, FIRST, RATE)
    # The opening events come first (ordering only: they are not held back for the token).
    assert arrivals["message_start"][0] <= deltas[0]
    assert arrivals["content_block_start"][0] <= deltas[0]
    assert arrivals["message_stop"][0] >= deltas[-1]

    assert_server_paced(fake.requests[0], 10)


async def test_anthropic_sdk_text_stream_starts_after_the_first_token_delay(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Text(WORDS)])
    arrivals: list[float] = []
    t0 = time.monotonic()
    async with claude.messages.stream(model="m", max_tokens=100, messages=HELLO) as stream:
        async for _piece in stream.text_stream:
            arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 8
    assert_paced(arrivals, FIRST, RATE)


async def test_openai_stream_paces_content_and_argument_chunks(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([[Text(WORDS), ToolCall("bash", {"command": "ls"})]])
    content: list[float] = []
    arguments: list[float] = []
    text = ""
    t0 = time.monotonic()
    stream = await gpt.chat.completions.create(
        model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        at = time.monotonic() - t0
        for choice in chunk.choices:
            if choice.delta.content:
                content.append(at)
                text += choice.delta.content
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.arguments:
                    arguments.append(at)
    assert text == WORDS
    assert (len(content), len(arguments)) == (8, 2)
    assert_paced(content + arguments, FIRST, RATE)
    # The role chunk, the tool call's opening chunk and the finish and usage chunks are
    # not tokens: 10 of the 14 chunks are.
    assert [name for _, name in fake.requests[0].events].count("chunk") == 14
    assert_server_paced(fake.requests[0], 10)


# --------------------------------------------------------------------------- not streamed


async def test_anthropic_whole_answer_waits_for_the_last_token(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script([Text(WORDS)])
    t0 = time.monotonic()
    msg = await claude.messages.create(model="m", max_tokens=100, messages=HELLO)
    elapsed = time.monotonic() - t0
    assert msg.content[0].type == "text" and msg.content[0].text == WORDS
    # The whole answer: the first token's delay plus the other seven at the rate.
    assert elapsed >= FIRST + 7 / RATE


async def test_openai_whole_answer_waits_for_the_last_token(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.script([[Text(WORDS), ToolCall("bash", {"command": "ls"})]])
    t0 = time.monotonic()
    out = await gpt.chat.completions.create(model="m", messages=HELLO)
    elapsed = time.monotonic() - t0
    assert out.choices[0].message.content == WORDS
    assert elapsed >= FIRST + 9 / RATE  # eight words and two argument halves


# --------------------------------------------------------------------------- settings


async def test_a_turn_sets_its_own_speed_and_the_server_default_can_change(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script(
        [
            Turn([Text(WORDS)], first_token_delay=0.5, tokens_per_second=10),
            Turn([Text(WORDS)], first_token_delay=0.0),  # the server's rate still applies
            Text(WORDS),
        ]
    )
    t0 = time.monotonic()
    await claude.messages.create(model="m", max_tokens=100, messages=HELLO)
    assert time.monotonic() - t0 >= 0.5 + 7 / 10
    await claude.messages.create(model="m", max_tokens=100, messages=HELLO)
    fake.first_token_delay, fake.tokens_per_second = 0.0, None
    await claude.messages.create(model="m", max_tokens=100, messages=HELLO)
    speeds = [(r.first_token_delay, r.tokens_per_second) for r in fake.requests]
    assert speeds == [(0.5, 10), (0.0, RATE), (0.0, None)]


async def test_no_pacing_by_default() -> None:
    async with FakeModelServer() as plain:
        plain.script([Text(WORDS)])
        async with anthropic.AsyncAnthropic(base_url=plain.url, api_key="k") as client:
            await client.messages.create(model="m", max_tokens=100, messages=HELLO)
        (rec,) = plain.requests
        assert (rec.first_token_delay, rec.tokens_per_second) == (0.0, None)


def test_speed_is_scriptable_as_json_over_http() -> None:
    turn = turn_from_json({"text": "a b", "first_token_delay": 0.2, "tokens_per_second": 5})
    assert isinstance(turn, Turn)
    assert (turn.first_token_delay, turn.tokens_per_second) == (0.2, 5.0)
    with FakeModelServer() as fake:
        req = urllib.request.Request(
            fake.url + "/_fake/script",
            data=json.dumps({"turns": [{"text": "a b c", "first_token_delay": 0.25}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()
        client = openai.OpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0)
        t0 = time.monotonic()
        out = client.chat.completions.create(model="m", messages=HELLO)
        assert time.monotonic() - t0 >= 0.25
        assert out.choices[0].message.content == "a b c"
        client.close()
        with urllib.request.urlopen(fake.url + "/_fake/requests", timeout=10) as resp:
            recorded: list[dict[str, Any]] = json.loads(resp.read())
        assert recorded[0]["first_token_delay"] == 0.25
        assert recorded[0]["started_at"] >= recorded[0]["received_at"]


@pytest.mark.parametrize(
    ("first", "rate"), [(-0.1, None), (0.0, 0.0), (0.0, -5.0)], ids=["negative", "zero", "neg"]
)
def test_impossible_speeds_are_refused(first: float, rate: float | None) -> None:
    with pytest.raises(ValueError):
        FakeModelServer(first_token_delay=first, tokens_per_second=rate)
    with pytest.raises(ValueError):
        Turn([Text("x")], first_token_delay=first, tokens_per_second=rate)
