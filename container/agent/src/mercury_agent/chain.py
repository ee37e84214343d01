"""The model chain: ordered legs, one carrying the whole run unless it fails.

What a failure means is decided from the SDKs' typed errors and HTTP status codes (never
from message text), by the pure `classify`:

- 401/403: the credentials are refused -> stop now (`fail`); no other leg does better,
  since every leg goes through the same host and the same keys.
- 402 `spending_cap_reached`: the host's spending cap is reached -> stop now (`fail`),
  for the same reason; the host ends the run with reason "budget" whatever we report.
- 402/404/429/413/422, context too long, other 4xx (e.g. a server without tool support)
  -> this leg cannot serve the run (`next_leg`).
- 408/409/5xx/529, timeouts, connection errors -> transient (`retry` the same leg after
  `backoff`, `retries_per_leg` times, then the next leg).

A total time budget bounds everything: each call gets at most the remaining time, and a
backoff that would outlast it ends the chain at once with a "budget" error. Every call is
recorded as an attempt for result.json.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mercury_agent.contract import (
    AUTH,
    BUDGET,
    MODEL,
    SPENDING_CAP,
    SPENDING_CAP_ERROR,
    AgentError,
    LegSpec,
)
from mercury_agent.conversation import ModelReply, ModelRequest
from mercury_agent.providers import Backend, MalformedReply

BACKOFF_BASE_S = 0.3
BACKOFF_CAP_S = 12.0
# Jitter is a fraction of the delay, so retries of parallel runs spread out.
BACKOFF_JITTER = 0.25

# Error types/codes that mean "the conversation no longer fits this model's context".
_CONTEXT_CODES = frozenset(
    {
        "context_length_exceeded",  # OpenAI (error.code)
        "model_context_window_exceeded",
        "prompt_too_long",  # Anthropic (error.details.error_code)
        "request_too_large",  # Anthropic 413 (error.type)
        "string_above_max_length",
    }
)


class ActionKind(StrEnum):
    RETRY = "retry"
    NEXT_LEG = "next_leg"
    FAIL = "fail"


@dataclass(frozen=True)
class Action:
    """What to do after a failed call, and a short machine-readable reason."""

    kind: ActionKind
    reason: str


# The SDKs are imported only by the legs that use them (importing both costs about a
# second per run); an SDK that is not loaded cannot have raised anything.
_SDKS = ("anthropic", "openai")
_BASE_ERRORS = {"anthropic": "AnthropicError", "openai": "OpenAIError"}


def _sdk_types(name: str) -> tuple[type[BaseException], ...]:
    """`name` (e.g. "APIStatusError") from each SDK that is loaded."""
    found = []
    for sdk in _SDKS:
        module = sys.modules.get(sdk)
        if module is not None:
            found.append(getattr(module, name))
    return tuple(found)


def call_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a model call may raise that the chain classifies; others are bugs."""
    bases = tuple(
        getattr(sys.modules[sdk], base) for sdk, base in _BASE_ERRORS.items() if sdk in sys.modules
    )
    return (*bases, MalformedReply, TimeoutError, OSError)


def _error_fields(body: object) -> list[str]:
    """error.type, error.code, error.details.error_code, from either provider's body shape.

    Anthropic's SDK keeps the whole body ({"type": "error", "error": {...}}); OpenAI's keeps
    only the inner "error" object.
    """
    if not isinstance(body, Mapping):
        return []
    inner = body.get("error") if isinstance(body.get("error"), Mapping) else body
    fields = [inner.get("type"), inner.get("code")]
    details = inner.get("details")
    if isinstance(details, Mapping):
        fields.append(details.get("error_code"))
    return [str(f) for f in fields if f is not None]


