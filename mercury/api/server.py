"""The host API server: aiohttp on one unix socket per run, mounted into that run's container.

A unix socket works with container network `none` and never listens on a TCP port. Each
run gets its own socket (`open_run`), in its own folder under the API root, and that folder
is what the run's container mounts (read-only) at /run/mercury-api. A socket per run is
what lets the host bound what one run can take: at most `max_connections` connections at
once per run (more are closed as they arrive), so a run that opens thousands of idle
connections exhausts only its own allowance, never Mercury's file handles or another run's
access. `close_run` closes the socket and every connection of the run.

The socket is reachable by the container's uid only (group-owned by its gid, 0660, in a
0750 folder; 0600 when Mercury is not root and agents run as Mercury's own uid); access to
each call is still controlled by the per-run token.

Routes now:
    *    /model/anthropic/{tail}, /model/openai/{tail}   model proxy (see model_proxy.py)
    GET  /v1/whoami                                      {run_id, space_id, role}
    GET  /spaces/{space_id}/info                         {space_id, run_id}
    *    /spaces/{space_id}/...   preferences, tasks, messages, roles, mutes (api/routes/)
    *    /v1/ext/{extension}/svc|mcp/{name}/...  extensions' services (routes/services.py)
The run's folder also holds `egress.sock`, its egress proxy (api/egress.py, RunHost).
Those and later features' routes are registered with `add_routes` before `start()` (the
space endpoints through `api.routes.mount_space_api`); any route with a `{space_id}`
segment is refused (403) to tokens of another space.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from mercury.api.auth import auth_middleware, grant_of
from mercury.api.model_proxy import ModelProxy
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, Secrets
from mercury.logging import get_logger

log = get_logger(__name__)

SOCKET_NAME = "api.sock"
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
# Model requests carry whole conversations, images included; aiohttp's default is 1 MiB.
MAX_REQUEST_BYTES = 64 * 1024**2
# Connections one run may hold open at once. An agent and its SDKs use a handful; the cap
# is what stops one run from exhausting the host's file handles.
MAX_CONNECTIONS_PER_RUN = 32


@dataclass(eq=False)
class _RunSocket:
    run_id: str
    folder: Path
    server: asyncio.AbstractServer | None = None
    connections: set[asyncio.BaseTransport] = field(default_factory=set)
    # Taken when a connection is accepted (asyncio accepts a batch before any of them runs
    # connection_made), given back when it is lost.
    slots: int = 0
    refused: int = 0


class _Refused(asyncio.Protocol):
    """A connection over the run's cap: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted against its run's cap."""

    def __init__(self, inner: Any, entry: _RunSocket) -> None:
        self._inner = inner
        self._entry = entry
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._entry.connections.add(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._entry.connections.discard(self._transport)
            self._transport = None
            self._entry.slots -= 1
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class HostApiServer:
    """Serves the host API on one socket per run under `root` until `stop()`."""

    def __init__(
        self,
        root: Path,
        tokens: TokenStore,
        *,
        config: Config,
        secrets: Secrets,
        meter: UsageMeter,
        socket_owner: tuple[int, int] | None = None,
        read_timeout: float = 600.0,
        max_connections: int = MAX_CONNECTIONS_PER_RUN,
    ) -> None:
        self.root = Path(root)
        self.tokens = tokens
        self.meter = meter
        # (uid, gid) of the containers: the socket is group-owned by their gid.
        self.socket_owner = socket_owner
        self.max_connections = max_connections
        self.proxy = ModelProxy(config, secrets, meter, read_timeout=read_timeout)
        # Exposed so later features can also use app keys and on_cleanup hooks.
        self.app = web.Application(
            middlewares=[auth_middleware(tokens)], client_max_size=MAX_REQUEST_BYTES
        )
        self.proxy.add_routes(self.app)
        self.app.router.add_get("/v1/whoami", _whoami)
        self.app.router.add_get("/spaces/{space_id}/info", _space_info)
        self._runner: web.AppRunner | None = None
        self._runs: dict[str, _RunSocket] = {}
        # Socket folders made ahead of their run, for warm containers (reserve_folder).
        self._reserved: set[str] = set()

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Register more endpoints (e.g. a `web.RouteTableDef`); only before `start()`.

        Handlers get the caller with `mercury.api.auth.grant_of(request)`; use
        `require_permission(request, Permission.ADMIN)` for admin-only calls.
        """
        if self._runner is not None:
            raise RuntimeError("add routes before HostApiServer.start()")
        self.app.router.add_routes(routes)

    @property
    def started(self) -> bool:
        return self._runner is not None

    def socket_dir(self, run_id: str) -> Path:
        """The folder of a run's socket (what its container mounts)."""
        return self.root / run_id

    async def start(self) -> None:
        """Ready the app and the API root; sockets come with `open_run`."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise RuntimeError(f"{self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        await self.proxy.start()
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        log.info("host API ready", root=str(self.root))

    async def open_run(self, run_id: str) -> Path:
        """Listen on `<root>/<run_id>/api.sock` for one run; returns its folder."""
        if self._runner is None or self._runner.server is None:
            raise RuntimeError("HostApiServer.start() was not called")
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} already has a socket")
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"run id {run_id!r} is not a plain name")
        folder = self.socket_dir(run_id)
        if run_id in self._reserved:
            # A warm container has this very folder mounted: bind in it, never replace it.
            self._reserved.discard(run_id)
        else:
            _remove(folder)
            folder.mkdir(mode=0o700)
        entry = _RunSocket(run_id, folder)
        self._runs[run_id] = entry
        try:
            sock = self._bind(folder)
            loop = asyncio.get_running_loop()
            entry.server = await loop.create_unix_server(
                lambda: self._protocol(entry), sock=sock, backlog=self.max_connections
            )
        except BaseException:
            del self._runs[run_id]
            _remove(folder)
            raise
        return folder

    async def close_run(self, run_id: str) -> None:
        """Stop listening for a run and close each of its connections (in-flight calls end)."""
        entry = self._runs.pop(run_id, None)
        if entry is None:
            return
        if entry.server is not None:
            entry.server.close()
        for transport in list(entry.connections):
            transport.abort()
        if entry.refused:
            log.warning(
                "host API connections refused for a run over its cap",
                run_id=run_id,
                refused=entry.refused,
                cap=self.max_connections,
            )
        await asyncio.sleep(0)  # let aborted connections run their connection_lost
        _remove(entry.folder)

    def reserve_folder(self, run_id: str) -> Path:
        """An empty socket folder for a run that has no socket yet: a warm container
        (sandbox/warm.py) mounts it when it is made, and `open_run` binds the run's socket
        in it at hand-over. A bind mount shows the folder it was given, so the folder must
        be this one, not a new one of the same name. Mercury's own (0700) until then."""
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"run id {run_id!r} is not a plain name")
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} already has a socket")
        folder = self.socket_dir(run_id)
        _remove(folder)
        folder.mkdir(mode=0o700)
        self._reserved.add(run_id)
        return folder

    def release_folder(self, run_id: str) -> None:
        """Remove a reserved folder whose run never came (its warm container was removed)."""
        if run_id in self._reserved:
            self._reserved.discard(run_id)
            _remove(self.socket_dir(run_id))

    def remove_stale(self, spare: Callable[[str], bool] = lambda run_id: False) -> int:
        """Remove socket folders of a previous process's runs; how many there were.

        Only for the process that owns the data dir (`mercury run` at start): a
        `mercury sandbox run` beside it must not take the live runs' sockets away.
        `spare`: runs of another live process on the same data dir (docs/scale-out.md).
        """
        found = 0
        if self.root.is_dir():
            for stale in self.root.iterdir():
                if spare(stale.name):
                    continue
                if stale.name not in self._runs and stale.name not in self._reserved:
                    _remove(stale)
                    found += 1
        return found

    def open_runs(self) -> set[str]:
        """Runs with a socket right now."""
        return set(self._runs)

    def connections(self, run_id: str) -> int:
        """Open connections of a run right now."""
        entry = self._runs.get(run_id)
        return len(entry.connections) if entry else 0

    async def stop(self) -> None:
        # Model calls first (cut and metered), so the server's shutdown waits for nothing.
        for run_id in list(self._runs):
            await self.proxy.close_run(run_id)
            await self.close_run(run_id)
        await self.proxy.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HostApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ plumbing

    def _protocol(self, entry: _RunSocket) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        if entry.slots >= self.max_connections:
            entry.refused += 1
            return _Refused()
        entry.slots += 1
        return _Counted(self._runner.server(), entry)

    def _bind(self, folder: Path) -> socket.socket:
        return bind_run_socket(folder, SOCKET_NAME, self.socket_owner, self.max_connections)


