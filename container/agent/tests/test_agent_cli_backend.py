"""The agent-CLI backend, against small fake CLIs (Python scripts written by the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

AGENT_SRC = Path(__file__).resolve().parents[1] / "src"

from mercury_agent.cli_backend import (  # noqa: E402
    build_invocation,
    parse_claude,
    parse_output,
    parse_pi,
    run_cli,
)
from mercury_agent.contract import AgentError  # noqa: E402

CLAUDE_OK = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 1234,
    "num_turns": 3,
    "result": "The answer is 42.",
    "session_id": "abc",
    "total_cost_usd": 0.0123,
    "usage": {
        "input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 30,
        "output_tokens": 40,
    },
    "modelUsage": {
        "claude-haiku-x": {"inputTokens": 5, "outputTokens": 1},
        "claude-sonnet-x": {"inputTokens": 145, "outputTokens": 39},
    },
}
# Claude Code can report a failure as subtype "success" with is_error true (and exit 1).
CLAUDE_ERROR_AS_SUCCESS = {
    **CLAUDE_OK,
    "is_error": True,
    "result": "API Error: 401 invalid x-api-key",
    "total_cost_usd": 0,
}


def pi_message(
    text: str, stop: str = "stop", *, error: str | None = None, tokens: tuple[int, int] = (10, 5)
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": [{"type": "text", "text": text}] if text else [],
        "model": "pi-model",
        "provider": "anthropic",
        "usage": {
            "input": tokens[0],
            "output": tokens[1],
            "cacheRead": 1,
            "cacheWrite": 0,
            "cost": {"total": 0.001},
        },
        "stopReason": stop,
    }
    if error:
        message["errorMessage"] = error
    return {"type": "message_end", "message": message}


PI_OK = [
    {"type": "session", "id": "s1"},
    {"type": "agent_start"},
    {"type": "turn_start"},
    {"type": "message_end", "message": {"role": "user", "content": "hi"}},
    pi_message("", "toolUse"),
    {"type": "tool_execution_end", "toolCallId": "t1", "toolName": "bash", "isError": False},
    pi_message("All done: 3 files.", tokens=(20, 7)),
    {"type": "turn_end", "message": {"role": "assistant"}},
]
PI_MODEL_ERROR = [
    {"type": "agent_start"},
    pi_message("", "error", error="429 rate limited by provider"),
    {"type": "agent_end", "messages": []},
]


def script(tmp_path: Path, body: str, name: str = "fake_cli.py") -> list[str]:
    """A fake CLI: `body` runs with `stdin_text`, `args` and `record(**kv)` available."""
    path = tmp_path / name
    path.write_text(
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "stdin_text = sys.stdin.read()\n"
        f"RECORD = {str(tmp_path / 'record.json')!r}\n"
        "def record(**kv):\n"
        "    with open(RECORD, 'w') as fh:\n"
        "        json.dump(kv, fh)\n" + textwrap.dedent(body)
    )
    return [sys.executable, str(path)]


def recorded(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "record.json").read_text())


def printing(data: Any, code: int = 0, *, jsonl: bool = False) -> str:
    text = "\n".join(json.dumps(e) for e in data) if jsonl else json.dumps(data)
    return f"print({text!r})\nsys.exit({code})\n"


async def run(
    tmp_path: Path, command: list[str], prompt: str = "PROMPT", timeout: float | None = 30
) -> Any:
    env = {**os.environ, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/model/anthropic"}
    return await run_cli(
        command, prompt, cwd=tmp_path, env=env, timeout_s=timeout, default_model="leg-model"
    )


# ------------------------------------------------------------------ pure parsing


def test_claude_success() -> None:
    out = parse_claude(CLAUDE_OK, 0)
    assert out.ok and out.reply == "The answer is 42."
    assert (out.usage.input_tokens, out.usage.output_tokens) == (150, 40)
    assert out.usage.cost_usd == pytest.approx(0.0123)
    assert out.usage.model == "claude-sonnet-x"  # the model that did the work


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (CLAUDE_ERROR_AS_SUCCESS, 1),  # is_error with subtype success, exit 1
        (CLAUDE_ERROR_AS_SUCCESS, 0),  # is_error alone is enough
        (CLAUDE_OK, 1),  # a "success" object but a failing exit code
        ({**CLAUDE_OK, "subtype": "error_max_turns"}, 0),
    ],
)
def test_claude_failure_is_read_from_the_flag_and_the_exit_code(data: Any, code: int) -> None:
    out = parse_claude(data, code)
    assert not out.ok and out.reply == ""
    assert out.error and f"exit code {code}" in out.error


def test_pi_success_sums_usage_and_takes_the_final_text() -> None:
    out = parse_pi(PI_OK, 0)
    assert out.ok and out.reply == "All done: 3 files."
    assert (out.usage.input_tokens, out.usage.output_tokens) == (10 + 1 + 20 + 1, 5 + 7)
    assert out.usage.cost_usd == pytest.approx(0.002)
    assert out.usage.model == "pi-model"


def test_pi_model_error_with_exit_0_is_a_failure() -> None:
    out = parse_pi(PI_MODEL_ERROR, 0)
    assert not out.ok
    assert out.error and "stopReason=error" in out.error and "429 rate limited" in out.error


def test_pi_error_that_was_retried_successfully_is_not_a_failure() -> None:
    events = [pi_message("", "error", error="overloaded"), pi_message("Recovered answer.")]
    out = parse_pi(events, 0)
    assert out.ok and out.reply == "Recovered answer."


def test_pi_without_any_assistant_message_fails() -> None:
    assert not parse_pi([{"type": "agent_start"}], 0).ok


def test_output_format_detection() -> None:
    assert parse_output(json.dumps(CLAUDE_OK), 0).format == "claude"
    stream = "\n".join(
        [json.dumps({"type": "system", "subtype": "init"}), json.dumps(CLAUDE_OK)]
    )  # Claude Code --output-format stream-json
    assert parse_output(stream, 0).reply == "The answer is 42."
    pi = "\n".join(json.dumps(e) for e in PI_OK)
    assert parse_output(pi, 0).format == "pi"
    plain = parse_output("just text\n", 0, "m")
    assert (plain.ok, plain.reply, plain.usage.model) == (True, "just text", "m")
    assert not parse_output("just text", 2).ok
    assert not parse_output("", 0).ok


def test_prompt_goes_to_stdin_unless_the_argv_has_a_placeholder() -> None:
    argv, stdin = build_invocation(["claude", "-p", "--output-format", "json"], "hi there")
    assert argv == ["claude", "-p", "--output-format", "json"] and stdin == b"hi there"
    argv, stdin = build_invocation(["pi", "--mode", "json", "{prompt}"], "hi there")
    assert argv == ["pi", "--mode", "json", "hi there"] and stdin is None


# ------------------------------------------------------------------ real processes


async def test_fake_claude_success(tmp_path: Path) -> None:
    command = script(
        tmp_path,
        "record(stdin=stdin_text, args=args, cwd=os.getcwd(),"
        " base=os.environ.get('ANTHROPIC_BASE_URL'))\n" + printing(CLAUDE_OK),
    )
    out = await run(tmp_path, [*command, "-p", "--output-format", "json"], prompt="the prompt ✓")
    assert out.ok and out.reply == "The answer is 42."
    assert out.usage.cost_usd == pytest.approx(0.0123)
    seen = recorded(tmp_path)
    assert seen["stdin"] == "the prompt ✓"
    assert seen["args"] == ["-p", "--output-format", "json"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["base"] == "http://127.0.0.1:9/model/anthropic"


async def test_fake_claude_error_flag_with_success_subtype(tmp_path: Path) -> None:
    attempts: list[dict[str, Any]] = []
    command = script(tmp_path, printing(CLAUDE_ERROR_AS_SUCCESS, 1))
    with pytest.raises(AgentError) as info:
        await run_cli(
            command,
            "p",
            cwd=tmp_path,
            env=os.environ,
            timeout_s=30,
            default_model="m",
            attempts=attempts,
        )
    assert info.value.error_class == "agent_cli"
    assert "invalid x-api-key" in str(info.value)
    assert attempts[0]["outcome"] == "fail" and attempts[0]["status"] == 1
    assert attempts[0]["provider"] == "cli"


async def test_fake_claude_success_subtype_with_exit_code_1(tmp_path: Path) -> None:
    command = script(tmp_path, printing(CLAUDE_OK, 1))
    with pytest.raises(AgentError, match="exit code 1"):
        await run(tmp_path, command)


async def test_fake_pi_success_with_placeholder(tmp_path: Path) -> None:
    command = script(
        tmp_path, "record(args=args, stdin=stdin_text)\n" + printing(PI_OK, jsonl=True)
    )
    out = await run(tmp_path, [*command, "--mode", "json", "{prompt}"], prompt="question?")
    assert out.ok and out.reply == "All done: 3 files."
    seen = recorded(tmp_path)
    assert seen == {"args": ["--mode", "json", "question?"], "stdin": ""}


async def test_fake_pi_stop_reason_error_with_exit_0(tmp_path: Path) -> None:
    attempts: list[dict[str, Any]] = []
    command = script(tmp_path, printing(PI_MODEL_ERROR, 0, jsonl=True))
    with pytest.raises(AgentError) as info:
        await run_cli(command, "p", cwd=tmp_path, env=os.environ, timeout_s=30, attempts=attempts)
    assert info.value.error_class == "agent_cli"
    assert "429 rate limited" in str(info.value)
    assert attempts[0]["status"] == 0 and attempts[0]["outcome"] == "fail"


async def test_timeout_kills_the_cli(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    command = script(tmp_path, f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    started = time.monotonic()
    with pytest.raises(AgentError) as info:
        await run(tmp_path, command, timeout=0.5)
    assert info.value.error_class == "budget"
    assert time.monotonic() - started < 3
    time.sleep(3)
    assert not marker.exists()


async def test_missing_command(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as info:
        await run(tmp_path, ["/nonexistent/agent-cli", "-p"])
    assert info.value.error_class == "agent_cli"
    assert "cannot be started" in str(info.value)


# ------------------------------------------------------------------ through mercury-agent


def test_agent_command_through_the_runtime(tmp_path: Path) -> None:
    """The whole runtime with agent.command: relay env, cwd, prompt, outbox files, result."""
    space, io_dir = tmp_path / "space", tmp_path / "io"
    space.mkdir()
    io_dir.mkdir()
    (space / "outbox").mkdir()
    (space / "outbox" / "old.txt").write_text("from an earlier run")
    command = script(
        tmp_path,
        "record(stdin=stdin_text, cwd=os.getcwd(), env={k: v for k, v in os.environ.items()"
        " if k.endswith(('_BASE_URL', '_API_KEY', '_MODEL'))})\n"
        "open('outbox/report.txt', 'w').write('report')\n" + printing(CLAUDE_OK),
    )
    payload = {
        "run_id": "r1",
        "space_id": "s1",
        "prompt": "write the report",
        "caller": {"id": "u1", "name": "Ada", "role": "member"},
        "model": {"chain": [{"provider": "anthropic", "model": "claude-sonnet-x"}], "budget_s": 60},
        "agent": {"command": command},
        "api": {"socket": str(tmp_path / "no-host.sock"), "token": "run-token-123"},
    }
    (io_dir / "input.json").write_text(json.dumps(payload))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MERCURY_", "ANTHROPIC_", "OPENAI_"))
    }
    env |= {
        "MERCURY_SPACE_DIR": str(space),
        "MERCURY_RESOURCES_DIR": str(AGENT_SRC.parents[2] / "resources"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mercury_agent", "--io-dir", str(io_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((io_dir / "result.json").read_text())
    assert result["ok"] is True
    assert result["reply"] == "The answer is 42."
    assert result["files"] == ["outbox/report.txt"]  # new in this run; old.txt is not
    assert result["usage"]["cost_usd"] == pytest.approx(0.0123)
    assert [a["outcome"] for a in result["attempts"]] == ["ok"]
    seen = recorded(tmp_path)
    assert seen["cwd"] == str(space)
    assert seen["stdin"].rstrip().endswith("Ada: write the report")
    assert "# Mercury" in seen["stdin"]  # the profile's system prompt leads
    relay_env = seen["env"]
    assert relay_env["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
    assert relay_env["ANTHROPIC_BASE_URL"].endswith("/model/anthropic")
    assert relay_env["OPENAI_BASE_URL"].endswith("/model/openai/v1")
    assert relay_env["ANTHROPIC_API_KEY"] == relay_env["OPENAI_API_KEY"] == "run-token-123"
    assert relay_env["ANTHROPIC_MODEL"] == "claude-sonnet-x"
    # Its small model too: the host's proxy refuses models outside the chain.
    assert relay_env["ANTHROPIC_SMALL_FAST_MODEL"] == "claude-sonnet-x"
