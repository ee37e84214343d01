"""ContainerRunner on the real Docker engine: real containers, OOM kills, timeouts, crashes.

Every test runs the scripted test agent (tests/images/testagent) whose behaviour is picked
by input.json's `prompt`. The `make_runner` fixture checks after each test that no
container of the test's instance and no io dir is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.config import Config
from mercury.sandbox.hardening import LABEL_INSTANCE, LABEL_MANAGED, LABEL_RUN, LABEL_SPACE
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState, RunReason, RunRequest, RunResult
from tests.integration.needs import require_root

pytestmark = pytest.mark.docker

MakeRunner = Callable[..., ContainerRunner]  # the make_runner fixture (conftest.py)

MIB = 1024**2


def request(prompt: str, *, space: str = "space-a", **kw: Any) -> RunRequest:
    return RunRequest(
        run_id=f"run-{uuid.uuid4().hex[:12]}", space_id=space, input={"prompt": prompt}, **kw
    )


def reply_json(result: RunResult) -> Any:
    assert result.reason is RunReason.OK, result
    assert result.reply is not None
    return json.loads(result.reply)


async def wait_running(client: docker.DockerClient, name: str, timeout: float = 15.0) -> None:
    """Until the container `name` exists and runs (checked off the event loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = await asyncio.to_thread(client.api.inspect_container, name)
            if info["State"]["Status"] == "running":
                return
        except docker.errors.NotFound:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"container {name} did not start within {timeout}s")


def instance_containers(client: docker.DockerClient, instance: str) -> list[Any]:
    return client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
    )


def container_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.api.inspect_container(name)
    except docker.errors.NotFound:
        return False
    return True


# --------------------------------------------------------------------------- outcomes


async def test_echo_is_ok_and_leaves_nothing(
    runner: ContainerRunner, docker_client: docker.DockerClient, test_image: str
) -> None:
    req = request("echo hello from the box")
    result = await runner.run(req)
    assert result.reason is RunReason.OK
    assert result.ok
    assert result.reply == "hello from the box"
    assert result.usage["output_tokens"] == 5
    assert result.files == []
    assert result.error is None
    assert result.image == test_image
    assert result.container_name == f"mercury-{runner.config.instance}-{req.run_id}"
    assert 0 < result.duration_ms < 20_000
    assert result.result is not None and result.result["ok"] is True
    await runner.wait_cleanups()
    assert not container_exists(docker_client, result.container_name)
    assert not (runner.config.data_dir / "io" / req.run_id).exists()
    assert runner.active_spaces() == set()
    # The space dir persists and belongs to the container's uid.
    space = runner.config.data_dir / "spaces" / "space-a"
    assert space.is_dir()
    ident = runner.identity
    assert (space.stat().st_uid, space.stat().st_gid) == (ident.uid, ident.gid)


async def test_agent_failure_is_error_with_its_message(runner: ContainerRunner) -> None:
    result = await runner.run(request("fail the model refused politely"))
    assert result.reason is RunReason.ERROR
    assert result.error == "the model refused politely"
    assert result.reply is None


async def test_exit_without_result_is_crashed_with_log_tail(runner: ContainerRunner) -> None:
    result = await runner.run(request("crash 3"))
    assert result.reason is RunReason.CRASHED
    assert result.exit_code == 3
    assert result.error is not None and "code 3" in result.error
    assert result.log_tail is not None
    lines = [line for line in result.log_tail.splitlines() if line]
    # The agent printed crash-line-0..59: exactly the last 40 come back.
    assert len(lines) == 40
    assert "crash-line-59" in lines
    assert "crash-line-20" in lines
    assert "crash-line-19" not in lines
    # Detected by the liveness probe, not by waiting out the 20 s timeout.
    assert result.duration_ms < 10_000


async def test_allocating_past_the_memory_limit_is_oom(runner: ContainerRunner) -> None:
    result = await runner.run(request("oom", memory=64 * MIB))
    assert result.reason is RunReason.OOM, result
    assert result.error is not None and "64 MiB" in result.error
    assert result.exit_code == 137
    assert result.duration_ms < 15_000


