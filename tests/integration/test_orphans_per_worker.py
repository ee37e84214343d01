"""Orphan cleanup when several processes of one instance share a Docker engine and data dir.

Workers on one host may share the engine and the data dir (docs/scale-out.md). Each puts
its run tag (core/roles.py) in front of its run ids; at start a process removes what dead
processes and its own earlier life left (containers labelled with the instance, io dirs,
outputs folders, host-API socket folders) and leaves the runs of the live others alone,
or it would kill their runs in flight. On the real engine; containers are made with the
labels Mercury gives its own, and every one of the test's instance goes afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import pytest

from mercury.api.server import HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Secrets
from mercury.core.roles import run_tag
from mercury.pipeline.peers import live_run_tags
from mercury.sandbox.contract import new_run_id, run_tag_of, spared_run
from mercury.sandbox.hardening import LABEL_INSTANCE, LABEL_MANAGED, LABEL_RUN
from mercury.sandbox.iodir import io_root
from mercury.sandbox.outputs import outputs_root
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState, RunReason, RunRequest
from mercury.storage import Database, default_sqlite_url, upgrade, utcnow
from mercury.storage.adapter_status import ProcessInfo, write_heartbeat
from tests.integration.conftest import instance_containers

pytestmark = pytest.mark.docker


def new_process_id() -> str:
    return f"mercury-{uuid.uuid4().hex[:12]}"  # as mercury/app.py makes them


def info(process_id: str, instance: str, host: str, pid: int, started: datetime) -> ProcessInfo:
    """What a process's heartbeat row says of it (it started half an hour ago)."""
    return ProcessInfo(
        id=process_id,
        instance=instance,
        host=host,
        pid=pid,
        version="test",
        interval_s=15.0,
        started_at=started - timedelta(minutes=30),
    )


class Leftovers:
    """Makes what a run leaves on the engine and in the data dir, and reads what is left."""

    def __init__(self, runner: ContainerRunner, client: docker.DockerClient, image: str) -> None:
        self.runner = runner
        self.client = client
        self.image = image
        self.instance = runner.config.instance
        self.data_dir = runner.config.data_dir
        assert runner.api_socket_dir is not None
        self.api_root = runner.api_socket_dir
        self.server = HostApiServer(
            self.api_root,
            TokenStore(),
            config=runner.config,
            secrets=Secrets(),
            meter=UsageMeter(),
        )

    def run(self, run_id: str, *, socket_folder: bool = False) -> None:
        """A sleeping container labelled like Mercury's own, its io dir and outputs folder
        (and its host-API socket folder): a run in flight, or one its process left."""
        labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: self.instance, LABEL_RUN: run_id}
        cid = self.client.api.create_container(
            self.image,
            entrypoint=["sleep", "120"],
            labels=labels,
            name=f"mercury-{self.instance}-{run_id}",
            detach=True,
        )["Id"]
        self.client.api.start(cid)
        io_dir = io_root(self.data_dir) / run_id
        io_dir.mkdir(parents=True)
        (io_dir / "input.json").write_text("{}")
        outputs = outputs_root(self.data_dir) / run_id
        outputs.mkdir(parents=True)
        (outputs / "report.txt").write_text("made by the run")
        if socket_folder:
            folder = self.server.socket_dir(run_id)
            folder.mkdir(parents=True)
            (folder / "api.sock").write_text("")  # stands in for the socket

    def containers(self) -> set[str]:
        """Run ids of the instance's containers still on the engine."""
        return {
            c.labels.get(LABEL_RUN, "") for c in instance_containers(self.client, self.instance)
        }

    def io_dirs(self) -> set[str]:
        return _names(io_root(self.data_dir))

    def outputs(self) -> set[str]:
        return _names(outputs_root(self.data_dir))

    def socket_folders(self) -> set[str]:
        return _names(self.api_root)

    def remove_all(self) -> None:
        for container in instance_containers(self.client, self.instance):
            # 404/409: a runner's own cleanup got there first ("removal in progress").
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
        for root in (io_root(self.data_dir), outputs_root(self.data_dir), self.api_root):
            for path in root.iterdir() if root.is_dir() else ():
                shutil.rmtree(path, ignore_errors=True)


def _names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


@pytest.fixture
def leftovers(
    runner: ContainerRunner, docker_client: docker.DockerClient, test_image: str
) -> Iterator[Leftovers]:
    made = Leftovers(runner, docker_client, test_image)
    try:
        yield made
    finally:
        # Before make_runner's own check: what a live other process keeps is not a leak.
        made.remove_all()


