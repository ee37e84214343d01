"""Token usage: pure extraction from provider responses, and a meter per run and per space.

The model proxy sees every response an agent gets, so usage is counted here, on the host,
from the provider's own numbers - not from whatever the agent reports.

Extraction is pure (bytes or dicts in, `TokenUsage` out) and covers:

- Anthropic Messages JSON: `usage.input_tokens` (+ cache creation/read tokens, which are
  input too) and `usage.output_tokens`.
- OpenAI Chat Completions JSON `usage.prompt_tokens/completion_tokens`; the Responses API
  shape `usage.input_tokens/output_tokens` is understood as well (Codex-style CLIs).

Bodies read as they pass (SSE streams, JSON of any size) are handled incrementally in
`mercury.api.usage_stream`.

The meter records every proxied call, also failed, cut-off and usage-less ones (zero
tokens, with the HTTP status and an `incomplete` flag). `UsageMeter.add` counts a record
synchronously, so a call cancelled at the end of its run is still counted.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

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
    except (ValueError, UnicodeDecodeError, RecursionError):  # hostile nesting too
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
class MeteredCall:
    """One metered model call of one run.

    Not the usage table's row (`mercury.storage.UsageRecord`: a space's tokens and cost
    per day and model); the run executor adds a run's calls up into one of those.

    `status` is the upstream's HTTP status, None when it never answered (unreachable, timed
    out or cancelled before its headers). `incomplete` is True when the answer was not read
    to its end (cut by the upstream or the agent, cancelled when the run ended, never
    came): the provider may then bill more than the tokens counted here.
    """

    run_id: str
    space_id: str
    provider: str
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    status: int | None = None
    incomplete: bool = False
    # Whom the call is counted against by spending caps (from the run's grant).
    user_key: str | None = None
    task_id: int | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def failed(self) -> bool:
        """No 2xx answer: refused, redirected, an error, or none at all."""
        return self.status is None or not 200 <= self.status < 300


@dataclass
class UsageTotals:
    """Sums over many records. `cost_usd` is None until a priced record arrives.

    `requests` counts every call, failed and incomplete ones included (also in their own
    counters), so a run's number of model calls is never understated.
    """

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    unpriced_requests: int = 0
    failed_requests: int = 0
    incomplete_requests: int = 0

    def add(self, record: MeteredCall) -> None:
        self.requests += 1
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        if record.cost_usd is None:
            self.unpriced_requests += 1
        else:
            self.cost_usd = (self.cost_usd or 0.0) + record.cost_usd
        self.failed_requests += record.failed
        self.incomplete_requests += record.incomplete

    def copy(self) -> UsageTotals:
        return UsageTotals(**vars(self))


UsageHook = Callable[[MeteredCall], Awaitable[None] | None]

# How many popped run ids the meter remembers, to tell a late record from a new run.
_POPPED_MEMORY = 4096


class UsageMeter:
    """Totals per run and per space, plus hooks that persist each record (e.g. to the DB).

    Runs are kept until `pop_run` (call it when a run ends, after the model proxy's
    `close_run`, which waits for the run's calls still in flight); spaces accumulate for
    the process lifetime (the database is the durable record, via a hook). A record that
    still arrives for a popped run is counted for its space and passed to the hooks, and
    logged as late: it can no longer change the totals `pop_run` returned.
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
        self._popped: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        # Async hooks run in tasks of their own, so a cancelled caller cannot cut them off.
        self._hook_tasks: set[asyncio.Task[None]] = set()

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
        *,
        status: int | None = None,
        incomplete: bool = False,
        user_key: str | None = None,
        task_id: int | None = None,
    ) -> MeteredCall:
        """Price `usage`: by the model asked for (the price table's names), else as reported."""
        return MeteredCall(
            run_id=run_id,
            space_id=space_id,
            provider=provider,
            model=requested_model or usage.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost_usd(self._prices, usage, requested_model, usage.model),
            status=status,
            incomplete=incomplete,
            user_key=user_key,
            task_id=task_id,
        )

    def add(self, rec: MeteredCall) -> asyncio.Future[None]:
        """Count `rec` now and start the hooks; the future is done when its hooks are.

        Synchronous up to the returned future, so it is safe in the `finally` of a task
        being cancelled: the totals are updated before anything can interrupt it. Sync hooks
        run here; async ones in tasks the meter keeps until they finish.
        """
        with self._lock:
            if rec.run_id in self._popped:
                log.warning(
                    "usage arrived after the run's totals were taken",
                    run_id=rec.run_id,
                    space_id=rec.space_id,
                )
            else:
                self._runs.setdefault(rec.run_id, UsageTotals()).add(rec)
            self._spaces.setdefault(rec.space_id, UsageTotals()).add(rec)
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Task[None]] = []
        for hook in list(self._hooks):
            try:
                result = hook(rec)
            except Exception:
                # The response already reached the agent; a failing store must not undo it.
                log.exception("usage hook failed", run_id=rec.run_id, space_id=rec.space_id)
                continue
            if inspect.isawaitable(result):
                task = loop.create_task(self._run_hook(result, rec))
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_tasks.discard)
                pending.append(task)
        if not pending:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        return asyncio.gather(*pending)

    @staticmethod
    async def _run_hook(result: Awaitable[None], rec: MeteredCall) -> None:
        try:
            await result
        except Exception:
            log.exception("usage hook failed", run_id=rec.run_id, space_id=rec.space_id)

    async def record(
        self,
        run_id: str,
        space_id: str,
        provider: str,
        usage: TokenUsage,
        requested_model: str | None = None,
        *,
        status: int | None = None,
        incomplete: bool = False,
    ) -> MeteredCall:
        """Add one call's usage to its run and space, then wait for the hooks."""
        rec = self.make_record(
            run_id, space_id, provider, usage, requested_model, status=status, incomplete=incomplete
        )
        await asyncio.shield(self.add(rec))
        return rec

    async def drain(self) -> None:
        """Wait until every async hook started so far has finished (e.g. before shutdown)."""
        while self._hook_tasks:
            await asyncio.gather(*list(self._hook_tasks), return_exceptions=True)

    def for_run(self, run_id: str) -> UsageTotals:
        with self._lock:
            return (self._runs.get(run_id) or UsageTotals()).copy()

    def for_space(self, space_id: str) -> UsageTotals:
        with self._lock:
            return (self._spaces.get(space_id) or UsageTotals()).copy()

    def pop_run(self, run_id: str) -> UsageTotals:
        """The run's totals, forgotten afterwards (call when the run ends).

        Calls of the run still in flight would be missed: await the model proxy's
        `close_run(run_id)` first.
        """
        with self._lock:
            self._popped[run_id] = None
            while len(self._popped) > _POPPED_MEMORY:
                self._popped.popitem(last=False)
            return self._runs.pop(run_id, None) or UsageTotals()