async def test_sleeping_past_the_timeout_is_killed(runner: ContainerRunner) -> None:
    result = await runner.run(request("sleep 30", timeout_s=2))
    assert result.reason is RunReason.TIMEOUT
    assert 2_000 <= result.duration_ms < 8_000
    assert result.exit_code == 137
    assert result.error is not None and "2s" in result.error


async def test_malformed_result_is_error_naming_result_json(runner: ContainerRunner) -> None:
    result = await runner.run(request("malformed"))
    assert result.reason is RunReason.ERROR
    assert result.error is not None
    assert "result.json" in result.error
    assert "not valid JSON" in result.error


async def test_result_written_just_before_exit_is_ok(runner: ContainerRunner) -> None:
    result = await runner.run(request("result-then-exit"))
    assert result.reason is RunReason.OK
    assert result.reply == "done before exit"
    # Even a non-zero exit right after the result does not turn it into a crash.
    result = await runner.run(request("result-then-exit 0 3"))
    assert result.reason is RunReason.OK
    assert result.reply == "done before exit"


async def test_result_seen_only_after_exit_still_wins(make_runner: MakeRunner) -> None:
    # The poll comes once before the agent writes, then not for 30 s: the probe sees the
    # exit first, and the runner must re-check result.json before calling it a crash.
    runner = make_runner(poll_interval=30, probe_interval=0.2)
    result = await runner.run(request("result-then-exit 0 3 0.3"))
    assert result.reason is RunReason.OK
    assert result.reply == "done before exit"
    assert result.exit_code == 3
    assert result.duration_ms < 10_000


async def test_result_that_landed_before_the_timeout_kill_wins(make_runner: MakeRunner) -> None:
    # Same trick for the kill path: the result is there when the deadline kills the agent.
    runner = make_runner(poll_interval=30, probe_interval=0.2)
    result = await runner.run(request("result-then-hang 0.3", timeout_s=2))
    assert result.reason is RunReason.OK
    assert result.reply == "done, still running"
    assert result.exit_code == 137


async def test_abort_mid_run(runner: ContainerRunner, docker_client: docker.DockerClient) -> None:
    assert await runner.abort("space-a") is False  # nothing runs yet
    req = request("sleep 30")
    task = asyncio.create_task(runner.run(req))
    await wait_running(docker_client, f"mercury-{runner.config.instance}-{req.run_id}")
    assert runner.active_spaces() == {"space-a"}
    started = time.monotonic()
    assert await runner.abort("space-a") is True
    result = await task
    assert result.reason is RunReason.ABORTED
    assert time.monotonic() - started < 5
    assert runner.active_spaces() == set()


async def test_kill_all_aborts_every_run(
    runner: ContainerRunner, docker_client: docker.DockerClient
) -> None:
    reqs = [request("sleep 30", space=f"space-{i}") for i in range(2)]
    tasks = [asyncio.create_task(runner.run(r)) for r in reqs]
    for r in reqs:
        await wait_running(docker_client, f"mercury-{runner.config.instance}-{r.run_id}")
    assert runner.active_spaces() == {"space-0", "space-1"}
    await runner.kill_all()
    results = await asyncio.gather(*tasks)
    assert [r.reason for r in results] == [RunReason.ABORTED, RunReason.ABORTED]


# --------------------------------------------------------------------------- isolation


