"""The main aiohttp server: one listener for the dashboard, web chat and webhooks.

It knows no adapter: the App mounts each adapter's `routes()` on `HttpServer.app` before
`start()`, and adds health checks (`/healthz`) for the services that have one.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from aiohttp import web

from mercury import __version__


class ServerStartError(Exception):
    """The listener could not be opened; the message is one line naming the key."""


# A health check says what is wrong (one short line, no paths or secrets) or None.
HealthCheck = Callable[[], str | None]
HEALTH_CHECKS = web.AppKey("health_checks", list[HealthCheck])


def build_app() -> web.Application:
    app = web.Application()
    app[HEALTH_CHECKS] = []
    app.router.add_get("/healthz", _healthz)
    return app


async def _healthz(request: web.Request) -> web.Response:
    """200 while every check passes; 503 naming the problems otherwise (for monitors)."""
    problems = [p for check in request.app[HEALTH_CHECKS] if (p := check())]
    if problems:
        return web.json_response(
            {"ok": False, "version": __version__, "problems": problems}, status=503
        )
    return web.json_response({"ok": True, "version": __version__})


class HttpServer:
    def __init__(self, host: str, port: int, app: web.Application | None = None) -> None:
        self.host = host
        self.port = port
        self.app = app or build_app()
        self._runner: web.AppRunner | None = None

    @property
    def bound_port(self) -> int:
        assert self._runner is not None and self._runner.addresses
        return int(self._runner.addresses[0][1])

    def add_health_check(self, check: HealthCheck) -> None:
        self.app[HEALTH_CHECKS].append(check)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise ServerStartError(
                    f"server.port: {self.host}:{self.port} is already in use "
                    "(another mercury run? set server.port or MERCURY_SERVER__PORT)"
                ) from exc
            raise ServerStartError(
                f"server.host: cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from exc

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