def bind_run_socket(
    folder: Path, name: str, owner: tuple[int, int] | None, backlog: int
) -> socket.socket:
    """A listening unix socket `name` in a run's `folder`, reachable by the container's uid
    only (the API socket here, the egress proxy's in api/egress.py).

    Bound through /proc/self/fd/<folder>, so a long data_dir never hits the 107-byte
    limit of a socket path, and every change is made relative to the folder's handle.
    """
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = f"/proc/self/fd/{dfd}/{name}"
        if not os.path.isdir(f"/proc/self/fd/{dfd}"):
            path = str(folder / name)  # no /proc: the real path must be short
            if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
                raise ValueError(f"host API socket path is too long: {path}")
        sock.bind(path)
        if owner is not None and os.geteuid() == 0 and owner[0] != 0:
            os.chown(name, 0, owner[1], dir_fd=dfd, follow_symlinks=False)
            os.chmod(name, 0o660, dir_fd=dfd)
            os.fchown(dfd, 0, owner[1])
            os.fchmod(dfd, 0o750)
        else:
            os.chmod(name, 0o600, dir_fd=dfd)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dfd)
    return sock


def _remove(path: Path) -> None:
    """Remove a run folder (or a stray file) without following links."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


async def _whoami(request: web.Request) -> web.Response:
    grant = grant_of(request)
    return web.json_response(
        {"run_id": grant.run_id, "space_id": grant.space_id, "role": grant.role}
    )


async def _space_info(request: web.Request) -> web.Response:
    # The middleware already refused other spaces; later issues add the space's details.
    grant = grant_of(request)
    return web.json_response({"space_id": grant.space_id, "run_id": grant.run_id})