async def test_fork_bomb_is_contained_by_the_pids_limit(
    make_runner: MakeRunner, docker_client: docker.DockerClient
) -> None:
    # A slow result poll keeps the container up after the bomb has written its result.
    runner = make_runner(poll_interval=30)
    pids_limit = runner.config.container.pids
    req = request("forkbomb")
    name = f"mercury-{runner.config.instance}-{req.run_id}"
    task = asyncio.create_task(runner.run(req))
    # While the bomb's children are alive (the runner stops the container once the result
    # is in), the host can still fork and run programs, and the container holds no more
    # than its limit.
    processes = 0
    for _ in range(200):
        with contextlib.suppress(docker.errors.APIError):
            processes = len(docker_client.api.top(name).get("Processes") or [])
        if processes >= 10 or task.done():
            break
        await asyncio.sleep(0.05)
    assert 10 <= processes <= pids_limit
    done = subprocess.run(
        ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do (true) & done; wait; echo alive"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert done.stdout.strip() == "alive"
    # Once the bomb has written its result (it forks until refused first), an abort
    # cannot take it away: the result already written still wins.
    result_file = runner.config.data_dir / "io" / req.run_id / "result.json"
    for _ in range(400):
        if result_file.exists() or task.done():
            break
        await asyncio.sleep(0.05)
    await runner.abort("space-a")
    got = reply_json(await task)
    # Forking stopped with EAGAIN at the limit (tini and the agent itself count too).
    assert got["errno"] == 11, got
    assert 10 <= got["count"] < pids_limit


# --------------------------------------------------------------------------- space folder

OTHER_USER = "2000:2000"  # container.user set by the operator, not the default


async def test_a_configured_container_user_owns_the_whole_space(make_runner: MakeRunner) -> None:
    """container.user is the one owner of the space: the top folder, inbox/, outbox/ and
    MEMORY.md, so the agent reads uploads and writes its outbox and memory."""
    require_root("handing files to another uid needs root")
    runner = make_runner(user=OTHER_USER)
    assert (runner.identity.uid, runner.identity.gid) == (2000, 2000)
    # An upload before the first run, saved through the space store as inbound does.
    runner.spaces.ensure("space-a")
    saved = runner.spaces.save_inbox_file("space-a", "note.txt", b"from the user")

    ids = reply_json(await runner.run(request("id")))
    assert (ids["uid"], ids["gid"]) == (2000, 2000)
    got = reply_json(await runner.run(request(f"read /space/{saved}")))
    assert got == {"exists": True, "content": "from the user"}
    wrote = await runner.run(request("outbox made.txt"))
    assert wrote.reason is RunReason.OK, wrote
    assert [f.name for f in wrote.files] == ["made.txt"]
    assert wrote.files[0].path.read_text().startswith("made by run")
    space = runner.config.data_dir / "spaces" / "space-a"
    for path in (space, space / "inbox", space / "outbox", space / "MEMORY.md", space / saved):
        assert (path.stat().st_uid, path.stat().st_gid) == (2000, 2000), path


async def test_a_space_made_for_another_uid_is_handed_to_the_configured_one(
    make_runner: MakeRunner, tmp_path: Path
) -> None:
    """A space whose inbox/, outbox/ and MEMORY.md belong to uid 1000 (what Mercury made
    before container.user was honoured, or a container.user changed since) is handed over
    before the next run: the agent can write its outbox and its memory."""
    require_root("handing files to another uid needs root")
    data = tmp_path / "data"
    space = data / "spaces" / "space-a"
    for folder in (space / "inbox", space / "outbox"):
        folder.mkdir(parents=True)
    (space / "MEMORY.md").write_text("# Memory\n")
    for path in (space, space / "inbox", space / "outbox", space / "MEMORY.md"):
        os.chown(path, 1000, 1000)
        path.chmod(0o640 if path.is_file() else 0o750)
    (data / "spaces").chmod(0o700)
    data.chmod(0o700)
    runner = make_runner(user=OTHER_USER, data_dir=data)

    wrote = await runner.run(request("outbox made.txt"))
    assert wrote.reason is RunReason.OK, wrote
    assert [f.name for f in wrote.files] == ["made.txt"]
    for path in (space, space / "inbox", space / "outbox", space / "MEMORY.md"):
        assert (path.stat().st_uid, path.stat().st_gid) == (2000, 2000), path
    assert (space / "MEMORY.md").read_text() == "# Memory\n"  # handed over, not replaced


async def test_root_filesystem_is_read_only(runner: ContainerRunner) -> None:
    got = reply_json(await runner.run(request("write-root")))
    erofs = 30
    assert got["/x"] == erofs
    assert got["/etc/x"] == erofs
    assert got["/usr/x"] == erofs
    assert got["/tmp/x"] == "ok"  # the tmpfs
    assert got["/space/x"] == "ok"  # its own space
    assert (runner.config.data_dir / "spaces" / "space-a" / "x").read_text() == "x"


async def test_another_space_is_invisible(runner: ContainerRunner) -> None:
    data = runner.config.data_dir
    wrote = await runner.run(request("outbox secret.txt", space="space-a"))
    assert wrote.reason is RunReason.OK
    assert [f.name for f in wrote.files] == ["secret.txt"]
    assert wrote.files[0].path.read_text().startswith("made by run")  # the host's copy
    host_file = data / "spaces" / "space-a" / "outbox" / "secret.txt"
    assert host_file.read_text().startswith("made by run")

    # Positive control: space A sees its own file.
    assert "outbox/secret.txt" in reply_json(await runner.run(request("ls-space", space="space-a")))

    seen_by_b = reply_json(await runner.run(request("ls-space", space="space-b")))
    assert not any("secret.txt" in path for path in seen_by_b)
    for path in ("/space/outbox/secret.txt", str(host_file), "/space/../space-a/outbox/secret.txt"):
        got = reply_json(await runner.run(request(f"read {path}", space="space-b")))
        assert got["exists"] is False, path
    mountinfo = reply_json(await runner.run(request("read /proc/self/mountinfo", space="space-b")))
    lines = mountinfo["content"].splitlines()
    assert any(line.split()[4] == "/space" for line in lines)  # positive control
    assert "/spaces/space-a" not in mountinfo["content"]
    if runner.spaces.mode == "image":
        # A space of its own filesystem: not even the host path of its own space shows.
        assert "/spaces/space-b" not in mountinfo["content"]
    roots = [line.split()[3] for line in lines]
    assert not any(root.endswith("/spaces") or root.endswith("/data") for root in roots)


async def test_no_secret_enters_the_container(
    make_runner: MakeRunner,
    monkeypatch: pytest.MonkeyPatch,
    docker_client: docker.DockerClient,
    test_image: str,
) -> None:
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-hostsecret-0123456789abcdef",
        "OPENAI_API_KEY": "sk-openai-hostsecret-0123456789",
        "MERCURY_SLACK_BOT_TOKEN": "xoxb-hostsecret-123456789",
        "MERCURY_SLACK_SIGNING_SECRET": "signing-hostsecret-42",
        "MERCURY_TELEGRAM_BOT_TOKEN": "123456789:hostsecret-telegram-token-abcdefghij",
        "MERCURY_DISCORD_BOT_TOKEN": "discord-hostsecret-token",
        "MERCURY_DATABASE_URL": "postgresql+asyncpg://mercury:pw-hostsecret@db/mercury",
        "MERCURY_DASHBOARD_PASSWORD": "dashboard-hostsecret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    runner = make_runner(env={"TZ": "UTC"})
    req = request("env", env={"EXTRA_FLAG": "1"})
    result = await runner.run(req)
    env = reply_json(result)
    assert result.reply is not None
    for name, value in secrets.items():
        assert name not in env
        assert value not in result.reply
    assert "hostsecret" not in result.reply
    # Exactly the allow-list, plus what the image itself declares and Docker's HOSTNAME.
    assert env["MERCURY_RUN_ID"] == req.run_id
    assert env["MERCURY_SPACE_ID"] == "space-a"
    assert env["MERCURY_IO_DIR"] == "/run/mercury-io"
    assert env["HOME"] == "/tmp"
    assert env["TZ"] == "UTC"
    assert env["EXTRA_FLAG"] == "1"
    declared = docker_client.api.inspect_image(test_image)["Config"].get("Env") or []
    image_env = {item.split("=", 1)[0] for item in declared}
    allowed = {
        "MERCURY_RUN_ID",
        "MERCURY_SPACE_ID",
        "MERCURY_IO_DIR",
        "HOME",
        "TZ",
        "EXTRA_FLAG",
        "HOSTNAME",
    } | image_env
    assert set(env) <= allowed, set(env) - allowed


async def test_a_request_granting_a_secret_is_refused_before_anything_starts(
    runner: ContainerRunner,
) -> None:
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        await runner.run(request("env", space="space-x", env={"ANTHROPIC_API_KEY": "sk-x"}))
    with pytest.raises(ValueError, match="space id"):
        await runner.run(request("env", space="../escape"))
    assert not (runner.config.data_dir / "spaces" / "space-x").exists()
    assert not (runner.config.data_dir / "escape").exists()


async def test_container_is_hardened(
    make_runner: MakeRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    runner = make_runner(cpus=0.5)
    ext = tmp_path / "ext-demo"
    ext.mkdir()
    req = request("sleep 30", readonly_mounts={ext: "/opt/mercury/extensions/demo"})
    name = f"mercury-{runner.config.instance}-{req.run_id}"
    task = asyncio.create_task(runner.run(req))
    try:
        await wait_running(docker_client, name)
        info = docker_client.api.inspect_container(name)
    finally:
        await runner.abort("space-a")
        assert (await task).reason is RunReason.ABORTED

    host = info["HostConfig"]
    assert info["Name"] == f"/{name}"
    assert info["Config"]["User"] == runner.identity.user
    assert info["Config"]["Labels"] == {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: runner.config.instance,
        LABEL_SPACE: "space-a",
        LABEL_RUN: req.run_id,
    }
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert host["Privileged"] is False
    assert host["ReadonlyRootfs"] is True
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == 128 * MIB
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["NetworkMode"] == "none"
    assert host["Init"] is True
    assert host["AutoRemove"] is False
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 1024}]
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "5m", "max-file": "1"},
    }
    assert host["Tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={16 * MIB},mode=1777"}
    assert info["Config"]["AttachStdout"] is False and info["Config"]["OpenStdin"] is False
    data = runner.config.data_dir.resolve()
    assert runner.resources_dir is not None and runner.api_socket_dir is not None
    mounts = {(m["Type"], m["Destination"], m["Source"], m["RW"]) for m in info["Mounts"]}
    assert mounts == {
        ("bind", "/space", str(data / "spaces" / "space-a"), True),
        ("bind", "/run/mercury-io", str(data / "io" / req.run_id), True),
        ("bind", "/opt/mercury/resources", str(runner.resources_dir.resolve()), False),
        ("bind", "/run/mercury-api", str(runner.api_socket_dir.resolve()), False),
        ("bind", "/opt/mercury/extensions/demo", str(ext.resolve()), False),
    }
    assert "/var/run/docker.sock" not in json.dumps(info)

    # And from the inside: the container uid, no capabilities at all, no_new_privs set.
    got = reply_json(await runner.run(request("id")))
    assert (got["uid"], got["gid"]) == (runner.identity.uid, runner.identity.gid)
    assert got["cap_eff"] == "0000000000000000"
    assert got["cap_bnd"] == "0000000000000000"
    assert got["no_new_privs"] == "1"
    # Resources are readable but not writable.
    profile = reply_json(await runner.run(request("read /opt/mercury/resources/AGENTS.md")))
    assert profile == {"exists": True, "content": "# test profile\n"}