def classify_status(status: int, body: object = None) -> Action:
    """The action for an HTTP error status (and its decoded body, when there is one)."""
    if status in (401, 403):
        return Action(ActionKind.FAIL, "auth")
    if status == 402 and SPENDING_CAP_ERROR in _error_fields(body):
        # The host's spending cap: every leg goes through the same host and is refused too.
        return Action(ActionKind.FAIL, "spending_cap")
    if any(f in _CONTEXT_CODES for f in _error_fields(body)):
        return Action(ActionKind.NEXT_LEG, "context_too_long")
    if status in (408, 409):
        return Action(ActionKind.RETRY, "timeout" if status == 408 else "conflict")
    if status == 529:
        return Action(ActionKind.RETRY, "overloaded")
    if status in (501, 505):
        # "Not implemented" is a property of the server, not a passing state.
        return Action(ActionKind.NEXT_LEG, "not_implemented")
    if 500 <= status <= 599:
        return Action(ActionKind.RETRY, "server_error")
    reasons = {402: "payment_required", 404: "not_found", 429: "rate_limited"}
    if status in reasons:
        return Action(ActionKind.NEXT_LEG, reasons[status])
    # Other 4xx (400, 413, 422): this leg rejects the request - e.g. a compatible server
    # without tool support. Another model may accept it; retrying this one will not help.
    return Action(ActionKind.NEXT_LEG, "bad_request")


def classify(error: BaseException | int, body: object = None) -> Action:
    """The action after a failed model call: an SDK exception, or a status and body."""
    if isinstance(error, int):
        return classify_status(error, body)
    status = getattr(error, "status_code", None)
    if isinstance(error, _sdk_types("APIStatusError")) and isinstance(status, int):
        return classify_status(status, getattr(error, "body", None))
    if isinstance(error, (*_sdk_types("APITimeoutError"), TimeoutError)):
        return Action(ActionKind.RETRY, "timeout")
    if isinstance(error, (*_sdk_types("APIConnectionError"), OSError)):
        return Action(ActionKind.RETRY, "connection_error")
    # A 2xx we could not use (schema mismatch, no choices) or another SDK error: this leg
    # does not work for us, another might.
    return Action(ActionKind.NEXT_LEG, "bad_response")


def backoff(n: int, rng: random.Random) -> float:
    """Seconds before retry `n` (0 = first retry): 300 ms x 2^n plus jitter, capped at 12 s."""
    delay = BACKOFF_BASE_S * (2 ** max(0, n))
    return min(BACKOFF_CAP_S, delay * (1 + BACKOFF_JITTER * rng.random()))


def status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def describe(error: BaseException) -> str:
    """A short plain description of a failed call, for logs, attempts and errors."""
    status = status_of(error)
    message = getattr(error, "api_message", None) or _body_message(getattr(error, "body", None))
    if status is not None:
        return f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if isinstance(error, (*_sdk_types("APITimeoutError"), TimeoutError)):
        return "timed out"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text


def _body_message(body: object) -> str | None:
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error") if isinstance(body.get("error"), Mapping) else body
    message = inner.get("message")
    return str(message) if message else None


class ChainError(AgentError):
    """The chain gave up; `error_class` is result.json's (auth, budget, model)."""


@dataclass
class Attempt:
    """One model call, as listed in result.json `attempts`."""

    leg: int
    provider: str
    model: str
    turn: int
    outcome: str  # ok | retry | next_leg | fail | budget
    status: int | None
    duration_ms: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "leg": self.leg,
            "provider": self.provider,
            "model": self.model,
            "turn": self.turn,
            "outcome": self.outcome,
            "status": self.status,
            "duration_ms": self.duration_ms,
        }
        if self.error is not None:
            data["error"] = self.error
        return data


BackendFactory = Callable[[LegSpec], Backend]


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


