"""The in-container relay: HTTP on 127.0.0.1, forwarded to the host API's unix socket.

Model SDKs and agent CLIs want an HTTP base URL; the host API is a unix socket (so it works
with container network `none`). The relay bridges the two: every request - method, path,
query, headers except hop-by-hop ones, body - goes to the socket unchanged, and the
response comes back as it arrives (chunk by chunk, so SSE streams stay live). It adds no
credentials of a provider or service; given the run token, it adds that as
`X-Mercury-Run-Token` to every request, so a client that sends a service's own
Authorization (an extension's service, reached through the host) is still known as the run.
"""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message; Host and
# the framing headers are set anew by aiohttp for the next hop.
HOP_BY_HOP = frozenset(
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
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
# The same ceiling as the host API: model requests carry whole conversations.
MAX_REQUEST_BYTES = 64 * 1024**2
# The socket's host part is ignored by the unix connector; it only names the target.
_UPSTREAM = "http://mercury-api"
_SHUTDOWN_TIMEOUT_S = 0.5
RUN_TOKEN_HEADER = "X-Mercury-Run-Token"


def forward_headers(
    headers: CIMultiDict[str] | dict[str, str], drop: frozenset[str]
) -> CIMultiDict[str]:
    """`headers` without `drop` and without headers named in Connection (also hop-by-hop)."""
    items = headers.items()
    named = set()
    for key, value in items:
        if key.lower() == "connection":
            named |= {v.strip().lower() for v in value.split(",") if v.strip()}
    return CIMultiDict((k, v) for k, v in items if k.lower() not in drop and k.lower() not in named)


def _log(message: str) -> None:
    print(f"mercury-agent relay: {message}", file=sys.stderr, flush=True)


class Relay:
    """Serves on 127.0.0.1:<random port> and forwards to `socket_path`."""

    def __init__(
        self,
        socket_path: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.token = token
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, the base every SDK and CLI is given."""
        if not self.port:
            raise RuntimeError("the relay is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path),
            # Bytes pass through as the host sent them, Content-Encoding included.
            auto_decompress=False,
            # No deadline of our own: the SDK's timeout and the run's budget decide.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            # The relay must never pick up a proxy from the environment.
            trust_env=False,
        )
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # When the run ends, a request still in flight (a model call the budget cut
            # off) is abandoned: do not wait for it to finish before exiting.
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session = self._session
        if session is None:
            raise web.HTTPServiceUnavailable()
        body = await request.read()
        # raw_path keeps the query and its encoding exactly as the client sent them.
        url = URL(_UPSTREAM + request.raw_path, encoded=True)
        headers = forward_headers(request.headers, _DROP_REQUEST)
        if self.token:
            headers[RUN_TOKEN_HEADER] = self.token  # replaces one the client sent
        try:
            upstream = await session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            _log(f"cannot reach the host API at {self.socket_path}: {reason}")
            # Anthropic's error shape; OpenAI's SDK reads error.message from it as well.
            payload = {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": f"the relay cannot reach the host API ({reason})",
                },
            }
            return web.Response(
                status=502, text=json.dumps(payload), content_type="application/json"
            )
        completed = False
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in forward_headers(upstream.headers, _DROP_RESPONSE).items():
                resp.headers.add(key, value)
            await resp.prepare(request)
            # iter_any hands on whatever has arrived, at once: streams are not buffered.
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            completed = True
            return resp
        except (aiohttp.ClientError, OSError) as exc:
            # Headers are out; the client sees a cut stream, which its SDK reports.
            _log(f"response from the host API interrupted: {type(exc).__name__}")
            raise
        finally:
            if completed:
                upstream.release()  # fully read: the connection can be reused
            else:
                upstream.close()
