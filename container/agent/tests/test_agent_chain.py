"""The model chain: failure classification, backoff, legs, retries and the time budget."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from mercury_agent.chain import (
    ActionKind,
    Chain,
    ChainError,
    backoff,
    classify,
)
from mercury_agent.contract import LegSpec
from mercury_agent.conversation import (
    Message,
    ModelReply,
    ModelRequest,
    TextBlock,
)
from mercury_agent.providers import MalformedReply

RETRY, NEXT, FAIL = ActionKind.RETRY, ActionKind.NEXT_LEG, ActionKind.FAIL


def _response(status: int, url: str = "http://relay/v1/messages") -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("POST", url))


def anthropic_error(status: int, error_type: str, **details: str) -> anthropic.APIStatusError:
    """An error as AsyncAnthropic raises it: the whole body is kept."""
    error: dict[str, Any] = {"type": error_type, "message": f"fake {error_type}"}
    if details:
        error["details"] = details
    body = {"type": "error", "error": error}
    client = anthropic.AsyncAnthropic(api_key="k", base_url="http://relay")
    return client._make_status_error(f"Error code: {status}", body=body, response=_response(status))


def openai_error(status: int, error_type: str, code: str | None = None) -> openai.APIStatusError:
    """An error as AsyncOpenAI raises it: only the inner "error" object is kept."""
    body = {"error": {"message": f"fake {error_type}", "type": error_type, "code": code}}
    client = openai.AsyncOpenAI(api_key="k", base_url="http://relay/v1")
    return client._make_status_error(f"Error code: {status}", body=body, response=_response(status))


# ------------------------------------------------------------------ classify


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, FAIL),
        (403, FAIL),
        (402, NEXT),
        (404, NEXT),
        (429, NEXT),
        (400, NEXT),
        (413, NEXT),
        (422, NEXT),
        (408, RETRY),
        (409, RETRY),
        (500, RETRY),
        (502, RETRY),
        (503, RETRY),
        (504, RETRY),
        (529, RETRY),
        (501, NEXT),
    ],
)
def test_classify_status(status: int, kind: ActionKind) -> None:
    assert classify(status).kind is kind


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"type": "invalid_request_error", "code": "context_length_exceeded"}},
        {"type": "invalid_request_error", "code": "context_length_exceeded"},  # OpenAI SDK
        {"type": "error", "error": {"type": "request_too_large"}},
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "details": {"error_code": "prompt_too_long"},
            },
        },
    ],
)
def test_context_too_long_moves_to_the_next_leg(body: dict[str, Any]) -> None:
    action = classify(400, body)
    assert (action.kind, action.reason) == (NEXT, "context_too_long")


def test_a_plain_bad_request_is_not_called_context_too_long() -> None:
    action = classify(400, {"error": {"type": "invalid_request_error", "message": "too long"}})
    # The message text says "too long", but only types and codes count.
    assert (action.kind, action.reason) == (NEXT, "bad_request")


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (anthropic_error(529, "overloaded_error"), RETRY, "overloaded"),
        (anthropic_error(401, "authentication_error"), FAIL, "auth"),
        (anthropic_error(403, "permission_error"), FAIL, "auth"),
        (anthropic_error(429, "rate_limit_error"), NEXT, "rate_limited"),
        (anthropic_error(402, "billing_error"), NEXT, "payment_required"),
        (anthropic_error(402, "spending_cap_reached"), FAIL, "spending_cap"),
        (openai_error(402, "spending_cap_reached"), FAIL, "spending_cap"),
        (anthropic_error(404, "not_found_error"), NEXT, "not_found"),
        (anthropic_error(500, "api_error"), RETRY, "server_error"),
        (anthropic_error(413, "request_too_large"), NEXT, "context_too_long"),
        (
            openai_error(400, "invalid_request_error", "context_length_exceeded"),
            NEXT,
            "context_too_long",
        ),
        (openai_error(401, "invalid_request_error", "invalid_api_key"), FAIL, "auth"),
        (openai_error(429, "rate_limit_exceeded", "rate_limit_exceeded"), NEXT, "rate_limited"),
        (openai_error(503, "server_error"), RETRY, "server_error"),
        (openai_error(408, "timeout"), RETRY, "timeout"),
        (openai_error(409, "conflict"), RETRY, "conflict"),
    ],
)
def test_classify_sdk_status_errors(error: BaseException, kind: ActionKind, reason: str) -> None:
    action = classify(error)
    assert (action.kind, action.reason) == (kind, reason)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (anthropic.APITimeoutError(request=httpx2.Request("POST", "http://x")), RETRY),
        (openai.APITimeoutError(request=httpx2.Request("POST", "http://x")), RETRY),
        (anthropic.APIConnectionError(request=httpx2.Request("POST", "http://x")), RETRY),
        (openai.APIConnectionError(request=httpx2.Request("POST", "http://x")), RETRY),
        (TimeoutError(), RETRY),
        (ConnectionResetError(), RETRY),
        (MalformedReply("no choices"), NEXT),
    ],
)
def test_classify_transport_errors(error: BaseException, kind: ActionKind) -> None:
    assert classify(error).kind is kind


# ------------------------------------------------------------------ backoff


def test_backoff_doubles_from_300_ms_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for n, base in enumerate([0.3, 0.6, 1.2, 2.4, 4.8]):
        for _ in range(50):
            delay = backoff(n, rng)
            assert base <= delay <= base * 1.25


def test_backoff_is_capped_at_12_seconds() -> None:
    rng = random.Random(1)
    assert all(backoff(n, rng) <= 12.0 for n in range(0, 40))
    assert backoff(10, rng) == 12.0


def test_backoff_jitter_comes_from_the_rng() -> None:
    a = [backoff(2, random.Random(1)) for _ in range(3)]
    b = [backoff(2, random.Random(2)) for _ in range(3)]
    assert a[0] == a[1] == a[2]  # same seed, same delay
    assert a[0] != b[0]


# ------------------------------------------------------------------ the chain


class Clock:
    """A manual clock; `sleep` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedBackend:
    """Answers from a script: an exception to raise, or text to reply with."""

    def __init__(self, leg: LegSpec, script: list[Any], clock: Clock, cost_s: float) -> None:
        self.provider, self.model = leg.provider, leg.model
        self.script = script
        self.clock = clock
        self.cost_s = cost_s
        self.calls = 0
        self.timeouts: list[float | None] = []
        self.closed = False

    async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply:
        self.calls += 1
        self.timeouts.append(timeout)
        self.clock.now += self.cost_s
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return ModelReply(Message("assistant", [TextBlock(item)]), 3, 2, self.model)

    async def close(self) -> None:
        self.closed = True


