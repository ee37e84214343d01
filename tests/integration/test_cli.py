"""The `mercury` command, run as a real subprocess against the real Docker engine."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.mercury_site import MERCURY, mercury


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version(tmp_path: Path) -> None:
    from mercury import __version__

    r = mercury("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == f"mercury, version {__version__}"


# ---------------------------------------------------------------- init


def test_init_yes_writes_config_and_private_env(tmp_path: Path) -> None:
    r = mercury("init", "--yes", str(tmp_path / "site"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "site" / "mercury.yaml"
    env = tmp_path / "site" / ".env"
    assert cfg.is_file() and env.is_file()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    password = next(
        line.split("=", 1)[1]
        for line in env.read_text().splitlines()
        if line.startswith("MERCURY_DASHBOARD_PASSWORD=")
    )
    assert len(password) >= 20
    assert password in r.stdout  # printed once, for the operator to note
    assert password not in cfg.read_text()
    # the written config is valid and picks up the password from .env
    from mercury.config import load_config

    loaded = load_config(cfg, env={})
    assert loaded.secrets.dashboard_password is not None
    assert loaded.secrets.dashboard_password.get_secret_value() == password


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert mercury("init", "--yes", cwd=tmp_path).returncode == 0
    before = (tmp_path / ".env").read_text()
    r = mercury("init", "--yes", cwd=tmp_path)
    assert r.returncode == 1
    assert "already exist" in r.stderr and "--force" in r.stderr
    assert (tmp_path / ".env").read_text() == before
    r = mercury("init", "--yes", "--force", cwd=tmp_path)
    assert r.returncode == 0
    assert (tmp_path / ".env").read_text() != before
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_init_without_a_terminal_takes_defaults(tmp_path: Path) -> None:
    # CI has no stdin: init must not hang waiting for answers.
    r = mercury("init", cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "provider: anthropic" in (tmp_path / "mercury.yaml").read_text()


def init_in_a_terminal(tmp_path: Path, answers: list[str]) -> bytes:
    """Run `mercury init` in a real pseudo-terminal, answering each prompt in turn, as an
    operator would; returns the transcript once it exited 0."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI with the pty as its terminal
        os.chdir(tmp_path)
        os.environ.update({"NO_COLOR": "1", "TERM": "dumb"})
        os.execv(sys.executable, [*MERCURY, "init"])
    answers = list(answers)
    transcript = b""
    answered_at = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal: it has exited
            break
        if not chunk:
            break
        transcript += chunk
        # A prompt is waiting when the text since our last answer ends in ": ".
        if answers and transcript[answered_at:].endswith(b": "):
            os.write(fd, answers.pop(0).encode() + b"\r")
            answered_at = len(transcript)
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, transcript.decode(errors="replace")
    return transcript


def test_init_prompts_in_a_terminal(tmp_path: Path) -> None:
    answers = [
        "ops-bot",
        "9100",
        "openai",
        "gpt-test",
        "http://127.0.0.1:11434/v1",
        "sk-typed-key-123",
        "y",
        "xoxb-typed",
        "xapp-typed",
        "n",
        "n",
    ]
    transcript = init_in_a_terminal(tmp_path, answers)
    cfg = (tmp_path / "mercury.yaml").read_text()
    env = (tmp_path / ".env").read_text()
    assert "instance: ops-bot" in cfg and "port: 9100" in cfg
    assert "provider: openai" in cfg and "http://127.0.0.1:11434/v1" in cfg
    assert "slack:\n    enabled: true" in cfg
    assert "OPENAI_API_KEY=sk-typed-key-123" in env
    assert "MERCURY_SLACK_BOT_TOKEN=xoxb-typed" in env
    assert b"sk-typed-key-123" not in transcript  # hidden input is not echoed


INSTANCE_RE = re.compile(r"^mercury-[0-9a-f]{6}$")
# What Docker accepts as a container name; Mercury's are mercury-<instance>-<run id>.
DOCKER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def written_instance(site: Path) -> str:
    from mercury.config import load_config

    return load_config(site / "mercury.yaml", env={}).config.instance


