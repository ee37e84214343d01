"""`mercury sandbox run`: one container through the runner, from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from mercury.sandbox.hardening import LABEL_INSTANCE

pytestmark = pytest.mark.docker


def site(tmp_path: Path, image: str) -> tuple[Path, str]:
    instance = f"cli{uuid.uuid4().hex[:10]}"
    (tmp_path / "mercury.yaml").write_text(
        f"instance: {instance}\n"
        f"data_dir: {tmp_path / 'data'}\n"
        f"container: {{image: {image}, memory: 128m, pids: 64, timeout: 20}}\n"
    )
    return tmp_path, instance


def sandbox_run(cwd: Path, prompt: str, *args: str) -> subprocess.CompletedProcess[str]:
    (cwd / "input.json").write_text(json.dumps({"prompt": prompt}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    # A secret in the operator's environment must not reach the container.
    env["MERCURY_SLACK_BOT_TOKEN"] = "xoxb-cli-secret-0000"
    return subprocess.run(
        [sys.executable, "-m", "mercury.cli", "sandbox", "run", "--space", "demo",
         "--input", "input.json", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def left_behind(client: docker.DockerClient, instance: str) -> list[str]:
    found = client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
    )
    return [c.name for c in found]


def test_ok_run_prints_the_result_as_json_and_exits_0(
    tmp_path: Path, test_image: str, docker_client: docker.DockerClient
) -> None:
    cwd, instance = site(tmp_path, test_image)
    r = sandbox_run(cwd, "echo hello from the sandbox", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["ok"] is True and result["reason"] == "ok"
    assert result["reply"] == "hello from the sandbox"
    assert result["space_id"] == "demo"
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] > 0
    assert {"exit_code", "error", "usage", "files"} <= set(result)
    assert left_behind(docker_client, instance) == []
    assert list((cwd / "data" / "io").iterdir()) == []
    # the space folder persists for the next run
    assert (cwd / "data" / "spaces" / "demo").is_dir()


def test_failed_run_exits_1_with_reason_and_log(
    tmp_path: Path, test_image: str, docker_client: docker.DockerClient
) -> None:
    cwd, instance = site(tmp_path, test_image)
    r = sandbox_run(cwd, "crash 3")
    assert r.returncode == 1
    assert r.stdout.startswith("crashed")
    assert "exit 3" in r.stdout
    assert "container log" in r.stderr
    assert left_behind(docker_client, instance) == []


def test_flags_override_config(tmp_path: Path, test_image: str) -> None:
    cwd, _ = site(tmp_path, test_image)
    r = sandbox_run(cwd, "sleep 30", "--timeout", "2s", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["reason"] == "timeout"
    r = sandbox_run(cwd, "oom", "--memory", "64m", "--json")
    assert json.loads(r.stdout)["reason"] == "oom"


def test_secret_in_the_operators_env_stays_out(tmp_path: Path, test_image: str) -> None:
    cwd, _ = site(tmp_path, test_image)
    r = sandbox_run(cwd, "env", "--json")
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)["reply"]
    assert "xoxb-cli-secret" not in reply and "MERCURY_SLACK_BOT_TOKEN" not in reply
    assert json.loads(reply)["MERCURY_SPACE_ID"] == "demo"


def test_bad_input_file_and_bad_space_are_one_line_errors(tmp_path: Path, test_image: str) -> None:
    cwd, _ = site(tmp_path, test_image)
    (cwd / "broken.json").write_text("{nope")
    r = subprocess.run(
        [sys.executable, "-m", "mercury.cli", "sandbox", "run", "--space", "demo",
         "--input", "broken.json"],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1 and "broken.json: not readable JSON" in r.stderr
    (cwd / "input.json").write_text(json.dumps({"prompt": "echo x"}))
    r = subprocess.run(
        [sys.executable, "-m", "mercury.cli", "sandbox", "run", "--space", "../etc",
         "--input", "input.json"],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: space id '../etc' is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit"
    ]


def test_real_agent_answers_through_the_host_api(tmp_path: Path, agent_image: str) -> None:
    """`mercury sandbox run` serves the host API: the real agent reaches the (fake) model."""
    from tests.fakes.model_server import FakeModelServer, Text

    with FakeModelServer() as fake:
        fake.script([Text("Hello from the model")])
        (tmp_path / "mercury.yaml").write_text(
            f"instance: cli{uuid.uuid4().hex[:10]}\n"
            f"data_dir: {tmp_path / 'data'}\n"
            f"container: {{image: {agent_image}, memory: 512m, timeout: 90}}\n"
            "model:\n"
            f"  chain: [{{provider: anthropic, model: claude-test, base_url: '{fake.url}'}}]\n"
        )
        (tmp_path / "input.json").write_text(json.dumps({"prompt": "hi"}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
        env["ANTHROPIC_API_KEY"] = "sk-ant-operator-key-000000000"
        r = subprocess.run(
            [sys.executable, "-m", "mercury.cli", "sandbox", "run", "--space", "demo",
             "--input", "input.json", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout)
        assert result["reply"] == "Hello from the model"
        assert result["usage"]["input_tokens"] == 10
        (req,) = fake.requests
        assert req.headers["x-api-key"] == "sk-ant-operator-key-000000000"
        assert "sk-ant-operator-key" not in r.stdout