LEGS = [LegSpec("anthropic", "first"), LegSpec("openai", "second"), LegSpec("anthropic", "third")]
REQUEST = ModelRequest(
    system="s", messages=[Message("user", [TextBlock("hi")])], tools=[], max_tokens=10
)


def make_chain(
    scripts: dict[str, list[Any]],
    *,
    retries: int = 2,
    budget: float | None = None,
    cost_s: float = 0.01,
    legs: list[LegSpec] = LEGS,
) -> tuple[Chain, dict[str, ScriptedBackend], Clock]:
    clock = Clock()
    backends: dict[str, ScriptedBackend] = {}

    def factory(leg: LegSpec) -> ScriptedBackend:
        backends[leg.model] = ScriptedBackend(leg, scripts.get(leg.model, []), clock, cost_s)
        return backends[leg.model]

    chain = Chain(
        legs,
        factory,
        retries_per_leg=retries,
        budget_s=budget,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(3),
    )
    return chain, backends, clock


def outcomes(chain: Chain) -> list[tuple[int, str, int | None]]:
    return [(a["leg"], a["outcome"], a["status"]) for a in chain.attempts]


async def test_first_leg_answers() -> None:
    chain, backends, _ = make_chain({"first": ["hello"]})
    reply = await chain.complete(REQUEST)
    assert reply.message.text() == "hello"
    assert outcomes(chain) == [(0, "ok", 200)]
    assert set(backends) == {"first"}  # later legs are never even built
    attempt = chain.attempts[0]
    assert attempt["provider"] == "anthropic" and attempt["model"] == "first"
    assert attempt["duration_ms"] == 10


async def test_overloaded_leg_is_retried_then_the_next_leg_answers() -> None:
    busy = [anthropic_error(529, "overloaded_error") for _ in range(3)]
    chain, backends, clock = make_chain({"first": busy, "second": ["from leg 2"]}, retries=2)
    reply = await chain.complete(REQUEST)
    assert reply.message.text() == "from leg 2"
    assert outcomes(chain) == [
        (0, "retry", 529),
        (0, "retry", 529),
        (0, "next_leg", 529),
        (1, "ok", 200),
    ]
    assert backends["first"].calls == 3
    # Two backoffs (300 ms, 600 ms, each + up to 25 % jitter); none before the next leg.
    assert len(clock.sleeps) == 2
    assert 0.3 <= clock.sleeps[0] <= 0.375 and 0.6 <= clock.sleeps[1] <= 0.75
    assert "overloaded" in chain.attempts[0]["error"]


async def test_retry_succeeds_on_the_same_leg() -> None:
    chain, _, clock = make_chain({"first": [TimeoutError(), "second try"]})
    assert (await chain.complete(REQUEST)).message.text() == "second try"
    assert outcomes(chain) == [(0, "retry", None), (0, "ok", 200)]
    assert len(clock.sleeps) == 1


async def test_auth_failure_stops_at_once() -> None:
    chain, backends, clock = make_chain(
        {"first": [anthropic_error(401, "authentication_error")], "second": ["never"]}
    )
    with pytest.raises(ChainError) as info:
        await chain.complete(REQUEST)
    assert info.value.error_class == "auth"
    assert "401" in str(info.value) and "API key" in str(info.value)
    assert outcomes(chain) == [(0, "fail", 401)]
    assert "second" not in backends
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [402, 404, 429])
async def test_leg_level_failures_move_on_without_retrying(status: int) -> None:
    chain, backends, clock = make_chain(
        {"first": [openai_error(status, "x")], "second": ["ok"]}, retries=5
    )
    await chain.complete(REQUEST)
    assert outcomes(chain) == [(0, "next_leg", status), (1, "ok", 200)]
    assert backends["first"].calls == 1
    assert clock.sleeps == []


