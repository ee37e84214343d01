"""One run with its host API and no chat platform: what `mercury sandbox run` does.

The operator's payload is completed into input.json (sandbox/contract.py), one container
runs it while a `RunHost` serves its host API, and Ctrl-C aborts the run and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from mercury.api.runhost import RunHost
from mercury.config import LoadedConfig
from mercury.datadir import prepare_data_dir
from mercury.sandbox.contract import build_input, new_run_id
from mercury.sandbox.engine import EngineUnavailable, connect_engine
from mercury.sandbox.hardening import check_id
from mercury.sandbox.resources import resources_dir
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState, RunRequest, RunResult


class SandboxRunError(Exception):
    """The run could not be attempted (engine down, bad space id); one line."""


async def run_once(
    loaded: LoadedConfig,
    *,
    space_id: str,
    payload: dict[str, Any],
    image: str | None = None,
) -> RunResult:
    """Run one container for `payload`, serving its host API; Ctrl-C aborts and cleans up."""

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
