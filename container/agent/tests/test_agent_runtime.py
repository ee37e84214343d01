"""The in-container runtime (container/agent), run outside a container as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GOOD_INPUT: dict[str, Any] = {
    "run_id": "run-1",
    "space_id": "space-1",
    "platform": "web",
    "prompt": "héllo ✓ world",
    "messages": [
        {
            "id": "m1",
            "author_id": "u1",
            "author_name": "Ada",
            "text": "earlier",
            "ts": 1700000000.5,
            "is_bot": False,
            "attachments": [],
        }
    ],
    "caller": {"id": "u1", "name": "Ada", "role": "admin"},
    "attachments": ["inbox/a.png"],
    "preferences": {"tone": "brief"},
    "model": {
        "chain": [{"provider": "anthropic", "model": "m"}],
        "retries_per_leg": 2,
        "budget_s": 300,
    },
    "profile": "default",
    "skills": ["/skills/x"],
    "api": {"socket": "/run/mercury-api/api.sock", "token": "t"},
    "a_key_from_a_newer_host": {"ignored": True},
}
# Without a model and a host API the runtime answers with an echo: the image's smoke test.
ECHO_INPUT: dict[str, Any] = {k: v for k, v in GOOD_INPUT.items() if k not in ("model", "api")}


def run_agent(
    io_dir: Path | None, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    full_env.update(env or {})
    argv = [sys.executable, "-m", "mercury_agent", *args]
    if io_dir is not None:
        argv += ["--io-dir", str(io_dir)]
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=30)


def write_input(io_dir: Path, data: Any) -> None:
    io_dir.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (io_dir / "input.json").write_text(text, encoding="utf-8")


def read_result(io_dir: Path) -> dict[str, Any]:
    return json.loads((io_dir / "result.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ as a process


def test_input_without_a_model_echoes_the_prompt(tmp_path: Path) -> None:
    write_input(tmp_path, ECHO_INPUT)
    r = run_agent(tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_result(tmp_path) == {
        "ok": True,
        "reply": "echo: héllo ✓ world",
        "usage": {"input_tokens": 0, "output_tokens": 0, "model": "echo"},
        "files": [],
    }


def test_minimal_input_is_enough(tmp_path: Path) -> None:
    write_input(tmp_path, {"run_id": "r", "space_id": "s", "prompt": ""})
    r = run_agent(tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_result(tmp_path)["reply"] == "echo: "


def test_io_dir_from_environment(tmp_path: Path) -> None:
    write_input(tmp_path, ECHO_INPUT)
    r = run_agent(None, env={"MERCURY_IO_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert read_result(tmp_path)["ok"] is True


def test_io_dir_flag_wins_over_environment(tmp_path: Path) -> None:
    flag_dir, env_dir = tmp_path / "flag", tmp_path / "env"
    write_input(flag_dir, ECHO_INPUT)
    env_dir.mkdir()
    r = run_agent(flag_dir, env={"MERCURY_IO_DIR": str(env_dir)})
    assert r.returncode == 0, r.stderr
    assert (flag_dir / "result.json").is_file()
    assert not (env_dir / "result.json").exists()


@pytest.mark.parametrize("field", ["run_id", "space_id", "prompt"])
def test_missing_required_field_is_bad_input(tmp_path: Path, field: str) -> None:
    data = dict(GOOD_INPUT)
    del data[field]
    write_input(tmp_path, data)
    r = run_agent(tmp_path)
    assert r.returncode == 2
    result = read_result(tmp_path)
    assert result["ok"] is False
    assert result["error_class"] == "bad_input"
    assert f"{field}: required field is missing" in result["error"]
    assert field in r.stderr


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"prompt": 5}, "prompt", "expected a string, got a number"),
        ({"run_id": "  "}, "run_id", "must not be empty"),
        ({"messages": {"a": 1}}, "messages", "expected a list, got an object"),
        ({"messages": [GOOD_INPUT["messages"][0], {"id": "m2"}]}, "messages[1].text", "missing"),
        ({"messages": [{"text": "x", "is_bot": "no"}]}, "messages[0].is_bot", "true or false"),
        ({"caller": {"name": "x"}}, "caller.id", "required field is missing"),
        ({"attachments": ["ok", 3]}, "attachments[1]", "expected a string"),
        ({"preferences": []}, "preferences", "expected an object"),
        ({"model": {"retries_per_leg": True}}, "model.retries_per_leg", "expected an integer"),
        ({"model": {"budget_s": 0}}, "model.budget_s", "must be > 0"),
        ({"api": {"socket": "/s"}}, "api.token", "required field is missing"),
        (
            {"model": {"chain": [{"provider": "gemini", "model": "g"}]}},
            "model.chain[0].provider",
            "one of",
        ),
        ({"model": {"chain": [{"provider": "openai"}]}}, "model.chain[0].model", "missing"),
        ({"model": {"chain": ["claude"]}}, "model.chain[0]", "expected an object"),
        ({"model": {**GOOD_INPUT["model"], "max_turns": 0}}, "model.max_turns", "must be >= 1"),
        ({"agent": {"command": []}}, "agent.command", "non-empty argv"),
        ({"agent": {"command": "claude -p"}}, "agent.command", "expected a list"),
        ({"agent": {"bash_timeout_s": 0}}, "agent.bash_timeout_s", "must be > 0"),
        ({"api": None}, "api", "required when model.chain"),
        ({"model": {"chain": []}}, "model.chain", "must list at least one model"),
    ],
)
def test_wrong_field_is_named(
    tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    write_input(tmp_path, {**GOOD_INPUT, **change})
    r = run_agent(tmp_path)
    assert r.returncode == 2, r.stderr
    error = read_result(tmp_path)["error"]
    assert f"{field}: " in error
    assert message in error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"run_id": "r", ', "is not valid JSON"),
        ("", "is not valid JSON"),
        ("[1, 2]", "input.json: expected an object, got a list"),
    ],
)
def test_unreadable_json_is_bad_input(tmp_path: Path, content: str, message: str) -> None:
    write_input(tmp_path, content)
    r = run_agent(tmp_path)
    assert r.returncode == 2
    result = read_result(tmp_path)
    assert result == {"ok": False, "error": result["error"], "error_class": "bad_input"}
    assert message in result["error"]


def test_non_utf8_input_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "input.json").write_bytes(b'{"prompt": "\xff"}')
    r = run_agent(tmp_path)
    assert r.returncode == 2
    assert "not UTF-8" in read_result(tmp_path)["error"]


def test_missing_input_file_is_bad_input(tmp_path: Path) -> None:
    r = run_agent(tmp_path)
    assert r.returncode == 2
    assert "input.json not found" in read_result(tmp_path)["error"]


def test_result_leaves_no_temporary_file_and_is_readable_by_others(tmp_path: Path) -> None:
    write_input(tmp_path, ECHO_INPUT)
    (tmp_path / "result.json").write_text("stale")
    r = run_agent(tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json", "result.json"]
    assert read_result(tmp_path)["ok"] is True
    # The host usually reads it as another uid than the container's 1000.
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644


def test_version_flag() -> None:
    r = run_agent(None, args=("--version",))
    assert r.returncode == 0
    assert r.stdout.startswith("mercury-agent ")


# ------------------------------------------------------------------ in process


@pytest.fixture
def agent() -> ModuleType:
    import mercury_agent.main

    return mercury_agent.main


def test_write_result_is_atomic(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mercury_agent import iodir

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        src, dst = Path(src), Path(dst)
        # Renamed from the same directory (same filesystem: rename is atomic), complete,
        # not named like the file the host watches for, and result.json not there before.
        assert src.parent == dst.parent == tmp_path
        assert not src.name.endswith(".json")
        assert json.loads(src.read_text()) == {"ok": True, "reply": "x" * 100_000}
        assert not dst.exists()
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(iodir.os, "fsync", fsync)
    monkeypatch.setattr(iodir.os, "replace", replace)
    path = iodir.write_result(tmp_path, {"ok": True, "reply": "x" * 100_000})
    assert path == tmp_path / "result.json"
    assert events[:2] == ["fsync", "replace"]
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_failed_write_leaves_nothing(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mercury_agent import iodir

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(iodir.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        iodir.write_result(tmp_path, {"ok": True, "reply": "x"})
    assert list(tmp_path.iterdir()) == []


def test_unexpected_exception_is_internal_error(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_inp: Any, attempts: list[dict[str, Any]]) -> Any:
        attempts.append({"leg": 0, "outcome": "ok"})  # made before the crash: still reported
        raise RuntimeError("model exploded")

    monkeypatch.setattr(agent, "respond", broken)
    write_input(tmp_path, GOOD_INPUT)
    assert agent.main(["--io-dir", str(tmp_path)], env={}) == 1
    assert read_result(tmp_path) == {
        "ok": False,
        "error": "internal error: RuntimeError: model exploded",
        "error_class": "internal",
        "attempts": [{"leg": 0, "outcome": "ok"}],
    }


def test_agent_failure_reports_its_class_attempts_and_usage(
    agent: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mercury_agent.contract import AgentError, Usage

    def over_budget(_inp: Any, attempts: list[dict[str, Any]]) -> Any:
        attempts.append({"leg": 0, "outcome": "retry", "status": 529})
        raise AgentError("the time budget ran out", "budget", Usage(7, 3, "m"))

    monkeypatch.setattr(agent, "respond", over_budget)
    write_input(tmp_path, GOOD_INPUT)
    assert agent.main(["--io-dir", str(tmp_path)], env={}) == 1
    assert read_result(tmp_path) == {
        "ok": False,
        "error": "the time budget ran out",
        "error_class": "budget",
        "attempts": [{"leg": 0, "outcome": "retry", "status": 529}],
        "usage": {"input_tokens": 7, "output_tokens": 3, "model": "m"},
    }


def test_unreachable_host_api_fails_the_run_with_its_attempts(tmp_path: Path) -> None:
    space = tmp_path / "space"
    data = {
        **GOOD_INPUT,
        "model": {"chain": [{"provider": "anthropic", "model": "m"}], "retries_per_leg": 0},
        "api": {"socket": str(tmp_path / "no-such.sock"), "token": "t"},
    }
    write_input(tmp_path / "io", data)
    r = run_agent(tmp_path / "io", env={"MERCURY_SPACE_DIR": str(space)})
    assert r.returncode == 1, r.stderr
    result = read_result(tmp_path / "io")
    assert result["ok"] is False
    assert result["error_class"] == "model"
    assert "cannot reach the host API" in result["error"]
    (attempt,) = result["attempts"]
    assert (attempt["leg"], attempt["provider"], attempt["status"]) == (0, "anthropic", 502)
    assert space.is_dir()  # created outside a container


def test_default_io_dir(agent: ModuleType) -> None:
    from mercury_agent.iodir import resolve_io_dir

    assert resolve_io_dir(None, {}) == Path("/run/mercury-io")
    assert resolve_io_dir(None, {"MERCURY_IO_DIR": "/x"}) == Path("/x")
    assert resolve_io_dir("/y", {"MERCURY_IO_DIR": "/x"}) == Path("/y")
