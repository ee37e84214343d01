"""The real agent image end to end: real Docker, network none, the fake model server on
loopback reached only through the host API's unix socket, which adds the key."""

from __future__ import annotations

import json
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
from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn

pytestmark = pytest.mark.docker

HOST_KEY = {
    "anthropic": "sk-ant-host-only-key-0123456789",
    "openai": "sk-openai-host-only-0123456789",
}


class Rig:
    """Host API + runner + fake model server for one test."""

    def __init__(self, fake: FakeModelServer, tmp: Path, image: str, client: Any) -> None:
        self.fake = fake
        self.tmp = tmp
        self.image = image
        self.client = client
        self.host: RunHost | None = None
        self.runner: ContainerRunner | None = None

    async def start(self, **model: Any) -> None:
        chain = model.pop(
            "chain",
            [
                {"provider": "anthropic", "model": "claude-test", "base_url": self.fake.url},
                {"provider": "openai", "model": "gpt-test", "base_url": self.fake.url + "/v1"},
            ],
        )
        self.config = Config.model_validate(
            {
                "instance": f"e2e{uuid.uuid4().hex[:8]}",
                "data_dir": str(self.tmp / "data"),
                "container": {"image": self.image, "memory": "512m", "timeout": 90, "pids": 128},
                "model": {"chain": chain, "retries_per_leg": 2, "budget": 60, **model},
            }
        )
        secrets = Secrets(
            anthropic_api_key=HOST_KEY["anthropic"], openai_api_key=HOST_KEY["openai"]
        )
        self.host = RunHost(self.config, secrets)
        await self.host.start()
        self.runner = ContainerRunner(
            self.config,
            ImageBuildState(self.image),
            client=self.client,
            resources_dir=resources_dir(),
        )

    async def run(self, prompt: str, space: str = "s1", **extra: Any) -> RunResult:
        assert self.host and self.runner
        run_id = uuid.uuid4().hex[:12]
        access = await self.host.open_run(run_id, space, "member")
        data = build_input(
            self.config,
            {"prompt": prompt, **extra},
            run_id=run_id,
            space_id=space,
            token=access.token,
        )
        try:
            return await self.runner.run(
                RunRequest(
                    run_id=run_id, space_id=space, input=data, api_socket_dir=access.socket_dir
                )
            )
        finally:
            self.metered = await self.host.close_run(run_id)

    async def close(self) -> None:
        if self.runner:
            await self.runner.aclose()
            left = self.client.containers.list(
                ignore_removed=True,
                all=True,
                filters={"label": f"mercury.instance={self.config.instance}"},
            )
            assert left == []
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


def _tool_results(body: dict[str, Any]) -> list[str]:
    """Tool results the agent sent back, in either wire format."""
    out: list[str] = []
    for msg in body.get("messages", []):
        if msg.get("role") == "tool":
            out.append(str(msg.get("content")))
        if isinstance(msg.get("content"), list):
            for block in msg["content"]:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    content = block.get("content")
                    out.append(json.dumps(content) if not isinstance(content, str) else content)
    return out


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_scripted_conversation_with_tools(rig: Rig, provider: str) -> None:
    model = "claude-test" if provider == "anthropic" else "gpt-test"
    base = rig.fake.url if provider == "anthropic" else rig.fake.url + "/v1"
    await rig.start(chain=[{"provider": provider, "model": model, "base_url": base}])
    rig.fake.script(
        [
            Turn([ToolCall("bash", {"command": "echo hello-from-bash > /space/a.txt; env"})],
                 input_tokens=100, output_tokens=10),
            Turn([ToolCall("read_file", {"path": "a.txt"})], input_tokens=120, output_tokens=8),
            Turn([ToolCall("send_file", {"path": "a.txt"})], input_tokens=140, output_tokens=6),
            Turn([Text("Here is your file: hello-from-bash")], input_tokens=160, output_tokens=12),
        ]
    )  # fmt: skip
    result = await rig.run("write a file and send it to me")
    assert result.ok, (result.error, result.log_tail)
    assert result.reply == "Here is your file: hello-from-bash"
    assert [f.name for f in result.files] == ["a.txt"]
    assert result.files[0].path.read_text().strip() == "hello-from-bash"  # the host's copy
    space = rig.config.data_dir / "spaces" / "s1"
    assert (space / "outbox" / "a.txt").read_text().strip() == "hello-from-bash"
    assert result.usage["input_tokens"] == 520
    assert result.usage["output_tokens"] == 36
    # the host metered the same usage from the proxied responses
    assert rig.metered.input_tokens == 520 and rig.metered.output_tokens == 36

    reqs = rig.fake.requests
    assert len(reqs) == 4
    results = [_tool_results(r.body) for r in reqs]
    assert results[0] == []
    assert any("MERCURY_RUN_ID" in t for t in results[1])  # the env dump came back
    assert any("hello-from-bash" in t for t in results[2])  # read_file's content
    # the model saw the same model name and the host's key, never the run token
    for r in reqs:
        assert r.body["model"] == model
        if provider == "anthropic":
            assert r.headers.get("x-api-key") == HOST_KEY["anthropic"]
        else:
            assert r.headers.get("authorization") == f"Bearer {HOST_KEY['openai']}"
    # ...while the key is nowhere in the container: not in its env, not in the space files
    env_dump = "\n".join(results[1])
    assert HOST_KEY[provider] not in env_dump
    assert "ANTHROPIC_API_KEY" not in env_dump or HOST_KEY["anthropic"] not in env_dump
    for path in space.rglob("*"):
        if path.is_file():
            assert HOST_KEY[provider] not in path.read_text(errors="replace")