async def test_all_legs_failing_is_a_model_error_naming_the_last_failure() -> None:
    chain, _, _ = make_chain(
        {
            "first": [openai_error(429, "rate_limit_exceeded")],
            "second": [openai_error(404, "not_found")],
            "third": [anthropic_error(402, "billing_error")],
        }
    )
    with pytest.raises(ChainError) as info:
        await chain.complete(REQUEST)
    assert info.value.error_class == "model"
    assert "third" in str(info.value) and "402" in str(info.value)
    assert [a["leg"] for a in chain.attempts] == [0, 1, 2]


async def test_the_leg_in_use_sticks_for_later_turns() -> None:
    chain, backends, _ = make_chain(
        {"first": [openai_error(429, "rate_limit_exceeded"), "unused"], "second": ["t1", "t2"]}
    )
    await chain.complete(REQUEST, turn=1)
    reply = await chain.complete(REQUEST, turn=2)
    assert reply.message.text() == "t2"
    assert backends["first"].calls == 1
    assert [(a["turn"], a["leg"]) for a in chain.attempts] == [(1, 0), (1, 1), (2, 1)]


async def test_retries_are_counted_per_request() -> None:
    script = [anthropic_error(503, "api_error"), "a", anthropic_error(503, "api_error"), "b"]
    chain, _, _ = make_chain({"first": script}, retries=1)
    assert (await chain.complete(REQUEST, 1)).message.text() == "a"
    assert (await chain.complete(REQUEST, 2)).message.text() == "b"
    assert all(a["leg"] == 0 for a in chain.attempts)


async def test_budget_ends_the_chain_instead_of_a_backoff_that_would_outlast_it() -> None:
    busy = [anthropic_error(529, "overloaded_error") for _ in range(10)]
    # Calls take 50 ms; backoffs 0.3, 0.6, 1.2 s (+ jitter): the third does not fit in 1.5 s.
    chain, backends, clock = make_chain(
        {"first": busy, "second": ["x"]}, retries=10, budget=1.5, cost_s=0.05
    )
    with pytest.raises(ChainError) as info:
        await chain.complete(REQUEST)
    assert info.value.error_class == "budget"
    assert "1.5 s" in str(info.value)
    assert "529" in str(info.value)  # the last error is named
    assert backends["first"].calls == 3
    assert len(clock.sleeps) == 2
    assert clock.now - 1000.0 < 1.5  # it stopped at once, not when the budget was over
    assert "second" not in backends


async def test_each_call_gets_at_most_the_remaining_budget() -> None:
    chain, backends, _ = make_chain({"first": ["a", "b", "c", "d"]}, budget=10, cost_s=4)
    for turn in (1, 2, 3):
        await chain.complete(REQUEST, turn)
    assert backends["first"].timeouts == [pytest.approx(10), pytest.approx(6), pytest.approx(2)]
    with pytest.raises(ChainError) as info:
        await chain.complete(REQUEST, 4)  # 12 s used: nothing left to call with
    assert info.value.error_class == "budget"
    assert backends["first"].calls == 3


async def test_no_budget_means_no_timeout() -> None:
    chain, backends, _ = make_chain({"first": ["a"]})
    await chain.complete(REQUEST)
    assert backends["first"].timeouts == [None]
    assert chain.remaining() is None


async def test_a_hanging_model_is_cut_off_by_the_budget() -> None:
    class Hanging:
        provider, model = "anthropic", "slow"

        async def complete(self, request: ModelRequest, timeout: float | None) -> ModelReply:
            await asyncio.sleep(30)
            raise AssertionError("not reached")

        async def close(self) -> None:
            pass

    chain = Chain(
        [LegSpec("anthropic", "slow")], lambda leg: Hanging(), retries_per_leg=3, budget_s=0.3
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ChainError) as info:
        await chain.complete(REQUEST)
    assert info.value.error_class == "budget"
    assert loop.time() - started < 5
    assert [a["outcome"] for a in chain.attempts] == ["budget"]


async def test_close_closes_every_backend_built() -> None:
    chain, backends, _ = make_chain({"first": [openai_error(429, "r")], "second": ["x"]})
    await chain.complete(REQUEST)
    await chain.close()
    assert backends["first"].closed and backends["second"].closed


def test_a_chain_needs_a_leg() -> None:
    with pytest.raises(ValueError, match="at least one leg"):
        Chain([], lambda leg: None, retries_per_leg=0, budget_s=None)  # type: ignore[arg-type,return-value]


async def test_the_hosts_spending_cap_stops_the_chain_without_failing_over() -> None:
    chain, backends, _ = make_chain(
        {"first": [anthropic_error(402, "spending_cap_reached")], "second": ["never"]}
    )
    with pytest.raises(ChainError) as info:
        await chain.complete(REQUEST)
    assert info.value.error_class == "spending_cap"
    assert outcomes(chain) == [(0, "fail", 402)]
    assert "second" not in backends
