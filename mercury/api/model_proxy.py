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

Only model endpoints are forwarded (`allowed_tail`): Messages, count_tokens and models for
Anthropic; chat/completions, completions, responses, embeddings and models for OpenAI.
Anything else (files, batches, admin APIs reachable with the host's key) is refused with
403, as is a path with `.`/`..` segments or encoded dots or slashes.

The query string is forwarded (`?beta=true`). The leg is the chain leg of that provider
whose `model` equals the request body's "model", else the provider's first leg; the body
is forwarded byte for byte (a model outside the chain, such as the small model an agent
CLI uses for housekeeping, goes to that provider's first leg unchanged).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from mercury.api.auth import error_body, grant_of
from mercury.api.usage import Provider, TokenUsage, UsageMeter, stream_usage_parser, usage_from_json
from mercury.config import Config, ModelLeg, Secrets
from mercury.logging import get_logger, scrub_text

log = get_logger(__name__)

DEFAULT_BASE: dict[str, str] = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
}

# Never forwarded upstream: hop-by-hop headers (RFC 9110 7.6.1), headers aiohttp sets
# itself, and every credential the agent might send (its run token arrives in these).
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)
# Never passed back: hop-by-hop, and framing that no longer holds once aiohttp has
# decompressed and re-chunked the body.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
    }
)
# Largest non-streaming body buffered for usage extraction (responses pass through anyway).
_MAX_JSON_FOR_USAGE = 16 * 1024**2


# Tails (the raw path after /model/<provider>/) the proxy forwards.
_ALLOWED_TAILS: dict[str, re.Pattern[str]] = {
    "anthropic": re.compile(r"v1/(messages|messages/count_tokens|models|models/[^/]+)"),
    "openai": re.compile(
        r"(v1/)?(chat/completions|completions|responses|responses/[^/]+|embeddings"
        r"|models|models/[^/]+)"
    ),
}
_SNEAKY = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def allowed_tail(provider: Provider, tail: str) -> bool:
    """Whether the proxy forwards `tail` (raw, still percent-encoded) for `provider`."""
    if any(seg in ("", ".", "..") for seg in tail.split("/")) or _SNEAKY.search(tail):
        return False
    return _ALLOWED_TAILS[provider].fullmatch(tail) is not None


def upstream_url(provider: Provider, leg: ModelLeg, tail: str, query: str = "") -> str:
    """The upstream URL for `tail` (the path after /model/<provider>/); see module doc."""
    base = (leg.base_url or DEFAULT_BASE[provider]).rstrip("/")
    tail = tail.lstrip("/")
    if provider == "openai":
        tail = tail.removeprefix("v1/") if tail != "v1" else ""
    elif base.endswith("/v1") and (tail.startswith("v1/") or tail == "v1"):
        tail = tail[3:]
    url = f"{base}/{tail}" if tail else base
    return f"{url}?{query}" if query else url


def select_leg(config: Config, provider: str, model: str | None) -> ModelLeg | None:
    """The chain leg for a request: same provider and model, else the provider's first."""
    legs = [leg for leg in config.model.chain if leg.provider == provider]
    for leg in legs:
        if model is not None and leg.model == model:
            return leg
    return legs[0] if legs else None


def _host_of(url: str) -> str:
    u = URL(url)
    # Only host and port: a base_url may carry user:password, which must not leak.
    return f"{u.host}:{u.port}" if u.port else str(u.host)


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

    async def start(self) -> None:
        if self._session is None:
            # trust_env: operators behind an egress proxy set HTTPS_PROXY / NO_PROXY.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=True)

    async def close(self) -> None:
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

    def _key_headers(self, provider: Provider) -> dict[str, str]:
        if provider == "anthropic":
            key = self._secrets.anthropic_api_key
            return {"x-api-key": key.get_secret_value()} if key else {}
        key = self._secrets.openai_api_key
        # No key (Ollama, a local vLLM): send no Authorization at all.
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    async def _forward(self, request: web.Request, provider: Provider) -> web.StreamResponse:
        grant = grant_of(request)
        # The raw (still encoded) path and query, so they go upstream exactly as sent.
        tail = request.rel_url.raw_path.removeprefix(f"/model/{provider}/")
        if not allowed_tail(provider, tail):
            return web.json_response(
                error_body(
                    "permission_error",
                    f"the host's model proxy does not forward /{tail} (only model endpoints)",
                ),
                status=403,
            )
        body = await request.read()
        requested_model = _model_of(body)
        leg = select_leg(self._config, provider, requested_model)
        if leg is None:
            return web.json_response(
                error_body(
                    "not_found_error",
                    f"no {provider} model is configured in model.chain; "
                    f"add a leg with provider: {provider}",
                ),
                status=404,
            )
        url = upstream_url(provider, leg, tail, request.rel_url.raw_query_string)
        upstream_host = _host_of(url)
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST
        )
        headers.update(self._key_headers(provider))
        session = self._session
        if session is None:
            raise RuntimeError("ModelProxy.start() was not called")

        started = time.monotonic()
        ctx = {
            "run_id": grant.run_id,
            "space_id": grant.space_id,
            "provider": provider,
            "model": requested_model,
            "upstream": upstream_host,
        }
        try:
            upstream = await session.request(
                request.method, URL(url, encoded=True), headers=headers, data=body or None
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = _describe_error(exc)
            log.warning("model upstream unreachable", error=reason, **ctx)
            status = 504 if isinstance(exc, TimeoutError) else 502
            return web.json_response(
                error_body(
                    "upstream_unreachable",
                    f"the host could not reach the model upstream {upstream_host}: {reason}",
                ),
                status=status,
            )

        parser = None
        json_buf: bytearray | None = None
        ok = 200 <= upstream.status < 300
        content_type = upstream.headers.get("Content-Type", "")
        if ok and "text/event-stream" in content_type:
            parser = stream_usage_parser(provider)
        elif ok and "json" in content_type:
            json_buf = bytearray()

        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() not in _DROP_RESPONSE:
                resp.headers.add(k, v)
        completed = False
        try:
            await resp.prepare(request)
            # iter_any: hand on whatever arrived, at once. This is what makes SSE unbuffered.
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
                if parser is not None:
                    parser.feed(chunk)
                elif json_buf is not None and len(json_buf) < _MAX_JSON_FOR_USAGE:
                    json_buf += chunk
            await resp.write_eof()
            completed = True
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Headers are out, so the status can no longer change. Cut the client's
            # connection too (no terminating chunk): a cleanly ended but truncated stream
            # would pass for a complete, shorter answer.
            log.warning("model stream interrupted", error=_describe_error(exc), **ctx)
            if request.transport is not None:
                request.transport.close()
        finally:
            if completed:
                upstream.release()
            else:
                upstream.close()  # unread data left: the connection cannot be reused
            usage: TokenUsage | None = None
            if parser is not None:
                usage = parser.result()
            elif json_buf is not None:
                usage = usage_from_json(provider, bytes(json_buf))
            if usage is not None:
                # Also for a cut stream: the tokens were spent.
                await self._meter.record(
                    grant.run_id, grant.space_id, provider, usage, requested_model
                )
            log.info(
                "model request",
                status=upstream.status,
                completed=completed,
                seconds=round(time.monotonic() - started, 3),
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                **ctx,
            )
        return resp


def _model_of(body: bytes) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, Mapping) else None
    return model if isinstance(model, str) else None


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
