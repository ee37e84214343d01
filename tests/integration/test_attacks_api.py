"""Denial of service through the host API socket, on the real engine.

A run that opens thousands of idle connections to the host API exhausted Mercury's file
handles while the API was one shared socket: every other run and the health check failed.
Each run now has its own socket with a connection cap; these tests flood one and show the
host and the other runs unharmed.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mercury.api.server import MAX_CONNECTIONS_PER_RUN, HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, Secrets
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import RunReason, RunRequest, RunResult

pytestmark = pytest.mark.docker

MakeRunner = Callable[..., ContainerRunner]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[HostApiServer, TokenStore]]:
    tokens = TokenStore()
    server = HostApiServer(
        tmp_path / "api",
        tokens,
        config=Config.model_validate({}),
        secrets=Secrets(),
        meter=UsageMeter(),
        socket_owner=(2_000_000_000, 2_000_000_000) if os.geteuid() == 0 else None,
    )
    await server.start()
    try:
        yield server, tokens
    finally:
        await server.stop()


async def run_with_api(
    runner: ContainerRunner,
    server: HostApiServer,
    tokens: TokenStore,
    prompt: str,
    space: str,
) -> RunResult:
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    folder = await server.open_run(run_id)
    token = tokens.mint(run_id, space, "member")
    try:
        return await runner.run(
            RunRequest(
                run_id=run_id,
                space_id=space,
                input={"prompt": prompt, "api": {"token": token}},
                api_socket_dir=folder,
            )
        )
    finally:
        tokens.revoke(run_id)
        await server.close_run(run_id)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def reply_json(result: RunResult) -> Any:
    assert result.reason is RunReason.OK, result
    return json.loads(result.reply or "null")


async def test_a_connection_flood_takes_only_the_runs_own_allowance(
    make_runner: MakeRunner, api: tuple[HostApiServer, TokenStore]
) -> None:
    server, tokens = api
    runner = make_runner(max_concurrency=2)
    warm = await run_with_api(runner, server, tokens, "whoami", "space-b")
    assert reply_json(warm)["status"] == 200
    fds_before = open_fds()
    flood = asyncio.create_task(run_with_api(runner, server, tokens, "flood 600 3", "space-a"))
    # While the flood holds its connections, another run's calls go through...
    peak = peak_fds = 0
    for _ in range(300):  # until the flood has filled its allowance (15 s at most)
        peak = max(peak, *(server.connections(run) for run in server.open_runs()), 0)
        peak_fds = max(peak_fds, open_fds())
        if peak >= MAX_CONNECTIONS_PER_RUN:
            break
        await asyncio.sleep(0.05)
    other = await run_with_api(runner, server, tokens, "whoami", "space-b")
    got = reply_json(other)
    assert got["status"] == 200
    assert got["body"]["space_id"] == "space-b"
    # ...and the host held no more than the cap for the flooding run. Its own file handles
    # grew by far less than the 600 attempted (connections over the cap are accepted in
    # batches of at most the cap and closed at once; the other run and the Docker calls
    # take a few too).
    assert peak == MAX_CONNECTIONS_PER_RUN
    assert peak_fds - fds_before < 200
    flooded = reply_json(await flood)
    assert flooded["kept"] <= MAX_CONNECTIONS_PER_RUN
    assert flooded["connected"] + flooded["failed"] == 600
    assert server.open_runs() == set()  # every socket and connection closed with its run


async def test_containers_have_a_file_handle_limit(
    make_runner: MakeRunner, api: tuple[HostApiServer, TokenStore]
) -> None:
    server, tokens = api
    runner = make_runner(nofile=128)
    got = reply_json(await run_with_api(runner, server, tokens, "flood 400 0", "space-a"))
    # connect() itself runs out of descriptors at the container's nofile limit.
    assert got["connected"] < 128 <= got["connected"] + got["failed"]


async def test_a_run_socket_is_closed_to_other_host_users(
    api: tuple[HostApiServer, TokenStore],
) -> None:
    server, _tokens = api
    folder = await server.open_run("r1")
    sock = folder / "api.sock"
    if os.geteuid() == 0:
        assert (folder.stat().st_mode & 0o777, sock.stat().st_mode & 0o777) == (0o750, 0o660)
        assert sock.stat().st_gid == 2_000_000_000
    else:
        assert sock.stat().st_mode & 0o777 == 0o600
    assert server.root.stat().st_mode & 0o777 == 0o700
    await server.close_run("r1")
    assert not folder.exists()
