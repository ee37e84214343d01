"""What every run gets from the host: a host API socket of its own, a token, a usage meter.

`RunHost` owns the host API server (one unix socket per run, mounted into that run's
container), the per-run token store and the usage meter. The pipeline opens a run's
access before starting its container and closes it when the container is gone; `mercury
sandbox run` (api/oneshot.py) does the same for one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mercury.api.egress import EgressProxy
from mercury.api.model_proxy import CallGuard
from mercury.api.routes.services import ServiceProxy
from mercury.api.server import HostApiServer
from mercury.api.stream_events import StreamHook
from mercury.api.tokens import RunGrants, TokenStore
from mercury.api.usage import UsageMeter, UsageTotals
from mercury.config import Config, Secrets
from mercury.config.prices import price_table
from mercury.sandbox.identity import container_identity


def api_root(config: Config) -> Path:
    """Where the runs' socket folders live: data_dir/api/<run_id>/api.sock."""
    return config.data_dir / "api"


@dataclass(frozen=True)
class RunAccess:
    """What one run gets to reach the host: its token and its own socket's folder."""

    token: str
    socket_dir: Path


class RunHost:
    """The host API server + tokens + usage meter that runs talk back to."""

    def __init__(self, config: Config, secrets: Secrets) -> None:
        self.config = config
        self.root = api_root(config)
        self.tokens = TokenStore()
        # The shipped price table with model.prices on top (config/prices.py).
        self.meter = UsageMeter(price_table(config))
        ident = container_identity(config.container)
        self.server = HostApiServer(
            self.root,
            self.tokens,
            config=config,
            secrets=secrets,
            meter=self.meter,
            socket_owner=(ident.uid, ident.gid),
        )
        # Extensions' network (egress.sock beside each run's api.sock) and credentialed
        # services (/v1/ext/... routes), both limited to what the run's token grants.
        self.egress = EgressProxy(
            self.tokens,
            allow_private=config.extensions.allow_private,
            socket_owner=(ident.uid, ident.gid),
        )
        self.services = ServiceProxy(secrets)
        self.server.add_routes(self.services.route_defs())

    async def start(self) -> None:
        await self.services.start()
        await self.server.start()

    def add_stream_hook(self, hook: StreamHook) -> None:
        """Call `hook(run_id, event)` for what the model writes in every run's streamed
        answers (see `mercury.api.stream_events`); synchronous, so it must be cheap."""
        self.server.proxy.add_stream_hook(hook)

    def set_call_guard(self, guard: CallGuard) -> None:
        """Ask `guard(grant)` before each model call of every run (spending caps)."""
        self.server.proxy.set_call_guard(guard)

    async def stop(self) -> None:
        await self.egress.stop()
        await self.services.close()
        await self.server.stop()

    async def open_run(
        self,
        run_id: str,
        space_id: str,
        role: str,
        permissions: frozenset[str] | None = None,
        *,
        user_key: str | None = None,
        task_id: int | None = None,
        grants: RunGrants | None = None,
    ) -> RunAccess:
        """A token and a socket of its own for one run (close it with `close_run`).

        `permissions`: the caller's in this space (core.permissions), which a custom role
        needs; None gives a built-in role its own. `user_key` and `task_id`: whom its
        model calls are counted against (spending caps). `grants`: the hosts its egress
        socket (egress.sock, beside api.sock) may reach and the services it may call
        (None: none)."""
        folder = await self.server.open_run(run_id)
        try:
            await self.egress.open_run(run_id, folder)
        except BaseException:
            await self.server.close_run(run_id)
            raise
        token = self.tokens.mint(
            run_id, space_id, role, permissions, user_key=user_key, task_id=task_id, grants=grants
        )
        return RunAccess(token, folder)

    async def close_run(self, run_id: str) -> UsageTotals:
        """End a run's access: token revoked, model calls cut, connections closed.

        Returns the usage the proxy metered for it, including calls that were still
        going when the run ended (they are cut and metered before the totals are taken).
        """
        self.tokens.revoke(run_id)
        try:
            await self.server.proxy.close_run(run_id)
            await self.services.close_run(run_id)  # logs its calls per service once
        finally:
            try:
                await self.egress.close_run(run_id)
            finally:
                await self.server.close_run(run_id)
        return self.meter.pop_run(run_id)