def test_init_yes_gives_each_install_a_name_of_its_own(tmp_path: Path) -> None:
    """Two installs on one Docker engine must not share a name: each removes the
    containers of its name at start, so they would remove each other's runs."""
    names = []
    for site in ("one", "two"):
        r = mercury("init", "--yes", str(tmp_path / site), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        name = written_instance(tmp_path / site)  # the config's own validator accepts it
        assert INSTANCE_RE.match(name), name
        assert DOCKER_NAME_RE.match(f"mercury-{name}-0123456789abcdef")
        assert f"instance: {name}" in r.stdout  # the operator is told which
        names.append(name)
    assert names[0] != names[1]


def test_init_force_keeps_the_install_name(tmp_path: Path) -> None:
    # Same name after a re-init: the containers it left are still recognised as its own.
    assert mercury("init", "--yes", cwd=tmp_path).returncode == 0
    name = written_instance(tmp_path)
    assert mercury("init", "--yes", "--force", cwd=tmp_path).returncode == 0
    assert written_instance(tmp_path) == name


def test_init_in_a_terminal_proposes_a_generated_name_and_refuses_bad_ones(
    tmp_path: Path,
) -> None:
    # A bad name is refused and the question asked again; Enter takes the proposal.
    transcript = init_in_a_terminal(tmp_path, ["Ops Bot!", ""] + [""] * 5 + ["n"] * 3)
    text = transcript.decode(errors="replace")
    proposed = re.findall(r"Instance name \[(mercury-[0-9a-f]{6})\]", text)
    assert len(proposed) == 2 and proposed[0] == proposed[1], text  # asked twice, same name
    assert "lowercase letters, digits and '-'" in text
    assert written_instance(tmp_path) == proposed[0]


# ---------------------------------------------------------------- doctor


def _doctor_site(tmp_path: Path) -> Path:
    assert mercury("init", "--yes", cwd=tmp_path).returncode == 0
    return tmp_path


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if name in line)


@pytest.mark.docker
def test_doctor_against_the_real_engine(tmp_path: Path) -> None:
    site = _doctor_site(tmp_path)
    assert mercury("db", "upgrade", cwd=site).returncode == 0
    r = mercury("doctor", cwd=site, env={"ANTHROPIC_API_KEY": "sk-test-not-real-000000"})
    out = r.stdout
    docker_row = _row(out, "Docker engine reachable")
    assert " ok " in docker_row and "Docker " in docker_row
    assert " ok " in _row(out, "database reachable and migrated")
    assert " ok " in _row(out, "data dir writable")
    assert " ok " in _row(out, "free disk")
    # As root, agents run as an id no host account has.
    user_row = _row(out, "container user")
    assert " ok " in user_row and ("2000000000:2000000000" in user_row or os.geteuid() != 0)
    assert " ok " in _row(out, "config valid")
    assert " ok " in _row(out, "web adapter has its token")
    assert " ok " in _row(out, "model provider key or base URL")
    assert "0 waiting (at most 4" in _row(out, "warm containers")
    # every check is shown with its state
    for name in (
        "agent image present",
        "config valid",
        "Docker engine reachable",
        "database reachable",
        "data dir writable",
        "model provider",
    ):
        assert name in out
    assert "sk-test-not-real" not in out + r.stderr
    image_ok = " ok " in _row(out, "agent image present")
    assert r.returncode == (0 if image_ok else 1), out + r.stderr


@pytest.mark.docker
def test_doctor_with_a_bogus_docker_host_fails_with_a_hint(tmp_path: Path) -> None:
    site = _doctor_site(tmp_path)
    r = mercury("doctor", cwd=site, env={"DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}"})
    assert r.returncode == 1
    row = _row(r.stdout, "Docker engine reachable")
    assert " fail " in row
    assert "connection refused" in row
    assert "scripts/ensure-docker" in r.stdout  # the fix hint
    assert "required check(s) failed" in r.stderr


