"""Attacks on the host side of the wall, on the real engine: what an agent leaves behind.

Prompt injection makes the agent run any command, so each test plays that attacker with the
scripted test agent (tests/images/testagent) and shows the attack no longer gets through:
outbox files swapped for symlinks to host secrets, symlinks planted where the host writes
uploads, oversized, sparse and endless outputs, a result.json built to crash the parser,
and a run that fills its space. docs/security.md names each defence and its test here.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mercury.sandbox.identity import host_owner_of
from mercury.sandbox.iodir import MAX_LISTED_FILES
from mercury.sandbox.outputs import outputs_root, remove_outputs
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import RunReason, RunRequest, RunResult

pytestmark = pytest.mark.docker

MakeRunner = Callable[..., ContainerRunner]
MIB = 1024**2
SECRET = "ANTHROPIC_API_KEY=sk-ant-the-operators-key-0123456789\n"


def request(prompt: str, *, space: str = "space-a", **kw: Any) -> RunRequest:
    return RunRequest(
        run_id=f"run-{uuid.uuid4().hex[:12]}", space_id=space, input={"prompt": prompt}, **kw
    )


def reply_json(result: RunResult) -> Any:
    assert result.reason is RunReason.OK, result
    return json.loads(result.reply or "null")


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    """A file only the host's root may read: Mercury's .env, /etc/shadow and the like."""
    path = tmp_path / "host-only" / ".env"
    path.parent.mkdir()
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- the outbox


async def test_an_outbox_file_swapped_for_a_symlink_never_delivers_the_target(
    make_runner: MakeRunner, host_secret: Path
) -> None:
    # The attack: list outbox/report.txt while it is a regular file, then keep replacing it
    # with a symlink to a host secret, betting that the host checks first and copies later.
    runner = make_runner()
    ended_as_link = 0
    for _ in range(8):
        result = await runner.run(request(f"outbox-swap report.txt {host_secret} 30"))
        assert result.reason is RunReason.OK, result
        assert len(result.files) + len(result.dropped_files) == 1
        for f in result.files:
            assert f.path.read_text() == "innocent\n"
            assert f.path.is_relative_to(outputs_root(runner.config.data_dir))
            st = f.path.lstat()
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.geteuid()
        for dropped in result.dropped_files:
            assert "regular file" in dropped.why
        # What a reader that follows names would have found: the container is stopped, so
        # this is exactly the state the host copied from.
        entry = runner.spaces.path("space-a") / "outbox" / "report.txt"
        ended_as_link += entry.is_symlink()
        remove_outputs(runner.config.data_dir, result.run_id)
    assert host_secret.read_text() == SECRET
    print(f"the entry was a symlink to the secret in {ended_as_link} of 8 runs")


async def test_symlinked_outbox_files_and_folders_are_not_followed(
    make_runner: MakeRunner, host_secret: Path
) -> None:
    runner = make_runner()
    result = await runner.run(request(f"outbox-link leak.txt {host_secret}"))
    assert result.reason is RunReason.OK and result.files == []
    assert [d.why for d in result.dropped_files] == ["missing, or not a regular file"]

    result = await runner.run(request(f"outbox-dirlink sub {host_secret.parent} .env"))
    assert result.reason is RunReason.OK and result.files == []
    assert len(result.dropped_files) == 2  # outbox/sub/.env and /space/outbox/sub/.env
    assert not outputs_root(runner.config.data_dir).exists() or not any(
        outputs_root(runner.config.data_dir).rglob("*.env")
    )


async def test_a_sparse_file_listed_many_times_is_not_copied(make_runner: MakeRunner) -> None:
    # 20 GiB on paper, nothing on disk: copying it (once per listing) would fill the host.
    runner = make_runner(max_output_size="8m")
    result = await runner.run(request(f"outbox-sparse huge.bin {20 * 1024**3} 5"))
    assert result.reason is RunReason.OK
    assert result.files == []
    assert {d.why for d in result.dropped_files} == {"too large to send"}
    outputs = outputs_root(runner.config.data_dir)
    copied = sum(p.stat().st_size for p in outputs.rglob("*") if p.is_file())
    assert copied == 0


async def test_outputs_are_capped_in_count_and_bytes_and_duplicates_count_once(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner(max_output_files=10, max_output_size="1m")
    result = await runner.run(request("outbox-n 15 1024"))
    assert [f.name for f in result.files] == [f"f{i:03d}.bin" for i in range(10)]
    assert [(d.listed, d.why) for d in result.dropped_files] == [("5 more", "more than 10 files")]
    remove_outputs(runner.config.data_dir, result.run_id)

    result = await runner.run(request(f"outbox-n 3 {600 * 1024}"))
    assert [f.size for f in result.files] == [600 * 1024]
    assert [d.why for d in result.dropped_files] == ["too large to send"] * 2
    remove_outputs(runner.config.data_dir, result.run_id)

    result = await runner.run(request("outbox-sparse twice.bin 1000 4"))
    assert [f.size for f in result.files] == [1000]
    assert result.dropped_files == []


async def test_a_result_listing_hundreds_of_thousands_of_files_still_answers(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner()
    result = await runner.run(request("outbox-many 300000"))
    assert result.reason is RunReason.OK
    assert result.reply == "listed a lot"
    assert [f.name for f in result.files] == ["real.txt"]
    assert result.result is not None and len(result.result["files"]) == MAX_LISTED_FILES


async def test_a_deeply_nested_result_is_an_error_not_a_crash(make_runner: MakeRunner) -> None:
    runner = make_runner()
    result = await runner.run(request("result-deep 200000"))
    assert result.reason is RunReason.ERROR
    assert result.error is not None and "nests deeper" in result.error


async def test_results_are_parsed_off_the_event_loop(
    make_runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import mercury.sandbox.runner as runner_module

    threads: list[str] = []
    real = runner_module.read_result

    def spy(io_dir: Path) -> Any:
        threads.append(threading.current_thread().name)
        return real(io_dir)

    monkeypatch.setattr(runner_module, "read_result", spy)
    runner = make_runner()
    assert (await runner.run(request("echo hi"))).reply == "hi"
    assert threads and all(name.startswith("mercury-docker") for name in threads)


# --------------------------------------------------------------------------- the inbox


async def test_an_upload_is_never_written_through_a_planted_symlink(
    make_runner: MakeRunner, host_secret: Path
) -> None:
    # The attack: plant inbox/<name> -> a host file, wait for a user to upload <name>.
    runner = make_runner()
    planted = await runner.run(request(f"plant-link /space/inbox/00-notes.txt {host_secret}"))
    assert planted.reason is RunReason.OK
    before = host_secret.stat()
    saved = await asyncio.to_thread(
        runner.spaces.save_inbox_file, "space-a", "00-notes.txt", b"the upload"
    )
    assert saved == "inbox/00-notes-1.txt"  # created anew beside the planted name
    after = host_secret.stat()
    assert host_secret.read_text() == SECRET
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )
    file = runner.spaces.path("space-a") / saved
    st = file.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid) == (runner.identity.uid, runner.identity.gid)
    seen = reply_json(await runner.run(request(f"read /space/{saved}")))
    assert seen == {"exists": True, "content": "the upload"}


async def test_an_inbox_folder_replaced_by_a_symlink_is_not_followed(
    make_runner: MakeRunner, tmp_path: Path
) -> None:
    victim = tmp_path / "host-dir"
    victim.mkdir(mode=0o700)
    runner = make_runner()
    planted = await runner.run(request(f"plant-link /space/inbox {victim}"))
    assert planted.reason is RunReason.OK
    saved = await asyncio.to_thread(runner.spaces.save_inbox_file, "space-a", "x.txt", b"up")
    assert saved == "inbox/x.txt"
    assert list(victim.iterdir()) == []
    assert victim.stat().st_uid == os.geteuid()  # not handed to the container
    inbox = runner.spaces.path("space-a") / "inbox"
    assert inbox.is_dir() and not inbox.is_symlink()
    assert (inbox / "x.txt").read_bytes() == b"up"


# --------------------------------------------------------------------------- ownership


async def test_the_run_token_file_is_readable_by_the_container_uid_only(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner()
    ident = runner.identity
    got = reply_json(await runner.run(request("stat /run/mercury-io/input.json")))
    assert got == {"mode": 0o600, "uid": ident.uid, "gid": ident.gid}
    got = reply_json(await runner.run(request("stat /run/mercury-io")))
    assert got["mode"] == 0o700
    space = runner.spaces.path("space-a").stat()
    assert (space.st_uid, space.st_gid) == (ident.uid, ident.gid)
    assert stat.S_IMODE(space.st_mode) & 0o007 == 0  # nothing for other users
    if os.geteuid() == 0:
        # Root hands spaces to an id no host account has (auto).
        assert ident.uid == 2_000_000_000
        assert host_owner_of(ident) is None


# --------------------------------------------------------------------------- disk


async def test_a_space_image_stops_an_agent_filling_the_disk(make_runner: MakeRunner) -> None:
    runner = make_runner(disk={"space_size": "16m"})
    # CI runs as root with loop devices: the kernel enforces the size.
    assert runner.spaces.mode == "image", "per-space images need root and loop devices"
    got = reply_json(await runner.run(request("fill /space/big 64 0")))
    assert got["errno"] == 28  # ENOSPC inside the container
    assert got["written"] < 16 * MIB
    image = runner.config.data_dir / "space-images" / "space-a.img"
    assert image.stat().st_blocks * 512 <= 20 * MIB  # what it takes on the host's disk
    assert runner.disk_low() is None
    # The space still works, and keeps its files.
    assert reply_json(await runner.run(request("read /space/MEMORY.md")))["exists"] is True


async def test_a_watched_space_over_its_size_stops_the_run(make_runner: MakeRunner) -> None:
    runner = make_runner(disk={"space_size": "8m", "space_limit": "watch"}, timeout=60)
    assert runner.spaces.mode == "watch"
    result = await runner.run(request("fill /space/big 200 0.02"))
    assert result.reason is RunReason.DISK, result
    assert result.error is not None and "disk.space_size" in result.error
    written = (runner.spaces.path("space-a") / "big").stat().st_size
    assert 8 * MIB < written < 200 * MIB  # stopped on the way, not at the end


async def test_runs_stop_and_wait_below_the_free_disk_floor(
    make_runner: MakeRunner, small_disk: Path
) -> None:
    runner = make_runner(
        data_dir=small_disk / "data",
        disk={"space_size": "1g", "space_limit": "watch", "min_free": "32m"},
        timeout=60,
    )
    result = await runner.run(request("fill /space/big 90 0.05"))
    assert result.reason is RunReason.DISK, result
    assert result.error is not None and "disk.min_free" in result.error
    # Still below the floor: nothing starts.
    assert runner.disk_low() is not None
    refused = await runner.run(request("echo hi"))
    assert refused.reason is RunReason.DISK
    assert refused.error is not None and refused.error.startswith("not started")
    # Room again: runs go on.
    (runner.spaces.path("space-a") / "big").unlink()
    assert runner.disk_low() is None
    assert (await runner.run(request("echo back"))).reply == "back"


async def test_a_spaces_next_run_starts_only_once_its_last_container_is_gone(
    make_runner: MakeRunner, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that sends no file returns without waiting for its container to stop; a
    # leftover of it (a background process) must not share the space with the next run.
    runner = make_runner()
    first = await runner.run(request("result-then-hang"))
    assert first.reason is RunReason.OK and first.container_name is not None
    seen_alive: list[bool] = []
    real_create = runner._create

    async def spy(run: Any, client: Any, spec: Any) -> None:
        try:
            state = docker_client.api.inspect_container(first.container_name)["State"]
            seen_alive.append(state["Running"])
        except Exception:  # NotFound: removed, as it should be
            seen_alive.append(False)
        await real_create(run, client, spec)

    monkeypatch.setattr(runner, "_create", spy)
    second = await runner.run(request("echo next"))
    assert second.reply == "next"
    assert seen_alive == [False]