@pytest.fixture
def pids() -> Iterator[tuple[int, int]]:
    """A live pid (a process that sleeps until the test ends) and a dead one (exited)."""
    live = subprocess.Popen(["sleep", "300"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        yield live.pid, gone.pid
    finally:
        live.kill()
        live.wait()


async def test_a_start_removes_its_own_and_dead_processes_leftovers_not_a_live_ones(
    runner: ContainerRunner, leftovers: Leftovers
) -> None:
    mine, live, dead = (run_tag(new_process_id()) for _ in range(3))
    runner.run_tag = mine
    cold = await runner.next_run_id("space-a")  # no waiting container: a new id
    runner.release_run_id(cold)
    assert run_tag_of(cold) == mine
    runs = {
        "live": new_run_id(live),
        "dead": new_run_id(dead),
        "untagged": new_run_id(),
        "mine": new_run_id(mine),
    }
    for name, run_id in runs.items():
        await asyncio.to_thread(leftovers.run, run_id, socket_folder=name in ("live", "dead"))

    removed = await runner.cleanup_orphans(live_tags={live})
    assert removed == 3
    kept = {runs["live"]}
    assert leftovers.containers() == kept
    assert leftovers.io_dirs() == kept
    assert leftovers.outputs() == kept
    spared = leftovers.server.remove_stale(
        spare=lambda run_id: spared_run(run_id, runner.run_tag, {live})
    )
    assert spared == 1
    assert leftovers.socket_folders() == kept
    live_socket = leftovers.server.socket_dir(runs["live"]) / "api.sock"
    assert live_socket.exists()

    # Again: nothing more goes while that process lives...
    assert await runner.cleanup_orphans(live_tags={live}) == 0
    assert leftovers.containers() == kept
    # ...and once it is dead, what it left is an orphan like any other.
    assert await runner.cleanup_orphans(live_tags=()) == 1
    assert leftovers.containers() == set()
    assert leftovers.io_dirs() == leftovers.outputs() == set()
    assert leftovers.server.remove_stale() == 1
    assert leftovers.socket_folders() == set()


async def test_a_live_workers_run_in_flight_survives_another_workers_start(
    runner: ContainerRunner,
    leftovers: Leftovers,
    docker_client: docker.DockerClient,
    test_image: str,
) -> None:
    # Two workers of one instance on one engine and one data dir.
    first, second = new_process_id(), new_process_id()
    runner.run_tag = run_tag(first)
    other = ContainerRunner(
        runner.config,
        ImageBuildState(test_image),
        client=docker_client,
        resources_dir=runner.resources_dir,
        api_socket_dir=runner.api_socket_dir,
    )
    other.run_tag = run_tag(second)
    try:
        run_id = await runner.next_run_id("space-a")
        request = RunRequest(run_id=run_id, space_id="space-a", input={"prompt": "sleep 3"})
        running = asyncio.create_task(runner.run(request))
        async with asyncio.timeout(20):
            while run_id not in leftovers.containers():
                await asyncio.sleep(0.05)
        # Left by the second worker's previous life (it crashed): its own to remove.
        await asyncio.to_thread(leftovers.run, new_run_id(other.run_tag))

        assert await other.cleanup_orphans(live_tags={run_tag(first)}) == 1
        assert leftovers.containers() == {run_id}
        assert run_id in leftovers.io_dirs()
        result = await running
        assert (result.reason, result.reply) == (RunReason.OK, "slept"), result
        await runner.wait_cleanups()
    finally:
        await other.aclose()


async def test_the_live_tags_come_from_the_other_processes_heartbeats(
    runner: ContainerRunner, leftovers: Leftovers, tmp_path: Path, pids: tuple[int, int]
) -> None:
    url = default_sqlite_url(tmp_path / "db")
    await upgrade(url)
    db = Database(url)
    here, (live_pid, dead_pid) = socket.gethostname(), pids
    now = utcnow()
    me = new_process_id()
    processes = {
        "me": (me, here, os.getpid(), now, False),
        # On another host its pid cannot be checked: a fresh heartbeat is enough.
        "far": (new_process_id(), "worker-2.example", 4242, now, False),
        "near": (new_process_id(), here, live_pid, now, False),
        "silent": (new_process_id(), "worker-3.example", 4242, now - timedelta(minutes=10), False),
        "stopped": (new_process_id(), "worker-4.example", 4242, now, True),
        "pid gone": (new_process_id(), here, dead_pid, now, False),
    }
    try:
        for process_id, host, pid, beat, stopped in processes.values():
            await write_heartbeat(
                db,
                info(process_id, runner.config.instance, host, pid, now),
                {},
                now=beat,
                stopped=stopped,
            )
        tags = await live_run_tags(db, me, now=now)
    finally:
        await db.dispose()
    tag_of = {name: run_tag(p[0]) for name, p in processes.items()}
    assert tags == {tag_of["far"], tag_of["near"]}

    runner.run_tag = tag_of["me"]
    runs = {name: new_run_id(tag) for name, tag in tag_of.items()}
    for run_id in runs.values():
        await asyncio.to_thread(leftovers.run, run_id)
    assert await runner.cleanup_orphans(tags) == 4
    kept = {runs["far"], runs["near"]}
    assert leftovers.containers() == kept
    assert leftovers.io_dirs() == leftovers.outputs() == kept
