"""The model proxy: agents reach their model through the host, which adds the provider key.

Routes (behind the host API's token middleware):

    /model/anthropic/{tail}   ->  <anthropic base>/{tail}
    /model/openai/{tail}      ->  <openai base>/{tail without its leading "v1/"}

The agent is given ANTHROPIC_BASE_URL=<relay>/model/anthropic and
OPENAI_BASE_URL=<relay>/model/openai/v1, exactly the shapes the SDKs expect (Anthropic's
base has no /v1 and the SDK appends /v1/messages; an OpenAI-compatible base includes its
version and the SDK appends /chat/completions). So:

- anthropic: base = leg.base_url or https://api.anthropic.com; the tail (`v1/messages`,
  `v1/messages/count_tokens`, ...) is appended as is. A base_url that itself ends in /v1 (a
  common slip) does not double it: `https://gw/v1` + `v1/messages` -> `https://gw/v1/messages`.
- openai: base = leg.base_url or https://api.openai.com/v1. An OpenAI-compatible base_url
  is the full API root *including* its version (`http://ollama:11434/v1`,
  `https://openrouter.ai/api/v1`, `.../v1beta/openai`), so the `v1/` that the agent's base
  URL contributes is dropped and the rest appended: `v1/chat/completions` ->
  `<base>/chat/completions`. A tail without `v1/` is appended unchanged.

The agent is hostile (a prompt injection runs whatever it likes), and what it sends is
forwarded with the operator's key, so each request passes the allow-lists of
`mercury.api.proxy_rules` first:

- method and path: only inference calls and model listing (403 for anything else, and for
  paths with `%`, `\\`, control characters, empty or dot segments);
- the body's "model" (POSTs): one of the chain's models for that provider or of
  `model.allowed` (403 otherwise; 400 for a body that is not JSON). The leg is the chain
  leg with that model, else the provider's first leg; the body is forwarded byte for byte;
- request headers: only an allow-list (no credentials, no organisation/project headers),
  then the host's key.
- spending: with a call guard set (spending caps, pipeline/budget.py), each inference
  call is asked about before it is forwarded; a refused one gets 402
  `spending_cap_reached` with the plain reason, and never reaches the provider.

Redirects are never followed (a cross-origin redirect would re-send the key to another
host): an upstream 3xx becomes a 502 for the agent, without its Location. The query string
is forwarded (`?beta=true`). Answers stream back unbuffered.

Every forwarded call produces exactly one `MeteredCall` - streamed or not, failed (4xx/5xx,
no usage in the body), upstream unreachable, cut off by the upstream or by the agent going
away, or cancelled by `close_run` when its run ends - recorded synchronously in a `finally`,
so cancellation cannot skip it.

What the model writes is observable as it streams (`add_stream_hook`, parsing in
`mercury.api.stream_events`): a 2xx text/event-stream answer gives CallStarted, the events
of each chunk once that chunk was written to the agent (the agent never waits on a hook),
and CallEnded exactly once, in the same `finally` as its usage record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from mercury.api.auth import grant_of, json_error
from mercury.api.proxy_rules import (
    call_refusal,
    duplicate_key_guard,
    forward_request_headers,
    forward_response_headers,
    key_headers,
    model_of,
    model_refusal,
    names_model,
    select_leg,
    upstream_url,
)
from mercury.api.stream_events import StreamHook, StreamHooks, StreamTap
from mercury.api.tokens import RunGrant
from mercury.api.usage import Provider, TokenUsage, UsageMeter
from mercury.api.usage_stream import JsonUsageBuffer, StreamUsageParser, stream_usage_parser
from mercury.config import Config, Secrets
from mercury.logging import get_logger, scrub_text

log = get_logger(__name__)

# Asked before each model call is forwarded: why the run may not spend now, or None.
CallGuard = Callable[[RunGrant], Awaitable[str | None]]

# Request bodies larger than this are parsed in a worker thread, not on the event loop.
_PARSE_INLINE_MAX = 1024**2


class _Call:
    """One request of a run inside the proxy, from routing until its usage is recorded."""

    def __init__(self, run_id: str, task: asyncio.Task[Any] | None) -> None:
        self.run_id = run_id
        self.task = task
        self.recorded = False  # its MeteredCall is counted (set in the exchange's finally)
        self.hooks: asyncio.Future[None] | None = None  # the record's hooks, once started
        self.finished = asyncio.Event()  # out of the proxy, usage recorded and hooks done


class ModelProxy:
    """Forwards /model/<provider>/... to the configured leg with the host's provider key."""

    def __init__(
        self,
        config: Config,
        secrets: Secrets,
        meter: UsageMeter,
        *,
        connect_timeout: float = 30.0,
        read_timeout: float = 600.0,
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._meter = meter
        # No total limit: a stream may run for many minutes. sock_read bounds silence
        # between chunks (a non-streaming reply may think for minutes before its first byte).
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, set[_Call]] = {}
        self._closing: set[str] = set()
        self._stream_hooks = StreamHooks()
        self._guard: CallGuard | None = None

    def set_call_guard(self, guard: CallGuard) -> None:
        """Ask `guard(grant)` before forwarding each inference call (spending caps): a text
        refuses the call with 402 `spending_cap_reached` and that text, unforwarded."""
        self._guard = guard

    def add_stream_hook(self, hook: StreamHook) -> None:
        """Call `hook(run_id, event)` for what every streamed answer from now on writes.

        Synchronous, on the event loop, after each chunk went to the agent: keep it cheap
        (e.g. store the latest text and let another task edit the chat). One that raises is
        logged once per run and ignored; the call goes on.
        """
        self._stream_hooks.add(hook)

    async def start(self) -> None:
        if self._session is None:
            # trust_env: operators behind an egress proxy set HTTPS_PROXY / NO_PROXY.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=True)

    async def close(self) -> None:
        """Close every run's calls still in flight (metering them), then the session."""
        for run_id in list(self._inflight):
            await self.close_run(run_id)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/model/anthropic/{tail:.*}", self.handle_anthropic)
        app.router.add_route("*", "/model/openai/{tail:.*}", self.handle_openai)

    async def handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, "anthropic")

    async def handle_openai(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, "openai")

    def in_flight(self, run_id: str) -> int:
        """How many calls of `run_id` are inside the proxy now (for tests and status)."""
        return len(self._inflight.get(run_id, ()))

    async def close_run(self, run_id: str) -> None:
        """End the model calls of a run that is over, and wait until each is metered.

        Call it when the run ends, after revoking its token and before
        `UsageMeter.pop_run(run_id)`: otherwise a call still streaming would be recorded
        after the run's totals were taken, and the provider would keep generating (and
        billing) for an answer nobody reads. Every call of `run_id` still in the proxy is
        cancelled: a forwarded one closes its upstream connection (the provider stops) and
        records its usage so far as `incomplete`; one not yet forwarded never is. Returns
        when every such call has recorded its usage and the meter's hooks for it (e.g. the
        database write) have finished, and a streamed one has emitted CallEnded(False).
        Calls of the run arriving meanwhile are refused with 401. Idempotent; a run with no
        call in flight returns at once.
        """
        self._closing.add(run_id)
        try:
            calls = list(self._inflight.get(run_id, ()))
            for call in calls:
                if not call.recorded and call.task is not None and not call.task.done():
                    call.task.cancel()
            for call in calls:
                await call.finished.wait()
        finally:
            self._closing.discard(run_id)
            self._stream_hooks.forget(run_id)

    async def _forward(self, request: web.Request, provider: Provider) -> web.StreamResponse:
        grant = grant_of(request)
        if grant.run_id in self._closing:
            return json_error(401, "authentication_error", "the run has ended")
        # Registered before the first await: close_run sees every call that passed auth.
        call = _Call(grant.run_id, asyncio.current_task())
        self._inflight.setdefault(grant.run_id, set()).add(call)
        try:
            return await self._handle(request, provider, grant, call)
        finally:
            self._settle(call)

    def _settle(self, call: _Call) -> None:
        """Take `call` off the in-flight list once its usage hooks are done (sync)."""

        def finish(_: object = None) -> None:
            calls = self._inflight.get(call.run_id)
            if calls is not None:
                calls.discard(call)
                if not calls:
                    del self._inflight[call.run_id]
            call.finished.set()

        if call.hooks is not None and not call.hooks.done():
            call.hooks.add_done_callback(finish)
        else:
            finish()

    async def _handle(
        self, request: web.Request, provider: Provider, grant: RunGrant, call: _Call
    ) -> web.StreamResponse:
        # The raw (still encoded) path and query, so they go upstream exactly as checked.
        tail = request.rel_url.raw_path.removeprefix(f"/model/{provider}/")
        refusal = call_refusal(provider, request.method, tail)
        if refusal is not None:
            return json_error(403, "permission_error", refusal)
        if select_leg(self._config, provider, None) is None:
            return json_error(
                404,
                "not_found_error",
                f"no {provider} model is configured in model.chain; "
                f"add a leg with provider: {provider}",
            )
        body = b""
        model: str | None = None
        if names_model(request.method):
            body = await request.read()
            try:
                data = await _parse_json(body)
            except (ValueError, RecursionError) as exc:
                return json_error(
                    400,
                    "invalid_request_error",
                    f"the request body is not a JSON object the host can check: {exc}"[:300],
                )
            requested = model_of(data)
            refusal = model_refusal(self._config, provider, requested)
            if refusal is not None:
                return json_error(403, "permission_error", refusal)
            model = requested
            if self._guard is not None:
                # Each call is asked, so retries, fail-over to another leg and parallel
                # streams are all refused once a cap is reached.
                why = await self._guard(grant)
                if why is not None:
                    return json_error(402, "spending_cap_reached", why)
        leg = select_leg(self._config, provider, model)
        assert leg is not None  # the provider has a leg (checked above)
        url = upstream_url(provider, leg, tail, request.rel_url.raw_query_string)
        headers: CIMultiDict[str] = CIMultiDict(forward_request_headers(request.headers.items()))
        secret = (
            self._secrets.anthropic_api_key
            if provider == "anthropic"
            else self._secrets.openai_api_key
        )
        headers.update(key_headers(provider, secret.get_secret_value() if secret else None))
        return await self._exchange(request, provider, grant, call, url, headers, body, model)

    async def _exchange(
        self,
        request: web.Request,
        provider: Provider,
        grant: RunGrant,
        call: _Call,
        url: str,
        headers: CIMultiDict[str],
        body: bytes,
        model: str | None,
    ) -> web.StreamResponse:
        """Send the call upstream, relay the answer, and meter it: exactly once, always."""
        session = self._session
        if session is None:
            raise RuntimeError("ModelProxy.start() was not called")
        upstream_host = _host_of(url)
        ctx = {
            "run_id": grant.run_id,
            "space_id": grant.space_id,
            "provider": provider,
            "model": model,
            "upstream": upstream_host,
        }
        started = time.monotonic()
        upstream: aiohttp.ClientResponse | None = None
        status: int | None = None
        complete = False
        usage_body: StreamUsageParser | JsonUsageBuffer | None = None
        tap: StreamTap | None = None
        try:
            try:
                upstream = await session.request(
                    request.method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = _describe_error(exc)
                log.warning("model upstream unreachable", error=reason, **ctx)
                return json_error(
                    504 if isinstance(exc, TimeoutError) else 502,
                    "upstream_unreachable",
                    f"the host could not reach the model upstream {upstream_host}: {reason}",
                )
            status = upstream.status
            if 300 <= status < 400:
                complete = True  # an answer, not a model's; its body is not wanted
                upstream.close()
                log.warning("model upstream redirected; not followed", status=status, **ctx)
                return json_error(
                    502,
                    "upstream_redirect",
                    f"the model upstream {upstream_host} answered {status} (a redirect); the "
                    f"host does not follow redirects - check the leg's base_url in model.chain",
                )
            content_type = upstream.headers.get("Content-Type", "")
            streamed = "text/event-stream" in content_type
            if streamed:
                usage_body = stream_usage_parser(provider)
                if 200 <= status < 300 and self._stream_hooks:
                    tap = self._stream_hooks.tap(grant.run_id, provider, model)
            elif "json" in content_type:
                usage_body = JsonUsageBuffer()
            resp = web.StreamResponse(status=status, reason=upstream.reason)
            for k, v in forward_response_headers(upstream.headers.items()):
                resp.headers.add(k, v)
            complete = await _relay(request, resp, upstream, usage_body, streamed, tap, ctx)
            return resp
        finally:
            # Synchronous from here on: a cancelled call (close_run, shutdown) is metered too.
            if upstream is not None:
                if complete:
                    upstream.release()
                else:
                    upstream.close()  # also tells the provider to stop generating
            self._record(call, grant, provider, model, usage_body, status, complete)
            if tap is not None:
                tap.end(complete)  # never raises; once, whichever way the call ended
            log.info(
                "model request",
                status=status,
                completed=complete,
                seconds=round(time.monotonic() - started, 3),
                **ctx,
            )

    def _record(
        self,
        call: _Call,
        grant: RunGrant,
        provider: Provider,
        model: str | None,
        usage_body: StreamUsageParser | JsonUsageBuffer | None,
        status: int | None,
        complete: bool,
    ) -> None:
        """Count one call (zero tokens when none were reported); never raises."""
        try:
            usage: TokenUsage | None = None
            if isinstance(usage_body, JsonUsageBuffer):
                usage = usage_body.result(provider)
            elif usage_body is not None:
                usage = usage_body.result()
            rec = self._meter.make_record(
                grant.run_id,
                grant.space_id,
                provider,
                usage or TokenUsage(),
                model,
                status=status,
                incomplete=not complete,
                user_key=grant.user_key,
                task_id=grant.task_id,
            )
            call.hooks = self._meter.add(rec)
        except Exception:
            log.exception("usage record failed", run_id=grant.run_id, space_id=grant.space_id)
        finally:
            call.recorded = True


async def _relay(
    request: web.Request,
    resp: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    usage_body: StreamUsageParser | JsonUsageBuffer | None,
    streamed: bool,
    tap: StreamTap | None,
    ctx: dict[str, Any],
) -> bool:
    """Pass the upstream's answer on as it arrives; True when it reached the agent whole.

    Every chunk is metered before it is written: it was generated whether or not the agent
    is still there. When the agent goes away, a stream (or an answer of unknown type) is
    abandoned at once - closing the upstream stops the provider generating - while a JSON
    answer, already generated, is read to its end for its usage. `tap` sees each chunk
    after it was written: a hook never holds the agent's stream back.
    """
    agent_gone = False

    async def write(data: bytes | None) -> None:
        nonlocal agent_gone
        if agent_gone:
            return
        try:
            if data is None:
                await resp.prepare(request)
            else:
                await resp.write(data)
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            agent_gone = True
            log.info("agent went away during a model call", error=_describe_error(exc), **ctx)

    try:
        await write(None)
        if tap is not None:
            tap.start()
        # iter_any: hand on whatever arrived, at once. This is what makes SSE unbuffered.
        async for chunk in upstream.content.iter_any():
            if usage_body is not None:
                usage_body.feed(chunk)
            await write(chunk)
            if tap is not None:
                tap.feed(chunk)
            if agent_gone and (streamed or not isinstance(usage_body, JsonUsageBuffer)):
                return False
        if agent_gone:
            return False
        await resp.write_eof()
        return True
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # Headers are out, so the status can no longer change. Cut the agent's connection
        # too (no terminating chunk): a cleanly ended but truncated stream would pass for a
        # complete, shorter answer.
        log.warning("model stream interrupted", error=_describe_error(exc), **ctx)
        if request.transport is not None:
            request.transport.close()
        return False


def _parse_strict(body: bytes) -> Any:
    return json.loads(body, object_pairs_hook=duplicate_key_guard)


async def _parse_json(body: bytes) -> Any:
    """The request body as JSON (duplicate keys refused); large ones off the event loop."""
    if not body:
        raise ValueError("empty body")
    if len(body) > _PARSE_INLINE_MAX:
        return await asyncio.to_thread(_parse_strict, body)
    return _parse_strict(body)


def _host_of(url: str) -> str:
    u = URL(url)
    # Only host and port: a base_url may carry user:password, which must not leak.
    return f"{u.host}:{u.port}" if u.port else str(u.host)


def _describe_error(exc: BaseException) -> str:
    """A short reason without headers or URLs' credentials (exceptions carry neither, but
    scrub anyway: this text reaches the agent)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return scrub_text(f"{type(exc).__name__}: {os_error.strerror}")
    if isinstance(exc, OSError) and exc.strerror:
        return scrub_text(f"{type(exc).__name__}: {exc.strerror}")
    return scrub_text(type(exc).__name__)