async def test_overloaded_leg_falls_over_to_the_next(rig: Rig) -> None:
    await rig.start()
    rig.fake.script([Error(529), Error(529), Error(529)], model="claude-test")
    rig.fake.script([Text("answered by leg 2")], model="gpt-test")
    result = await rig.run("hello")
    assert result.ok, result.error
    assert result.reply == "answered by leg 2"
    attempts = result.result["attempts"] if result.result else []
    legs = [(a.get("provider"), a.get("status")) for a in attempts]
    assert legs[:3] == [("anthropic", 529)] * 3
    assert legs[3][0] == "openai"
    assert [r.body["model"] for r in rig.fake.requests] == ["claude-test"] * 3 + ["gpt-test"]


async def test_unauthorized_fails_fast_with_a_plain_message(rig: Rig) -> None:
    await rig.start()
    rig.fake.script([Error(401)], model="claude-test")
    rig.fake.script([Text("must not be reached")], model="gpt-test")
    result = await rig.run("hello")
    assert not result.ok
    assert result.result is not None and result.result["error_class"] == "auth"
    assert result.error and HOST_KEY["anthropic"] not in result.error
    assert len(rig.fake.requests) == 1  # no retry, no next leg


async def test_budget_exceeded_is_a_clear_error(rig: Rig) -> None:
    await rig.start(budget=2)
    rig.fake.script([Turn([Text("too late")], delay=6)], model="claude-test")
    result = await rig.run("hello")
    assert not result.ok
    assert result.result is not None and result.result["error_class"] == "budget"
    assert "budget" in (result.error or "").lower()


async def test_a_token_cannot_reach_another_space(rig: Rig) -> None:
    """From inside the container, the run's own token is refused for another space."""
    await rig.start()
    probe = (
        "python3 - <<'EOF'\n"
        "import json, socket\n"
        "inp = json.load(open('/run/mercury-io/input.json'))\n"
        "def get(path, token):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(inp['api']['socket'])\n"
        "    head = f'GET {path} HTTP/1.0\\r\\nAuthorization: Bearer {token}\\r\\n\\r\\n'\n"
        "    s.sendall(head.encode())\n"
        "    return s.recv(200).split(b' ')[1].decode()\n"
        "t = inp['api']['token']\n"
        "print('own', get('/spaces/s1/info', t), 'other', get('/spaces/s2/info', t),"
        " 'forged', get('/spaces/s1/info', 'x' * 43))\n"
        "EOF"
    )
    rig.fake.script([ToolCall("bash", {"command": probe})], model="claude-test")
    rig.fake.script([Text("probed")], model="claude-test")
    result = await rig.run("probe", space="s1")
    assert result.ok, result.error
    seen = " ".join(_tool_results(rig.fake.requests[1].body))
    assert "own 200 other 403 forged 401" in seen


async def test_a_hostile_agent_cannot_misuse_the_model_proxy(rig: Rig) -> None:
    """From inside the container: input.json holds no base_url (nor the credentials in its
    user-info), and the run's token does not open other methods, paths or models."""
    creds = rig.fake.url.replace("http://", "http://proxyuser:hunter2-pass@")
    await rig.start(
        chain=[
            {"provider": "anthropic", "model": "claude-test", "base_url": creds},
            {"provider": "openai", "model": "gpt-test", "base_url": rig.fake.url + "/v1"},
        ]
    )
    probe = (
        "python3 - <<'EOF'\n"
        "import json, socket\n"
        "raw = open('/run/mercury-io/input.json').read()\n"
        "inp = json.loads(raw)\n"
        "t = inp['api']['token']\n"
        "def call(method, path, body=None, extra=''):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(inp['api']['socket'])\n"
        "    data = json.dumps(body).encode() if body is not None else b''\n"
        "    head = (f'{method} {path} HTTP/1.0\\r\\nx-api-key: {t}\\r\\n'\n"
        "            f'Content-Type: application/json\\r\\nContent-Length: {len(data)}\\r\\n'\n"
        "            f'{extra}\\r\\n')\n"
        "    s.sendall(head.encode() + data)\n"
        "    return s.recv(200).split(b' ')[1].decode()\n"
        "leaked = any(w in raw for w in ('hunter2', 'proxyuser', 'base_url'))\n"
        "print('input', 'LEAKED' if leaked else 'clean',\n"
        "      'delete-model', call('DELETE', '/model/openai/v1/models/ft:gpt-4o:acme::x1'),\n"
        "      'stored-list', call('GET', '/model/openai/v1/chat/completions'),\n"
        "      'stored-response', call('DELETE', '/model/openai/v1/responses/resp_1'),\n"
        "      'other-model', call('POST', '/model/anthropic/v1/messages',\n"
        "          {'model': 'claude-opus-4-1', 'max_tokens': 5, 'messages': []}),\n"
        "      'encoded', call('GET', '/model/anthropic/v1/models/%2e%2e/files'),\n"
        "      'backslash', call('GET', '/model/anthropic/v1/models/x\\\\..\\\\files'))\n"
        "EOF"
    )
    rig.fake.script([ToolCall("bash", {"command": probe})], model="claude-test")
    rig.fake.script([Text("probed")], model="claude-test")
    result = await rig.run("probe the proxy")
    assert result.ok, result.error
    seen = " ".join(_tool_results(rig.fake.requests[1].body))
    assert (
        "input clean delete-model 403 stored-list 403 stored-response 403 other-model 403 "
        "encoded 403 backslash 403"
    ) in seen, seen
    # Only the agent's two turns reached the model; both were metered.
    assert [r.path for r in rig.fake.requests] == ["/v1/messages"] * 2
    assert rig.metered.requests == 2
