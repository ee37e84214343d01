"""Runs with their host API: what every run needs around the bare container.

`RunHost` owns the host API server (one unix socket per run, mounted into that run's
container), the per-run token store and the usage meter, and completes an operator's or
the pipeline's payload into a full input.json. `run_once` is `mercury sandbox run`: one
container, no chat platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mercury.config import Config, LoadedConfig, Secrets
from mercury.sandbox.types import ImageBuildState, RunRequest, RunResult

API_SOCKET_NAME = "api.sock"  # inside each run's socket folder (api.server.SOCKET_NAME)
# Where the runner mounts the socket's directory in every container (hardening.API_MOUNT).
CONTAINER_API_DIR = "/run/mercury-api"


class SandboxRunError(Exception):
    """The run could not be attempted (engine down, bad space id); one line."""


def resources_dir() -> Path | None:
    """The repository's resources/ (profiles, skills), mounted read-only into runs."""
    path = Path(__file__).resolve().parents[2] / "resources"
    return path if path.is_dir() else None


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def api_root(config: Config) -> Path:
    """Where the runs' socket folders live: data_dir/api/<run_id>/api.sock."""
    return config.data_dir / "api"


def model_input(config: Config, first: str | None = None) -> dict[str, Any]:
    """input.json's `model` section; the leg whose model is `first` is tried first.

    Legs carry only provider and model: a leg's base_url (which may hold credentials in
    its user-info) and anything else added to ModelLeg later is the host's, for its model
    proxy, and never enters the container.
    """
    model = config.model
    chain = [{"provider": leg.provider, "model": leg.model} for leg in model.chain]
    chain.sort(key=lambda leg: leg["model"] != first)  # stable: the others keep their order
    return {
        "chain": chain,
        "retries_per_leg": model.retries_per_leg,
        "budget_s": model.budget,
        "max_turns": model.max_turns,
    }


def build_input(
    config: Config,
    payload: Mapping[str, Any],
    *,
    run_id: str,
    space_id: str,
    token: str,
) -> dict[str, Any]:
    """Complete `payload` into input.json: defaults from config, ids and API access set.

    Keys in `payload` win where they are the run's own (prompt, history, caller...); the
    ids and the API access are always the host's, so a payload cannot borrow another run's.
    """
    data: dict[str, Any] = {
        "platform": "cli",
        "messages": [],
        "caller": {"id": "operator", "name": "operator", "role": "admin"},
        "attachments": [],
        "preferences": {},
        "profile": config.agent.profile,
        "skills": [],
        "model": model_input(config),
        "agent": {
            "command": config.agent.command,
            "bash_timeout_s": config.agent.bash_timeout,
        },
    }
    data.update(payload)
    model = data.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("chain"), list):
        # An operator's own input file (`mercury sandbox run`) may name legs with a
        # base_url: like the config's, it stays on the host (the proxy picks the leg).
        data["model"] = {
            **model,
            "chain": [
                {k: leg[k] for k in ("provider", "model") if k in leg}
                if isinstance(leg, Mapping)
                else leg
                for leg in model["chain"]
            ],
        }
    data["run_id"] = run_id
    data["space_id"] = space_id
    data["api"] = {"socket": f"{CONTAINER_API_DIR}/{API_SOCKET_NAME}", "token": token}
    return data


@dataclass(frozen=True)
class RunAccess:
    """What one run gets to reach the host: its token and its own socket's folder."""

    token: str
    socket_dir: Path


class RunHost:
    """The host API server + tokens + usage meter that runs talk back to."""

    def __init__(self, config: Config, secrets: Secrets) -> None:
        from mercury.api.server import HostApiServer
        from mercury.api.tokens import TokenStore
        from mercury.api.usage import UsageMeter
        from mercury.sandbox.identity import container_identity

        self.config = config
        self.root = api_root(config)
        self.tokens = TokenStore()
        self.meter = UsageMeter(config.model.prices)
        ident = container_identity(config.container)
        self.server = HostApiServer(
            self.root,
            self.tokens,
            config=config,
            secrets=secrets,
            meter=self.meter,
            socket_owner=(ident.uid, ident.gid),
        )

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def open_run(
        self,
        run_id: str,
        space_id: str,
        role: str,
        permissions: frozenset[str] | None = None,
    ) -> RunAccess:
        """A token and a socket of its own for one run (close it with `close_run`).

        `permissions`: the caller's in this space (core.permissions), which a custom role
        needs; None gives a built-in role its own."""
        folder = await self.server.open_run(run_id)
        return RunAccess(self.tokens.mint(run_id, space_id, role, permissions), folder)

    async def close_run(self, run_id: str) -> Any:
        """End a run's access: token revoked, model calls cut, connections closed.

        Returns the usage the proxy metered for it, including calls that were still
        going when the run ended (they are cut and metered before the totals are taken).
        """
        self.tokens.revoke(run_id)
        try:
            await self.server.proxy.close_run(run_id)
        finally:
            await self.server.close_run(run_id)
        return self.meter.pop_run(run_id)


async def run_once(
    loaded: LoadedConfig,
    *,
    space_id: str,
    payload: dict[str, Any],
    image: str | None = None,
) -> RunResult:
    """Run one container for `payload`, serving its host API; Ctrl-C aborts and cleans up."""
    from mercury.datadir import prepare_data_dir
    from mercury.sandbox.engine import EngineUnavailable, connect_engine
    from mercury.sandbox.hardening import check_id
    from mercury.sandbox.runner import ContainerRunner

    config = loaded.config
    try:
        check_id("space id", space_id)
    except ValueError as exc:
        raise SandboxRunError(str(exc)) from exc
    try:
        client, _info = await asyncio.to_thread(connect_engine, 10.0)
    except EngineUnavailable as exc:
        raise SandboxRunError(str(exc)) from exc
    try:
        prepare_data_dir(config)
        host = RunHost(config, loaded.secrets)
        runner = ContainerRunner(
            config,
            ImageBuildState(base_image=config.container.image),
            client=client,
            resources_dir=resources_dir(),
        )
    except (OSError, ValueError) as exc:  # IdentityError, SpaceError, a data dir we can't own
        client.close()
        raise SandboxRunError(str(exc)) from exc
    try:
        await host.start()
    except (OSError, ValueError, RuntimeError) as exc:
        await runner.aclose()
        client.close()
        raise SandboxRunError(f"host API: cannot start under {host.root}: {exc}") from exc
    run_id = new_run_id()
    role = str((payload.get("caller") or {}).get("role") or "admin")
    access = await host.open_run(run_id, space_id, role)
    loop = asyncio.get_running_loop()
    aborts: set[asyncio.Task[bool]] = set()

    def _abort() -> None:
        task = loop.create_task(runner.abort(space_id))
        aborts.add(task)  # keep a reference until it is done
        task.add_done_callback(aborts.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _abort)
    try:
        data = build_input(config, payload, run_id=run_id, space_id=space_id, token=access.token)
        request = RunRequest(
            run_id=run_id,
            space_id=space_id,
            input=data,
            image=image,
            api_socket_dir=access.socket_dir,
        )
        try:
            return await runner.run(request)
        except ValueError as exc:  # e.g. an unsafe space id
            raise SandboxRunError(str(exc)) from exc
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await host.close_run(run_id)
        await runner.aclose()
        await host.stop()
        with contextlib.suppress(Exception):
            client.close()
