"""Extensions' credentialed services, reached through the host: the secret never leaves it.

An extension declares a service `{base_url, headers: {Authorization: "Bearer ${GITHUB_TOKEN}"}}`
(or a remote MCP server `{url, headers}`); a run granted it gets a `ServiceGrant` in its
token's `RunGrants`. The container calls the host API (through its relay, which adds the
run token as `X-Mercury-Run-Token`):

    *  /v1/ext/{extension}/svc/{service}/{tail}    -> base_url + "/" + tail (query kept)
    *  /v1/ext/{extension}/mcp/{server}[/{tail}]   -> the MCP server's url (+ "/" + tail)

The host checks the grant (403 otherwise, and the service sees nothing), fills the header
templates from its own environment (`${VAR}`: os.environ, then Mercury's secrets; a
missing one is a 502 naming the variable, never a value), drops the container's own
credentials (Authorization, Cookie, the run token) and hop-by-hop headers, and streams
the answer back as it arrives (SSE and streamable-HTTP MCP stay live). Redirects are not
followed: the container sees them. Every call is logged `service.call` without header
values or the query string; `close_run` cuts a run's calls still in flight and logs its
calls per service once (`service.usage`).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from mercury.api.auth import RUN_TOKEN_HEADER, grant_of, json_error, token_from_headers
from mercury.api.tokens import ServiceGrant
from mercury.config import SECRET_ENV, Secrets
from mercury.logging import get_logger, register_secret_values

log = get_logger(__name__)

PREFIX = "/v1/ext/{extension}"
CONNECT_TIMEOUT_S = 10.0
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HOP_BY_HOP = frozenset(
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
    }
)
# The container's credentials for us (or for nobody): never passed on to a service.
_DROP_REQUEST = _HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "cookie",
    "x-api-key",
    RUN_TOKEN_HEADER.lower(),
}
_DROP_RESPONSE = _HOP_BY_HOP | {"content-length"}


class NotConfigured(Exception):
    """Header templates name variables the host does not have (names only, no values)."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(", ".join(missing))
        self.missing = missing


def fill_headers(
    templates: Mapping[str, str], lookup: Callable[[str], str | None]
) -> dict[str, str]:
    """The headers with each `${VAR}` replaced by `lookup(VAR)`; NotConfigured lists every
    variable that has no value (or one that would break the header: a line break)."""
    missing: list[str] = []

    def value_of(match: re.Match[str]) -> str:
        value = lookup(match.group(1))
        if not value or "\r" in value or "\n" in value:
            if match.group(1) not in missing:
                missing.append(match.group(1))
            return ""
        return value

    filled = {name: _VAR.sub(value_of, template) for name, template in templates.items()}
    if missing:
        raise NotConfigured(missing)
    return filled


def template_vars(templates: Mapping[str, str]) -> list[str]:
    """The `${VAR}` names the templates use, in order, once each."""
    names: list[str] = []
    for template in templates.values():
        names += [n for n in _VAR.findall(template) if n not in names]
    return names


