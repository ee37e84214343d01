"""The waiting mode of a warm container (`mercury-agent --wait`), as a real process:

    mercury-agent --wait -> relay (127.0.0.1) -> a host API stand-in (unix socket)
                         -> fake model server (127.0.0.1)

input.json is written by the test the way the host hands over: a temporary file in the io
dir, then a rename.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mercury_agent import waiting

from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn

REPO = Path(__file__).resolve().parents[3]
RESOURCES = REPO / "resources"
# The console script, as the image's ENTRYPOINT runs it; `-m` where it is not installed.
_SCRIPT = Path(sys.executable).with_name("mercury-agent")
AGENT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mercury_agent"]
WAITING_LINE = "mercury-agent: waiting for input.json"


@dataclass
class Host:
    fake: FakeModelServer
    socket: str
    root: Path


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    """The fake model server behind a stand-in for the host API: on a unix socket, it
    forwards /model/<provider>/... to the fake as it comes (streams included)."""
    # A short path: sun_path holds 107 bytes, pytest's tmp_path can be longer.
    root = Path(tempfile.mkdtemp(prefix="wait", dir="/tmp"))
    async with FakeModelServer() as fake, aiohttp.ClientSession() as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            url = f"{fake.url}/{request.match_info['tail']}"
            headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
            async with session.post(url, data=body, headers=headers) as upstream:
                resp = web.StreamResponse(
                    status=upstream.status,
                    headers={"Content-Type": upstream.headers.get("Content-Type", "")},
                )
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        app = web.Application()
        app.router.add_post("/model/{provider}/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        socket = str(root / "api.sock")
        await web.UnixSite(runner, socket).start()
        try:
            yield Host(fake, socket, root)
        finally:
            await runner.cleanup()
    shutil.rmtree(root, ignore_errors=True)


class Agent:
    """A `mercury-agent --wait` process; stderr is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def read_until(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        async def scan() -> str:
            assert self.proc.stderr is not None
            while line := (await self.proc.stderr.readline()).decode():
                self.lines.append(line)
                if predicate(line):
                    return line
            raise AssertionError("the agent ended its stderr early:\n" + "".join(self.lines))

        return await asyncio.wait_for(scan(), timeout)

    async def finish(self, timeout: float = 60) -> int:
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), timeout)
        self.lines += rest.decode().splitlines(keepends=True)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


