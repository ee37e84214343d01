"""Warm containers on the real engine with the real agent image (sandbox/warm.py).

The runner keeps the next container of an active space created, started and waiting; the
space's next run is handed to it. Proven here: the hand-over works through the host API
socket made ahead, each run still gets a container that never served another (unique
container per run, /tmp of run 1 absent in run 2), no token or message is in a waiting
container, and waiting containers go at the time-to-live, at the pool's limit, at
shutdown and by orphan cleanup.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.api.runhost import RunHost
from mercury.config import Config, Secrets
from mercury.sandbox.contract import build_input
from mercury.sandbox.resources import resources_dir
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState, RunRequest, RunResult
from mercury.sandbox.warm import waiting_on_engine
from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn

pytestmark = pytest.mark.docker

KEY = "sk-ant-host-only-key-0123456789"


class Rig:
    def __init__(self, fake: FakeModelServer, tmp: Path, image: str, client: Any) -> None:
        self.fake = fake
        self.tmp = tmp
        self.image = image
        self.client = client
        self.instance = f"warm{uuid.uuid4().hex[:8]}"
        self.host: RunHost | None = None
        self.runners: list[ContainerRunner] = []

    async def start(self, **warm: Any) -> ContainerRunner:
        self.config = Config.model_validate(
            {
                "instance": self.instance,
                "data_dir": str(self.tmp / "data"),
                "container": {
                    "image": self.image,
                    "memory": "512m",
                    "timeout": 90,
                    "pids": 128,
                    "warm": {"enabled": True, "idle_ttl": 600, "max": 4, **warm},
                },
                "model": {
                    "chain": [
                        {"provider": "anthropic", "model": "claude-test", "base_url": self.fake.url}
                    ],
                    "budget": 60,
                },
            }
        )
        if self.host is None:
            self.host = RunHost(self.config, Secrets(anthropic_api_key=KEY))
            await self.host.start()
        runner = ContainerRunner(
            self.config,
            ImageBuildState(self.image),
            client=self.client,
            resources_dir=resources_dir(),
            socket_folders=self.host.server,
            preload=("anthropic",),
        )
        self.runners.append(runner)
        return runner

    async def run(self, runner: ContainerRunner, prompt: str, space: str = "s1") -> RunResult:
        assert self.host is not None
        run_id = await runner.next_run_id(space)
        access = await self.host.open_run(run_id, space, "member")
        data = build_input(
            self.config, {"prompt": prompt}, run_id=run_id, space_id=space, token=access.token
        )
        try:
            return await runner.run(
                RunRequest(
                    run_id=run_id, space_id=space, input=data, api_socket_dir=access.socket_dir
                )
            )
        finally:
            runner.release_run_id(run_id)
            await self.host.close_run(run_id)

    def containers(self, **labels: str) -> list[Any]:
        wanted = [f"mercury.instance={self.instance}"] + [f"{k}={v}" for k, v in labels.items()]
        # ignore_removed: a container removed between the listing and its inspection (the
        # pool removing it right now) is gone, not an error.
        return self.client.containers.list(all=True, filters={"label": wanted}, ignore_removed=True)

    async def until(self, check: Any, what: str, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def waiting_ready(self, runner: ContainerRunner, count: int = 1) -> None:
        """Until `count` warm containers run (made and started)."""
        await self.until(
            lambda: runner.waiting_containers() == count
            and len([c for c in self.containers(**{"mercury.warm": "true"})
                     if c.status == "running"]) == count,
            f"{count} waiting container(s)",
        )  # fmt: skip
        for slot in list(runner.warm._slots.values()):
            await asyncio.wait_for(slot.ready.wait(), 60)

    async def close(self) -> None:
        for runner in self.runners:
            await runner.aclose()
        assert self.containers() == []
        if self.host:
            await self.host.stop()


@pytest.fixture
async def rig(
    tmp_path: Path, agent_image: str, docker_client: docker.DockerClient
) -> AsyncIterator[Rig]:
    async with FakeModelServer() as fake:
        rig = Rig(fake, tmp_path, agent_image, docker_client)
        yield rig
        await rig.close()


def _bash(command: str) -> Turn:
    return Turn([ToolCall("bash", {"command": command})])


async def test_the_next_run_is_handed_to_a_fresh_waiting_container(rig: Rig) -> None:
    runner = await rig.start()
    rig.fake.script(
        [
            _bash("echo left-by-run-1 > /tmp/marker; cat /proc/self/cgroup | tail -1"),
            Turn([Text("first done")]),
            _bash("cat /tmp/marker 2>&1 || echo no-marker; ls /run/mercury-io"),
            Turn([Text("second done")]),
        ]
    )
    first = await rig.run(runner, "one")
    assert first.ok, (first.error, first.log_tail)
    assert first.reply == "first done"
    # The space is active: its next container waits, made while the first run went.
    await rig.waiting_ready(runner)
    [waiting] = rig.containers(**{"mercury.warm": "true"})
    slot_id = waiting.labels["mercury.run"]
    # Nothing of a message and no token is in it while it waits.
    env = waiting.attrs["Config"]["Env"]
    assert not any(KEY in e or "TOKEN" in e.upper() for e in env)
    assert "MERCURY_PRELOAD=anthropic" in env
    io_dir = rig.config.data_dir / "io" / slot_id
    assert list(io_dir.iterdir()) == []
    # What `mercury doctor` reports from outside: one waiting, the memory it holds.
    count, used = waiting_on_engine(rig.client, rig.config)
    assert count == 1 and used > 0
    # It is hardened like a cold one.
    host_config = waiting.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "none"
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    # Its imports yield the CPU to the runs going on until a run is handed to it.
    assert host_config["CpuShares"] == 128

    second = await rig.run(runner, "two")
    assert second.ok, (second.error, second.log_tail)
    assert second.reply == "second done"
    assert runner.warm.handovers == 1
    await asyncio.gather(*list(runner.warm._tasks))
    assert runner.warm.raised == 1  # a run's CPU weight from its hand-over on
    assert second.run_id == slot_id and second.container_name == waiting.name
    assert first.container_name != second.container_name
    # The file the first run left in its /tmp is not in the second's: the tool result the
    # agent sent back with its last request says so.
    last = str(rig.fake.requests[-1].body)
    assert "No such file" in last and "no-marker" in last
    assert "left-by-run-1" not in last


async def test_waiting_containers_go_after_their_time_to_live(rig: Rig) -> None:
    runner = await rig.start(idle_ttl=1)
    rig.fake.script([Turn([Text("ok")])])
    assert (await rig.run(runner, "hi")).ok
    await rig.until(
        lambda: runner.waiting_containers() == 0 and rig.containers() == [],
        "the idle waiting container to be removed",
    )
    # The next message takes the cold path, unchanged.
    rig.fake.script([Turn([Text("cold again")])])
    result = await rig.run(runner, "hi again")
    assert result.ok and result.reply == "cold again"
    assert runner.warm.handovers == 0


async def test_the_pool_is_bounded_and_the_longest_idle_makes_room(rig: Rig) -> None:
    runner = await rig.start(max=1)
    rig.fake.script([Turn([Text("a")]), Turn([Text("b")])])
    assert (await rig.run(runner, "x", space="sa")).ok
    await rig.waiting_ready(runner)
    assert (await rig.run(runner, "y", space="sb")).ok
    await rig.waiting_ready(runner)
    [only] = rig.containers(**{"mercury.warm": "true"})
    assert only.labels["mercury.space"] == "sb"


async def test_a_dead_process_s_waiting_containers_are_orphans_at_the_next_start(
    rig: Rig,
) -> None:
    runner = await rig.start()
    rig.fake.script([Turn([Text("ok")])])
    assert (await rig.run(runner, "hi")).ok
    await rig.waiting_ready(runner)
    # A second process of the same instance starting: the first one's are leftovers.
    later = await rig.start()
    removed = await later.cleanup_orphans()
    assert removed == 1
    assert rig.containers(**{"mercury.warm": "true"}) == []


async def test_shutdown_removes_waiting_containers(rig: Rig) -> None:
    runner = await rig.start()
    rig.fake.script([Turn([Text("ok")])])
    assert (await rig.run(runner, "hi")).ok
    await rig.waiting_ready(runner)
    await runner.aclose()
    assert rig.containers() == []
    assert not any((rig.config.data_dir / "io").iterdir())