class ServiceProxy:
    """Serves the service and remote-MCP routes of every run on the host API."""

    def __init__(
        self,
        secrets: Secrets | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self._secrets = secrets
        # None: os.environ as it is at call time.
        self._environ = environ
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, set[asyncio.Task[object]]] = {}
        self._closing: set[str] = set()
        self._usage: dict[str, Counter[str]] = {}
        self._registered: set[str] = set()

    def route_defs(self) -> list[web.RouteDef]:
        svc = PREFIX + "/svc/{service}"
        mcp = PREFIX + "/mcp/{service}"
        return [
            web.route("*", svc, self.handle),
            web.route("*", svc + "/{tail:.*}", self.handle),
            web.route("*", mcp, self.handle),
            web.route("*", mcp + "/{tail:.*}", self.handle),
        ]

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                # The operator wrote the base URLs: reached directly, never via a proxy.
                trust_env=False,
                # Bytes pass through as the service sent them, Content-Encoding included.
                auto_decompress=False,
                # One run's cookies must never reach another run's calls.
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        for run_id in list(self._inflight):
            await self.close_run(run_id)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def usage(self, run_id: str) -> dict[str, int]:
        """Calls of `run_id` so far, per "extension/service"."""
        return dict(self._usage.get(run_id, {}))

    async def close_run(self, run_id: str) -> dict[str, int]:
        """Cut the calls of `run_id` still in flight; its calls per service, logged once."""
        self._closing.add(run_id)
        try:
            tasks = list(self._inflight.get(run_id, ()))
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)
        finally:
            self._closing.discard(run_id)
            self._inflight.pop(run_id, None)
        tally = dict(self._usage.pop(run_id, {}))
        if tally:
            log.info("service.usage", run_id=run_id, calls=tally)
        return tally

    def lookup(self, name: str) -> str | None:
        """A host variable for a header template, from the environment. Never one of
        Mercury's own secrets (model keys, chat tokens, the dashboard password) nor its
        settings: an extension must not be able to send those to a URL of its choosing;
        its credential is a variable of its own (GITHUB_TOKEN)."""
        if name in SECRET_ENV.values() or name.startswith("MERCURY_"):
            return None
        env = os.environ if self._environ is None else self._environ
        return env.get(name) or None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        grant = grant_of(request)
        run_id = grant.run_id
        if run_id in self._closing:
            return json_error(401, "authentication_error", "the run has ended")
        extension = request.match_info["extension"]
        name = request.match_info["service"]
        service = grant.grants.service(extension, name)
        if service is None:
            log.info(
                "service.refused",
                run_id=run_id,
                extension=extension,
                service=name,
                why="not granted",
            )
            return json_error(
                403,
                "permission_error",
                f"this run is not granted the service {name} of extension {extension}",
            )
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        self._inflight.setdefault(run_id, set()).add(task)
        try:
            return await self._forward(request, service, run_id)
        finally:
            calls = self._inflight.get(run_id)
            if calls is not None:
                calls.discard(task)
                if not calls:
                    del self._inflight[run_id]

    async def _forward(
        self, request: web.Request, service: ServiceGrant, run_id: str
    ) -> web.StreamResponse:
        session = self._session
        if session is None:
            return json_error(503, "api_error", "the service proxy is not started")
        try:
            url = target_url(service.base_url, request.raw_path)
        except ValueError as exc:
            return json_error(400, "invalid_request_error", str(exc))
        try:
            extra = fill_headers(service.headers, self.lookup)
        except NotConfigured as exc:
            log.warning(
                "service.unconfigured",
                run_id=run_id,
                extension=service.extension,
                service=service.name,
                missing=exc.missing,
                fix="set the variables in Mercury's environment and restart",
            )
            return json_error(
                502,
                "api_error",
                f"service {service.name} is not configured on the host "
                f"({', '.join(exc.missing)} unset)",
            )
        self._redact([v for n in template_vars(service.headers) if (v := self.lookup(n))])
        headers = outgoing_headers(request.headers, extra)
        body = await request.read()
        started = time.monotonic()
        received = 0
        status = 0
        self._usage.setdefault(run_id, Counter())[f"{service.extension}/{service.name}"] += 1
        try:
            try:
                upstream = await session.request(
                    request.method, url, headers=headers, data=body or None, allow_redirects=False
                )
            except TimeoutError:
                status = 504
                return json_error(504, "api_error", f"service {service.name} did not answer")
            except (aiohttp.ClientError, OSError) as exc:
                status = 502
                return json_error(
                    502,
                    "api_error",
                    f"service {service.name} could not be reached ({type(exc).__name__})",
                )
            status = upstream.status
            try:
                resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in _without(upstream.headers, _DROP_RESPONSE).items():
                    resp.headers.add(key, value)
                await resp.prepare(request)
                # iter_any hands on whatever has arrived: streams are not buffered.
                async for chunk in upstream.content.iter_any():
                    received += len(chunk)
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            finally:
                upstream.close()
        finally:
            log.info(
                "service.call",
                run_id=run_id,
                extension=service.extension,
                service=service.name,
                method=request.method,
                status=status,
                bytes_out=len(body),
                bytes_in=received,
                ms=round((time.monotonic() - started) * 1000),
            )

    def _redact(self, values: list[str]) -> None:
        """Make sure the filled-in values are redacted from every log line, whatever logs."""
        new = [v for v in values if v not in self._registered]
        if new:
            register_secret_values(new)
            self._registered.update(new)


def target_url(base_url: str, raw_path: str) -> URL:
    """The service URL for a request path of /v1/ext/<ext>/<svc|mcp>/<name>[/<tail>][?q]:
    base_url, plus "/" + tail when the path goes on, plus the query. The tail is kept as
    sent (encoded); a "." or ".." segment, which would climb out of base_url, is refused."""
    path, sep, query = raw_path.partition("?")
    parts = path.split("/", 6)  # "", v1, ext, <ext>, svc|mcp, <name>, tail
    tail = parts[6] if len(parts) > 6 else None
    if tail is not None and any(unquote(seg) in (".", "..") for seg in tail.split("/")):
        raise ValueError("a '.' or '..' path segment is not allowed in a service path")
    url = base_url if tail is None else base_url.rstrip("/") + "/" + tail
    if sep:
        url += ("&" if "?" in url else "?") + query
    return URL(url, encoded=True)


def outgoing_headers(incoming: Mapping[str, str], extra: Mapping[str, str]) -> CIMultiDict[str]:
    """The container's headers minus its credentials and hop-by-hop ones, plus the grant's
    (which replace any of the same name)."""
    out = _without(incoming, _DROP_REQUEST)
    token, _problem = token_from_headers(incoming)
    if token:  # wherever else the container put its run token, it stays here
        for key in [k for k, v in out.items() if token in v]:
            del out[key]
    for key, value in extra.items():
        out[key] = value
    return out


def _without(headers: Mapping[str, str], drop: frozenset[str]) -> CIMultiDict[str]:
    """`headers` without `drop` and without the headers named in Connection."""
    named = {
        v.strip().lower()
        for k, value in headers.items()
        if k.lower() == "connection"
        for v in value.split(",")
    }
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in drop and k.lower() not in named
    )