async def start_agent(io_dir: Path, *args: str, env: dict[str, str] | None = None) -> Agent:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MERCURY_", "ANTHROPIC_", "OPENAI_", "PYTHONPROFILE"))
    }
    full_env |= {"MERCURY_RESOURCES_DIR": str(RESOURCES), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *AGENT,
        "--wait",
        "--io-dir",
        str(io_dir),
        *args,
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Agent(proc)


def hand_over(io_dir: Path, data: Any) -> None:
    """As the host does: the whole file under a temporary name, then renamed into place."""
    tmp = io_dir / ".input.json.tmp"
    tmp.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    os.replace(tmp, io_dir / "input.json")


def run_input(host: Host, chain: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "run_id": "run-warm",
        "space_id": "space-1",
        "platform": "web",
        "prompt": "Please list the files.",
        "caller": {"id": "u1", "name": "Ada", "role": "member"},
        "model": {"chain": chain, "retries_per_leg": 0, "budget_s": 60},
        "profile": "general",
        "api": {"socket": host.socket, "token": "run-token"},
    }


def read_result(io_dir: Path) -> dict[str, Any]:
    return json.loads((io_dir / "result.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ as a process


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_a_warm_agent_runs_the_input_it_is_handed(host: Host, provider: str) -> None:
    io_dir, space = host.root / f"io-{provider}", host.root / f"space-{provider}"
    io_dir.mkdir()
    host.fake.script(
        [
            Turn([ToolCall("list_files", {})], input_tokens=100, output_tokens=10),
            Turn([Text("There is nothing here yet.")], input_tokens=120, output_tokens=12),
        ]
    )
    agent = await start_agent(
        io_dir,
        "--wait-timeout",
        "120",
        env={
            "MERCURY_SPACE_DIR": str(space),
            # Unknown names are ignored.
            "MERCURY_PRELOAD": " openai,anthropic,,gemini",
            # Every import is logged to stderr as it happens: none may follow the hand-over.
            "PYTHONPROFILEIMPORTTIME": "1",
        },
    )
    line = await agent.read_until(lambda s: s.startswith(WAITING_LINE))
    assert line == f"{WAITING_LINE} (preloaded: anthropic, openai)\n"
    assert not (io_dir / "result.json").exists()
    # The preloading made its warm-up calls to its own server, never to the host.
    assert host.fake.requests == []
    handed_over = len(agent.lines)

    hand_over(io_dir, run_input(host, [{"provider": provider, "model": "warm-model"}]))
    code = await agent.finish()

    assert code == 0, agent.stderr
    result = read_result(io_dir)
    assert result["ok"] is True, result
    assert result["reply"] == "There is nothing here yet."
    assert result["usage"] == {"input_tokens": 220, "output_tokens": 22, "model": "warm-model"}
    assert [a["outcome"] for a in result["attempts"]] == ["ok", "ok"]
    assert [r.body["stream"] for r in host.fake.requests] == [True, True]
    late = [s for s in agent.lines[handed_over:] if s.startswith("import time:")]
    assert late == [], "imported after the hand-over:\n" + "".join(late)


async def test_an_input_already_there_runs_at_once(tmp_path: Path) -> None:
    hand_over(tmp_path, {"run_id": "r", "space_id": "s", "prompt": "hi"})
    agent = await start_agent(tmp_path)
    assert await agent.finish() == 0, agent.stderr
    assert read_result(tmp_path)["reply"] == "echo: hi"


async def test_bad_input_after_the_wait_still_leaves_a_result(tmp_path: Path) -> None:
    agent = await start_agent(tmp_path, env={"MERCURY_PRELOAD": ""})
    line = await agent.read_until(lambda s: s.startswith(WAITING_LINE))
    assert line == f"{WAITING_LINE} (preloaded: none)\n"
    hand_over(tmp_path, '{"run_id": ')
    assert await agent.finish() == 2
    result = read_result(tmp_path)
    assert (result["ok"], result["error_class"]) == (False, "bad_input")


async def test_no_input_before_the_timeout_exits_0_without_a_result(tmp_path: Path) -> None:
    agent = await start_agent(tmp_path, "--wait-timeout", "0.2")
    assert await agent.finish() == 0
    assert list(tmp_path.iterdir()) == []
    assert agent.lines[-1] == (
        f"mercury-agent: no input.json in {tmp_path} after 0.2 s; exiting without a run\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_while_waiting_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    agent = await start_agent(tmp_path, env={"MERCURY_PRELOAD": "anthropic"})
    await agent.read_until(lambda s: s.startswith(WAITING_LINE))
    agent.proc.send_signal(sig)
    assert await agent.finish() == 0
    assert "Traceback" not in agent.stderr
    assert (
        agent.lines[-1]
        == f"mercury-agent: stopped by {sig.name} while waiting for input.json; no run\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
async def test_a_bad_wait_timeout_is_refused(tmp_path: Path, value: str) -> None:
    agent = await start_agent(tmp_path, "--wait-timeout", value)
    assert await agent.finish() == 2
    assert "--wait-timeout" in agent.stderr


# ------------------------------------------------------------------ in process


class FakeTime:
    """A clock that moves only when slept on, recording each sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_polling_is_fast_at_first_then_bounded(tmp_path: Path) -> None:
    t = FakeTime()
    assert waiting.poll_for(tmp_path / "input.json", 3.0, clock=t.clock, sleep=t.sleep) is False
    assert t.sleeps[0] == waiting.POLL_FAST_S
    assert max(t.sleeps) == waiting.POLL_SLOW_S
    assert set(t.sleeps[: int(waiting.FAST_PHASE_S / waiting.POLL_FAST_S)]) == {waiting.POLL_FAST_S}
    # Never sleeps past the deadline: it ends at the timeout, not an interval later.
    assert t.now == pytest.approx(103.0)


def test_polling_returns_once_the_file_is_there(tmp_path: Path) -> None:
    t = FakeTime()
    target = tmp_path / "input.json"

    def sleep(seconds: float) -> None:
        t.sleep(seconds)
        if len(t.sleeps) == 5:
            target.write_text("{}")

    assert waiting.poll_for(target, 60, clock=t.clock, sleep=sleep) is True
    assert len(t.sleeps) == 5


def test_polling_an_unreadable_dir_hands_over_to_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "not found": the run reports the problem in result.json instead of a silent wait."""

    def denied(_path: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(waiting.os, "stat", denied)
    assert waiting.poll_for(tmp_path / "input.json", 60, sleep=lambda _s: None) is True


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("anthropic,openai", {"anthropic", "openai"}),
        (" OpenAI , ,", {"openai"}),
        ("", set()),
    ],
)
def test_preload_names(value: str, names: set[str]) -> None:
    assert waiting.preload_names({waiting.PRELOAD_ENV: value}) == names
    assert waiting.preload_names({}) == set()