async def test_api_socket_is_reachable_with_network_none(runner: ContainerRunner) -> None:
    assert runner.api_socket_dir is not None
    sock = runner.api_socket_dir / "api.sock"
    heard: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        heard.append(line)
        writer.write(f"pong {line}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(sock))
    sock.chmod(0o666)  # the agent's uid must be able to connect
    try:
        req = request("connect /run/mercury-api/api.sock")
        result = await runner.run(req)
    finally:
        server.close()
        await server.wait_closed()
    assert result.reason is RunReason.OK, result
    assert result.reply == f"pong {req.run_id}"
    assert heard == [req.run_id]


async def test_four_parallel_runs_each_get_their_own_reply(runner: ContainerRunner) -> None:
    reqs = [request(f"echo reply-{i}", space=f"space-{i}") for i in range(4)]
    results = await asyncio.gather(*(runner.run(r) for r in reqs))
    assert [r.reason for r in results] == [RunReason.OK] * 4
    assert [r.reply for r in results] == [f"reply-{i}" for i in range(4)]
    assert [r.space_id for r in results] == [f"space-{i}" for i in range(4)]
    assert len({r.container_name for r in results}) == 4


# --------------------------------------------------------------------------- lifecycle


async def test_cancelling_run_still_removes_container_and_io_dir(
    runner: ContainerRunner, docker_client: docker.DockerClient
) -> None:
    req = request("sleep 30")
    name = f"mercury-{runner.config.instance}-{req.run_id}"
    task = asyncio.create_task(runner.run(req))
    await wait_running(docker_client, name)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.active_spaces() == set()
    await runner.wait_cleanups()
    assert not container_exists(docker_client, name)
    assert not (runner.config.data_dir / "io" / req.run_id).exists()


async def test_cancelling_at_any_stage_leaves_nothing(
    runner: ContainerRunner, docker_client: docker.DockerClient
) -> None:
    # Early cancels land in file preparation, create or start; a create still running in
    # its thread must be waited for and removed.
    for delay in (0, 0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3):
        req = request("sleep 30")
        task = asyncio.create_task(runner.run(req))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.wait_cleanups()
        assert not container_exists(docker_client, f"mercury-{runner.config.instance}-{req.run_id}")
        assert not (runner.config.data_dir / "io" / req.run_id).exists()
    assert instance_containers(docker_client, runner.config.instance) == []


async def test_orphan_cleanup_removes_only_this_instances_containers(
    runner: ContainerRunner, docker_client: docker.DockerClient, test_image: str
) -> None:
    me = runner.config.instance
    other = f"{me}-other"

    def create(labels: dict[str, str], start: bool) -> str:
        cid = docker_client.api.create_container(
            test_image, entrypoint=["sleep", "60"], labels=labels, detach=True
        )["Id"]
        if start:
            docker_client.api.start(cid)
        return cid

    mine = create({LABEL_MANAGED: "true", LABEL_INSTANCE: me, LABEL_RUN: "old"}, start=True)
    mine_stopped = create({LABEL_MANAGED: "true", LABEL_INSTANCE: me}, start=False)
    theirs = create({LABEL_MANAGED: "true", LABEL_INSTANCE: other}, start=True)
    unmanaged = create({LABEL_INSTANCE: me}, start=False)
    stale_io = runner.config.data_dir / "io" / "run-stale"
    stale_io.mkdir(parents=True)
    (stale_io / "input.json").write_text("{}")
    try:
        assert await runner.cleanup_orphans() == 2
        assert not container_exists(docker_client, mine)
        assert not container_exists(docker_client, mine_stopped)
        assert container_exists(docker_client, theirs)
        assert container_exists(docker_client, unmanaged)
        assert not stale_io.exists()
        assert await runner.cleanup_orphans() == 0
    finally:
        for cid in (mine, mine_stopped, theirs, unmanaged):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_container(cid, force=True)


async def test_deleted_image_triggers_rebuild_and_run_on_base(
    make_runner: MakeRunner, docker_client: docker.DockerClient, test_image: str
) -> None:
    repo, tag = "mercury-test-derived", uuid.uuid4().hex[:12]
    derived = f"{repo}:{tag}"

    def retag() -> None:
        docker_client.images.get(test_image).tag(repo, tag)

    async def builder() -> str:
        await asyncio.to_thread(retag)
        return derived

    retag()
    images = ImageBuildState(test_image, builder=builder, derived_image=derived)
    runner = make_runner(images=images)
    try:
        first = await runner.run(request("echo on derived"))
        assert (first.reason, first.image) == (RunReason.OK, derived)

        docker_client.images.remove(derived)
        second = await runner.run(request("echo still answered"))
        assert second.reason is RunReason.OK
        assert second.reply == "still answered"
        assert second.image == test_image  # the base
        assert images.rebuilds == 1
        assert await images.wait() == derived
        assert images.current_image() == derived

        third = await runner.run(request("echo back on derived"))
        assert (third.reason, third.image) == (RunReason.OK, derived)
    finally:
        await runner.wait_cleanups()
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(derived)


async def test_a_missing_agent_image_is_rebuilt_once_for_every_run_that_finds_it_gone(
    make_runner: MakeRunner, docker_client: docker.DockerClient, test_image: str
) -> None:
    repo, tag = "mercury-test-restored", uuid.uuid4().hex[:12]
    image = f"{repo}:{tag}"
    builds = 0
    release = asyncio.Event()

    async def restorer() -> str:  # stands in for `mercury image build`
        nonlocal builds
        builds += 1
        await release.wait()
        await asyncio.to_thread(docker_client.images.get(test_image).tag, repo, tag)
        return image

    images = ImageBuildState(image, restorer=restorer)
    runner = make_runner(images=images)
    try:
        found = await asyncio.gather(
            runner.run(request("echo one", space="s1")), runner.run(request("echo two", space="s2"))
        )
        waiting = await runner.run(request("echo three", space="s3"))
        for result in (*found, waiting):
            # Not failed and not run: the caller puts the job back in the queue.
            assert (result.reason, result.retry, result.container_name) == (
                RunReason.CRASHED,
                True,
                None,
            ), result
        assert runner.hold_reason() == f"building the agent image {image}"
        assert (builds, images.restores) == (1, 1)
        release.set()
        assert await images.wait_restored()
        assert runner.hold_reason() is None
        again = await runner.run(request("echo answered"))
        assert (again.reason, again.reply, again.image) == (RunReason.OK, "answered", image)
        assert builds == 1
    finally:
        await runner.wait_cleanups()
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image)