class Chain:
    """Sends each model request to the current leg, retrying and moving on as classified.

    The leg in use is sticky: once the chain moved on, later turns stay on the new leg.
    `attempts` (a list of dicts) is appended to as calls finish, so a caller that crashes
    later still has them.
    """

    def __init__(
        self,
        legs: list[LegSpec],
        factory: BackendFactory,
        *,
        retries_per_leg: int,
        budget_s: float | None,
        attempts: list[dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        started_at: float | None = None,
    ) -> None:
        if not legs:
            raise ValueError("a chain needs at least one leg")
        self.legs = legs
        self.retries_per_leg = retries_per_leg
        self.budget_s = budget_s
        self.attempts = attempts if attempts is not None else []
        self._factory = factory
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        start = clock() if started_at is None else started_at
        self._deadline = start + budget_s if budget_s is not None else None
        self._backends: dict[int, Backend] = {}
        self.leg_index = 0

    def remaining(self) -> float | None:
        """Seconds left in the budget (None: no budget)."""
        return None if self._deadline is None else self._deadline - self._clock()

    def _backend(self, index: int) -> Backend:
        if index not in self._backends:
            self._backends[index] = self._factory(self.legs[index])
        return self._backends[index]

    async def close(self) -> None:
        for backend in self._backends.values():
            try:
                await backend.close()
            except Exception as exc:  # closing must not mask the run's outcome
                _log(f"closing a model client failed: {exc}")
        self._backends.clear()

    def _record(
        self, turn: int, outcome: str, status: int | None, started: float, error: str | None
    ) -> None:
        leg = self.legs[self.leg_index]
        attempt = Attempt(
            leg=self.leg_index,
            provider=leg.provider,
            model=leg.model,
            turn=turn,
            outcome=outcome,
            status=status,
            duration_ms=round((self._clock() - started) * 1000),
            error=error,
        )
        self.attempts.append(attempt.to_dict())
        where = f"leg {attempt.leg} {leg.provider}/{leg.model} turn {turn}"
        detail = f" ({error})" if error else ""
        _log(f"model call {where}: {outcome}{detail} in {attempt.duration_ms} ms")

    def _budget_error(self, last: str | None) -> ChainError:
        tail = f"; last error: {last}" if last else ""
        return ChainError(
            f"the time budget of {self.budget_s:g} s ran out before the model answered "
            f"({len(self.attempts)} model calls){tail}",
            BUDGET,
        )

    async def complete(self, request: ModelRequest, turn: int = 1) -> ModelReply:
        """The reply of the first leg that answers; ChainError when none does."""
        last_error: str | None = None
        while self.leg_index < len(self.legs):
            leg = self.legs[self.leg_index]
            backend = self._backend(self.leg_index)
            retries = 0
            while True:
                remaining = self.remaining()
                if remaining is not None and remaining <= 0:
                    raise self._budget_error(last_error)
                started = self._clock()
                try:
                    # wait_for enforces the budget even on a request that never answers.
                    reply = await asyncio.wait_for(backend.complete(request, remaining), remaining)
                except call_errors() as exc:
                    action = classify(exc)
                    status = status_of(exc)
                    last_error = f"{leg.provider}/{leg.model}: {describe(exc)}"
                    left = self.remaining()
                    if left is not None and left <= 0:
                        self._record(turn, "budget", status, started, describe(exc))
                        raise self._budget_error(last_error) from exc
                    if action.kind is ActionKind.FAIL:
                        self._record(turn, "fail", status, started, describe(exc))
                        if action.reason == "spending_cap":
                            raise ChainError(
                                f"the host refused the model call: {last_error}", SPENDING_CAP
                            ) from exc
                        raise ChainError(
                            f"the model provider refused the credentials ({last_error}); "
                            "check the API key configured on the Mercury host",
                            AUTH,
                        ) from exc
                    if action.kind is ActionKind.RETRY and retries < self.retries_per_leg:
                        delay = backoff(retries, self._rng)
                        self._record(turn, "retry", status, started, describe(exc))
                        if left is not None and delay >= left:
                            raise self._budget_error(last_error) from exc
                        await self._sleep(delay)
                        retries += 1
                        continue
                    self._record(turn, "next_leg", status, started, describe(exc))
                    break
                self._record(turn, "ok", 200, started, None)
                return reply
            self.leg_index += 1
        raise ChainError(
            f"every model in the chain failed ({len(self.legs)} legs); last error: {last_error}",
            MODEL,
        )