def test_doctor_checks_what_the_role_needs(tmp_path: Path) -> None:
    # No engine answers here: a gateway does not need one, so nothing fails for it.
    site = _doctor_site(tmp_path)
    assert mercury("db", "upgrade", cwd=site).returncode == 0
    env = {"DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}", "ANTHROPIC_API_KEY": "sk-test-0000"}
    r = mercury("doctor", "--role", "gateway", cwd=site, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("Docker engine reachable", "agent image present", "container user"):
        row = _row(r.stdout, name)
        assert " skip " in row and "not on a gateway" in row, row
    assert " ok " in _row(r.stdout, "web adapter has its token")
    # A worker needs the engine (so fails here) but no chat token.
    r = mercury("doctor", "--role", "worker", cwd=site, env=env)
    assert r.returncode == 1
    assert " fail " in _row(r.stdout, "Docker engine reachable")
    row = _row(r.stdout, "adapters")
    assert " skip " in row and "not on a worker" in row, row
    assert "adapter has its token" not in r.stdout


def test_doctor_checks_the_engine_named_by_container_docker_host(tmp_path: Path) -> None:
    # A worker's own engine (docs/scale-out.md): the doctor looks where `mercury run` would.
    site = _doctor_site(tmp_path)
    port = free_port()
    cfg = site / "mercury.yaml"
    cfg.write_text(cfg.read_text() + f"\ncontainer:\n  docker_host: tcp://127.0.0.1:{port}\n")
    r = mercury("doctor", "--role", "worker", cwd=site)
    row = _row(r.stdout, "Docker engine reachable")
    assert " fail " in row and f"127.0.0.1:{port}" in row, r.stdout + r.stderr
    # ... and `mercury image build` builds there.
    r = mercury("image", "build", cwd=site)
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr, r.stdout + r.stderr


def test_doctor_reports_missing_tokens_and_unmigrated_db(tmp_path: Path) -> None:
    site = _doctor_site(tmp_path)
    cfg = site / "mercury.yaml"
    cfg.write_text(
        cfg.read_text().replace("discord:\n    enabled: false", "discord:\n    enabled: true")
    )
    r = mercury("doctor", cwd=site)
    assert r.returncode == 1
    assert "MERCURY_DISCORD_BOT_TOKEN" in _row(r.stdout, "discord adapter has its token")
    assert " fail " in _row(r.stdout, "database reachable and migrated")
    assert "mercury db upgrade" in r.stdout
    assert " fail " in _row(r.stdout, "model provider key or base URL")


def test_doctor_with_a_broken_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "mercury.yaml").write_text("container: {memory: lots}\n")
    r = mercury("doctor", cwd=tmp_path)
    assert r.returncode == 1
    assert "container.memory" in _row(r.stdout, "config valid")
    assert " skip " in _row(r.stdout, "database reachable")


# ---------------------------------------------------------------- run


def test_run_with_a_broken_config_exits_with_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "mercury.yaml").write_text("container: {memory: lots}\nserver: {prot: 1}\n")
    r = mercury("run", cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert sorted(r.stderr.strip().splitlines()) == [
        'config: container.memory: expected a size like 512m or 2g, got "lots"',
        "config: server.prot: unknown key (did you mean 'port'?)",
    ]


@pytest.mark.parametrize(
    "command", [["chat", "hi"], ["db", "current"], ["image", "build"], ["sandbox", "run"]]
)
def test_every_command_fails_on_a_broken_config_the_same_way(
    tmp_path: Path, command: list[str]
) -> None:
    # One loader for every command: the same lines, the same exit code, nothing on stdout.
    (tmp_path / "mercury.yaml").write_text("container: {memory: lots}\nserver: {prot: 1}\n")
    (tmp_path / "input.json").write_text("{}")
    if command[0] == "sandbox":
        command = [*command, "--space", "demo", "--input", "input.json"]
    r = mercury(*command, cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert sorted(r.stderr.strip().splitlines()) == [
        'config: container.memory: expected a size like 512m or 2g, got "lots"',
        "config: server.prot: unknown key (did you mean 'port'?)",
    ]


@pytest.mark.docker
def test_run_with_no_docker_engine_exits_with_one_clear_line(tmp_path: Path) -> None:
    r = mercury(
        "run", cwd=tmp_path, timeout=60, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: Docker engine not reachable at unix:///nonexistent/docker.sock: "
        "no such file or directory"
    )


@pytest.mark.docker
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_and_stops_cleanly_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    assert mercury("init", "--yes", cwd=tmp_path).returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    env["MERCURY_LOG__FORMAT"] = "json"
    proc = subprocess.Popen(
        [*MERCURY, "run", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.1)
        assert body is not None and '"ok": true' in body, proc.stderr.read() if proc.poll() else ""
        # it migrated the database on start
        assert (tmp_path / "data" / "mercury.db").is_file()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert '"event": "mercury stopped"' in stderr
    assert "Traceback" not in stderr, stderr[max(0, stderr.find("Traceback") - 500) :][:4000]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.docker
def test_run_with_the_port_taken_names_the_key(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = mercury("run", "--port", str(port), cwd=tmp_path, timeout=60)
    assert r.returncode == 1
    assert f"server.port: 127.0.0.1:{port} is already in use" in r.stderr