async def test_a_failed_rebuild_fails_runs_plainly_until_the_image_is_back(
    make_runner: MakeRunner, docker_client: docker.DockerClient, test_image: str
) -> None:
    repo, tag = "mercury-test-unbuildable", uuid.uuid4().hex[:12]
    image = f"{repo}:{tag}"

    async def restorer() -> str:
        raise RuntimeError("Step 7/16 : RUN failed: no /bin/sh in the base")

    images = ImageBuildState(image, restorer=restorer)
    runner = make_runner(images=images)
    try:
        first = await runner.run(request("echo one"))
        assert first.retry
        assert not await images.wait_restored()
        # No spinning: the hold is lifted, and runs fail at once, saying why.
        assert runner.hold_reason() is None
        assert await runner.unavailable() == "image"
        second = await runner.run(request("echo two"))
        assert (second.reason, second.retry) == (RunReason.CRASHED, False)
        assert second.error is not None
        assert "rebuilding it failed: Step 7/16 : RUN failed" in second.error
        assert images.restores == 1
        # The operator builds it: runs work again without a restart.
        await asyncio.to_thread(docker_client.images.get(test_image).tag, repo, tag)
        assert await runner.unavailable() is None
        third = await runner.run(request("echo three"))
        assert (third.reason, third.reply) == (RunReason.OK, "three")
    finally:
        await runner.wait_cleanups()
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image)


