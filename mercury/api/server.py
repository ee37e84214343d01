"""The host API server: aiohttp on a unix socket that is mounted into each run's container.

A unix socket works with container network `none` and never listens on a TCP port. The
socket is world-connectable (0666; the agent runs as uid 1000): access is controlled by the
per-run token on every request, not by file permissions.

Routes now:
    *    /model/anthropic/{tail}, /model/openai/{tail}   model proxy (see model_proxy.py)
    GET  /v1/whoami                                      {run_id, space_id, role}
    GET  /spaces/{space_id}/info                         {space_id, run_id}
Later features register theirs with `add_routes` before `start()`; any route with a
`{space_id}` segment is refused (403) to tokens of another space.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

from mercury.api.auth import auth_middleware, grant_of
from mercury.api.model_proxy import ModelProxy
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, Secrets
from mercury.logging import get_logger

log = get_logger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
# Model requests carry whole conversations, images included; aiohttp's default is 1 MiB.
MAX_REQUEST_BYTES = 64 * 1024**2


class HostApiServer:
    """Serves the host API on `socket_path` until `stop()`."""

    def __init__(
        self,
        socket_path: Path,
        tokens: TokenStore,
        *,
        config: Config,
        secrets: Secrets,
        meter: UsageMeter,
        read_timeout: float = 600.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        if len(os.fsencode(self.socket_path.absolute())) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"host API socket path is too long for a unix socket "
                f"(max {_MAX_SOCKET_PATH} bytes): {self.socket_path}"
            )
        self.tokens = tokens
        self.meter = meter
        self.proxy = ModelProxy(config, secrets, meter, read_timeout=read_timeout)
        # Exposed so later features can also use app keys and on_cleanup hooks.
        self.app = web.Application(
            middlewares=[auth_middleware(tokens)], client_max_size=MAX_REQUEST_BYTES
        )
        self.proxy.add_routes(self.app)
        self.app.router.add_get("/v1/whoami", _whoami)
        self.app.router.add_get("/spaces/{space_id}/info", _space_info)
        self._runner: web.AppRunner | None = None

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Register more endpoints (e.g. a `web.RouteTableDef`); only before `start()`.

        Handlers get the caller with `mercury.api.auth.grant_of(request)`; use
        `require_role(request, "admin")` for admin-only calls.
        """
        if self._runner is not None:
            raise RuntimeError("add routes before HostApiServer.start()")
        self.app.router.add_routes(routes)

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        directory = self.socket_path.parent
        if not directory.exists():
            directory.mkdir(parents=True)
            # Explicit chmod: mkdir's mode is filtered by the umask. The container's uid
            # 1000 must be able to traverse into the (bind-mounted) directory.
            os.chmod(directory, 0o755)
        elif directory.stat().st_mode & 0o005 != 0o005:
            log.warning(
                "host API socket directory is not accessible to other users; agents running "
                "as another uid cannot connect",
                directory=str(directory),
            )
        if self.socket_path.exists() or self.socket_path.is_symlink():
            # A stale socket of a previous process; never delete anything else.
            if not stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                raise RuntimeError(f"{self.socket_path} exists and is not a socket")
            self.socket_path.unlink()

        await self.proxy.start()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.UnixSite(runner, str(self.socket_path)).start()
            os.chmod(self.socket_path, 0o666)
        except BaseException:
            await runner.cleanup()
            await self.proxy.close()
            raise
        self._runner = runner
        log.info("host API listening", socket=str(self.socket_path))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.proxy.close()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                self.socket_path.unlink()

    async def __aenter__(self) -> HostApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _whoami(request: web.Request) -> web.Response:
    grant = grant_of(request)
    return web.json_response(
        {"run_id": grant.run_id, "space_id": grant.space_id, "role": grant.role}
    )


async def _space_info(request: web.Request) -> web.Response:
    # The middleware already refused other spaces; later issues add the space's details.
    grant = grant_of(request)
    return web.json_response({"space_id": grant.space_id, "run_id": grant.run_id})
