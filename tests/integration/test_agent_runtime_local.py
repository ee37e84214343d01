"""The agent runtime as a real process outside a container, end to end:

    mercury-agent -> relay (127.0.0.1) -> host API (unix socket, run token)
                  -> model proxy (adds the real key) -> fake model server (127.0.0.1)

Each test mints a run token, writes input.json, runs `python -m mercury_agent --io-dir`
with MERCURY_SPACE_DIR pointing at a temporary space, and checks result.json, the space
and what the fake model server received.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from mercury.api.server import SOCKET_NAME, HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, ModelConfig, ModelLeg, Secrets
from tests.fakes.model_server import Error, FakeModelServer, RecordedRequest, Text, ToolCall, Turn

REPO = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO / "container" / "agent" / "src"
RESOURCES = REPO / "resources"
ANTHROPIC_KEY = "sk-ant-real-key-held-by-the-host"
OPENAI_KEY = "sk-openai-real-key-held-by-the-host"
MODELS = {"anthropic": ("claude-main", "claude-backup"), "openai": ("gpt-main", "gpt-backup")}


@dataclass
class Host:
    fake: FakeModelServer
    tokens: TokenStore
    meter: UsageMeter
    socket: Path
    root: Path


@dataclass
class Run:
    run_id: str
    code: int
    result: dict[str, Any]
    stderr: str
    space: Path
    token: str
    seconds: float


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    """The fake model server behind a real HostApiServer, as in production."""
    root = Path(tempfile.mkdtemp(prefix="mercury-agent-", dir="/tmp"))
    root.chmod(0o755)
    async with FakeModelServer() as fake:
        base = {"anthropic": fake.url, "openai": fake.url + "/v1"}
        legs = [
            ModelLeg(provider=provider, model=model, base_url=base[provider])
            for provider, models in MODELS.items()
            for model in models
        ]
        config = Config(model=ModelConfig(chain=legs))
        secrets = Secrets(
            anthropic_api_key=SecretStr(ANTHROPIC_KEY), openai_api_key=SecretStr(OPENAI_KEY)
        )
        tokens, meter = TokenStore(), UsageMeter()
        server = HostApiServer(root / "api", tokens, config=config, secrets=secrets, meter=meter)
        await server.start()
        # One socket serves every run of these tests (the agent runs on the host here).
        socket = await server.open_run("local") / SOCKET_NAME
        try:
            yield Host(fake, tokens, meter, socket, root)
        finally:
            await server.stop()
    shutil.rmtree(root, ignore_errors=True)


def leg(provider: str, model: str) -> dict[str, str]:
    return {"provider": provider, "model": model}


async def run_agent(
    host: Host,
    chain: list[dict[str, str]],
    *,
    retries_per_leg: int = 2,
    budget_s: float = 60,
    max_turns: int = 10,
    token: str | None = None,
    prompt: str = "Please write a.txt and send it to me.",
) -> Run:
    run_id = f"run-{len(os.listdir(host.root))}"
    space, io_dir = host.root / run_id / "space", host.root / run_id / "io"
    space.mkdir(parents=True)
    io_dir.mkdir()
    token = token or host.tokens.mint(run_id, "space-1", "member")
    payload = {
        "run_id": run_id,
        "space_id": "space-1",
        "platform": "web",
        "prompt": prompt,
        "messages": [],
        "caller": {"id": "u1", "name": "Ada", "role": "member"},
        "model": {
            "chain": chain,
            "retries_per_leg": retries_per_leg,
            "budget_s": budget_s,
            "max_turns": max_turns,
        },
        "profile": "general",
        "agent": {"command": None, "bash_timeout_s": 30},
        "api": {"socket": str(host.socket), "token": token},
    }
    (io_dir / "input.json").write_text(json.dumps(payload))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MERCURY_", "ANTHROPIC_", "OPENAI_"))
    }
    env |= {
        "PYTHONPATH": str(AGENT_SRC),
        "MERCURY_SPACE_DIR": str(space),
        "MERCURY_RESOURCES_DIR": str(RESOURCES),
    }
    started = time.monotonic()
    # Async, so this event loop keeps serving the host API and the fake meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercury_agent",
        "--io-dir",
        str(io_dir),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    seconds = time.monotonic() - started
    result = json.loads((io_dir / "result.json").read_text())
    assert proc.returncode is not None
    return Run(
        run_id, proc.returncode, result, stderr.decode(errors="replace"), space, token, seconds
    )


def tool_results(req: RecordedRequest) -> list[tuple[str, str]]:
    """(tool call id, content) of the tool results in a model request, either wire format."""
    messages = req.body["messages"]
    if req.provider == "anthropic":
        return [
            (block["tool_use_id"], block["content"])
            for block in messages[-1]["content"]
            if block.get("type") == "tool_result"
        ]
    tail: list[tuple[str, str]] = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        tail.insert(0, (message["tool_call_id"], message["content"]))
    return tail


def credential(req: RecordedRequest) -> str:
    return req.headers.get("x-api-key") or req.headers.get("authorization", "")


# ------------------------------------------------------------------ the conversation


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_scripted_conversation_with_tools(host: Host, provider: str) -> None:
    model = MODELS[provider][0]
    host.fake.script(
        [
            Turn(
                [
                    ToolCall(
                        "bash", {"command": "printf 'hello from bash' > a.txt", "timeout_s": 20}
                    )
                ],
                input_tokens=100,
                output_tokens=10,
            ),
            Turn([ToolCall("read_file", {"path": "a.txt"})], input_tokens=110, output_tokens=11),
            Turn([ToolCall("send_file", {"path": "a.txt"})], input_tokens=120, output_tokens=12),
            Turn([Text("Here is a.txt, it says hello.")], input_tokens=130, output_tokens=13),
        ],
        model=model,
    )
    run = await run_agent(host, [leg(provider, model)])

    assert run.code == 0, run.stderr
    result = run.result
    assert result["ok"] is True
    assert result["reply"] == "Here is a.txt, it says hello."
    assert result["files"] == ["outbox/a.txt"]
    assert (run.space / "outbox" / "a.txt").read_text() == "hello from bash"
    assert (run.space / "a.txt").read_text() == "hello from bash"
    assert result["usage"] == {"input_tokens": 460, "output_tokens": 46, "model": model}
    assert [(a["turn"], a["leg"], a["outcome"], a["status"]) for a in result["attempts"]] == [
        (1, 0, "ok", 200),
        (2, 0, "ok", 200),
        (3, 0, "ok", 200),
        (4, 0, "ok", 200),
    ]

    requests = host.fake.requests
    assert len(requests) == 4
    expected_path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    assert {r.path for r in requests} == {expected_path}
    assert {r.model for r in requests} == {model}
    # Every later request carries the previous tool's result.
    assert tool_results(requests[0]) == []
    ((_, bash_out),) = tool_results(requests[1])
    assert bash_out == "(no output)\n[exit code 0]"
    ((_, read_out),) = tool_results(requests[2])
    assert read_out == "hello from bash"
    ((_, send_out),) = tool_results(requests[3])
    assert "outbox/a.txt" in send_out
    # The tools were offered, and the caller's message came through.
    first = requests[0].body
    tool_names = (
        [t["name"] for t in first["tools"]]
        if provider == "anthropic"
        else [t["function"]["name"] for t in first["tools"]]
    )
    assert {"bash", "read_file", "write_file", "edit_file", "list_files", "send_file"} == set(
        tool_names
    )
    assert "Ada: Please write a.txt and send it to me." in json.dumps(first["messages"])

    # The real key reached the model server, added by the host; the run token did not.
    real = ANTHROPIC_KEY if provider == "anthropic" else OPENAI_KEY
    for req in requests:
        assert credential(req).removeprefix("Bearer ") == real
        assert run.token not in json.dumps(req.headers)
    # ... and it is nowhere in what the agent wrote.
    assert real not in json.dumps(result)
    for path in run.space.rglob("*"):
        if path.is_file():
            assert real not in path.read_text(errors="replace")
    # The host metered the same usage from the proxied responses.
    totals = host.meter.pop_run(run.run_id)
    assert (totals.requests, totals.input_tokens, totals.output_tokens) == (4, 460, 46)


async def test_overloaded_first_leg_falls_over_to_the_second(host: Host) -> None:
    host.fake.script([Error(529), Error(529), Error(529)], model="claude-main")
    host.fake.script(
        [Turn([Text("answer from the backup")], input_tokens=7, output_tokens=3)],
        model="gpt-backup",
    )
    run = await run_agent(
        host, [leg("anthropic", "claude-main"), leg("openai", "gpt-backup")], retries_per_leg=2
    )
    assert run.code == 0, run.stderr
    assert run.result["reply"] == "answer from the backup"
    assert run.result["usage"] == {"input_tokens": 7, "output_tokens": 3, "model": "gpt-backup"}
    attempts = [
        (a["leg"], a["provider"], a["model"], a["outcome"], a["status"])
        for a in run.result["attempts"]
    ]
    assert attempts == [
        (0, "anthropic", "claude-main", "retry", 529),
        (0, "anthropic", "claude-main", "retry", 529),
        (0, "anthropic", "claude-main", "next_leg", 529),
        (1, "openai", "gpt-backup", "ok", 200),
    ]
    assert [r.model for r in host.fake.requests] == ["claude-main"] * 3 + ["gpt-backup"]
    assert all(isinstance(a["duration_ms"], int) for a in run.result["attempts"])


async def test_rejected_key_fails_fast_without_retry(host: Host) -> None:
    host.fake.script([Error(401, "invalid x-api-key")], model="claude-main")
    host.fake.script([Text("never used")], model="gpt-backup")
    run = await run_agent(
        host, [leg("anthropic", "claude-main"), leg("openai", "gpt-backup")], retries_per_leg=3
    )
    assert run.code == 1
    assert run.result["ok"] is False
    assert run.result["error_class"] == "auth"
    assert "401" in run.result["error"] and "invalid x-api-key" in run.result["error"]
    assert "API key" in run.result["error"]
    assert len(host.fake.requests) == 1
    assert [(a["outcome"], a["status"]) for a in run.result["attempts"]] == [("fail", 401)]


async def test_a_revoked_run_token_is_refused_by_the_host(host: Host) -> None:
    token = host.tokens.mint("old-run", "space-1", "member")
    host.tokens.revoke("old-run")
    host.fake.script([Text("never used")], model="claude-main")
    run = await run_agent(host, [leg("anthropic", "claude-main")], token=token)
    assert run.code == 1
    assert run.result["error_class"] == "auth"
    assert "run token" in run.result["error"]
    assert host.fake.requests == []  # refused before any model was asked


async def test_budget_exceeded_while_retrying(host: Host) -> None:
    host.fake.script([Error(529) for _ in range(20)], model="claude-main")
    run = await run_agent(host, [leg("anthropic", "claude-main")], retries_per_leg=10, budget_s=1.0)
    assert run.code == 1
    assert run.result["error_class"] == "budget"
    assert "time budget of 1 s" in run.result["error"]
    assert "529" in run.result["error"]
    assert all(a["outcome"] == "retry" for a in run.result["attempts"])
    assert len(host.fake.requests) == len(run.result["attempts"]) >= 2


async def test_budget_cuts_off_a_model_that_does_not_answer(host: Host) -> None:
    host.fake.script([Turn([Text("too late")], delay=4.0)], model="claude-main")
    run = await run_agent(host, [leg("anthropic", "claude-main")], budget_s=1.0)
    assert run.code == 1
    assert run.result["error_class"] == "budget"
    # It gave up at the budget instead of waiting for the answer the fake holds back for 4 s
    # (the attempt's own span: the process's start-up, SDK imports included, is not part).
    assert run.result["attempts"][0]["duration_ms"] < 4000
    assert [a["outcome"] for a in run.result["attempts"]] == ["budget"]


async def test_max_turns_ends_a_run_that_keeps_calling_tools(host: Host) -> None:
    host.fake.script([ToolCall("bash", {"command": "true"}) for _ in range(3)], model="gpt-main")
    run = await run_agent(host, [leg("openai", "gpt-main")], max_turns=3)
    assert run.code == 1
    assert run.result["error_class"] == "max_turns"
    assert "3 turns" in run.result["error"]
    assert run.result["usage"]["input_tokens"] == 30  # spent before the limit, reported
    assert len(host.fake.requests) == 3