async def test_missing_base_image_is_crashed_with_a_clear_error(make_runner: MakeRunner) -> None:
    images = ImageBuildState("mercury-test-missing:nope")
    runner = make_runner(images=images)
    result = await runner.run(request("echo never"))
    assert result.reason is RunReason.CRASHED
    assert result.error is not None
    assert "mercury-test-missing:nope" in result.error
    assert "not found" in result.error
    assert images.rebuilds == 0


async def test_engine_error_at_create_is_crashed(make_runner: MakeRunner) -> None:
    runner = make_runner(runtime="mercury-no-such-runtime")
    result = await runner.run(request("echo never"))
    assert result.reason is RunReason.CRASHED
    assert result.error is not None
    assert result.error.startswith("create failed")
    assert "mercury-no-such-runtime" in result.error


async def test_unknown_network_fails_at_start_and_is_crashed(runner: ContainerRunner) -> None:
    result = await runner.run(request("echo never", network="mercury-no-such-network"))
    assert result.reason is RunReason.CRASHED
    assert result.error is not None
    assert result.error.startswith("start failed")
    assert "mercury-no-such-network" in result.error


async def test_engine_error_at_start_is_crashed(
    make_runner: MakeRunner, badentry_image: str
) -> None:
    # Without init, the missing entrypoint makes `start` itself fail.
    runner = make_runner(init=False)
    result = await runner.run(request("echo never", image=badentry_image))
    assert result.reason is RunReason.CRASHED
    assert result.error is not None
    assert result.error.startswith("start failed")
    assert "/no/such/entrypoint" in result.error


async def test_unreachable_engine_is_crashed_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_image: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    config = Config(instance="t-no-engine", data_dir=tmp_path / "data")
    runner = ContainerRunner(config, ImageBuildState(test_image))
    try:
        result = await runner.run(request("echo never"))
        held = runner.hold_reason()
    finally:
        await runner.aclose()
    assert held is not None and "Docker engine" in held
    assert result.reason is RunReason.CRASHED
    assert result.error is not None and "not reachable" in result.error
    assert "\n" not in result.error
    # Not the message's fault: it goes back to the queue, and nothing starts meanwhile.
    assert result.retry
    assert result.container_name is None
    assert not (tmp_path / "data" / "io").exists() or not any((tmp_path / "data" / "io").iterdir())
