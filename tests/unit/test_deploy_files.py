"""deploy/: the scale-out compose file, its config and image, and docs/scale-out.md.

Nothing here needs Docker. What is checked is what silently breaks a deployment: a
service command Mercury does not know, a data dir the agents' containers would not find
(the worker starts them through the host's Docker socket, so the path must be the same
on both sides), the dashboard published beyond loopback, a config Mercury refuses, and
links in the docs to files that are gone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from mercury.cli import main
from mercury.config import Config, load_config
from mercury.core.roles import Role, role_problem

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.scale-out.yaml"
EXAMPLE_CONFIG = DEPLOY / "mercury.scale-out.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOC = ROOT / "docs" / "scale-out.md"
DOCKER_SOCKET = "/var/run/docker.sock"
# A markdown link's target: [text](target).
_LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *mercury) resolved
    found = compose["services"]
    assert {"postgres", "gateway", "worker"} <= set(found)
    return dict(found)


@pytest.fixture(scope="module")
def config() -> Config:
    # env={}: no MERCURY_* variable of the machine running the tests can mask a problem.
    return load_config(EXAMPLE_CONFIG, env={}).config


def mercury_services(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The services that run Mercury, with their command as a list."""
    out = {}
    for name, svc in services.items():
        command = svc.get("command")
        if isinstance(command, list) and command[:1] == ["mercury"]:
            out[name] = [str(a) for a in command]
    return out


def parse_command(argv: list[str]) -> dict[str, Any]:
    """Parse `mercury argv` as the CLI would, without running it: every option converted
    (a misspelt choice fails here, where `--help` would still exit 0)."""
    parent = click.Context(main, info_name="mercury")
    command = main.get_command(parent, argv[0])
    assert command is not None, f"mercury has no command {argv[0]!r}"
    with command.make_context(argv[0], list(argv[1:]), parent=parent) as ctx:
        return dict(ctx.params)


def bind_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target -> source of the service's bind mounts (short syntax "src:dst[:mode]")."""
    out = {}
    for volume in svc.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        out[target] = source
    return out


def test_every_service_runs_a_real_mercury_command(services: dict[str, dict[str, Any]]) -> None:
    commands = mercury_services(services)
    assert set(commands) == {"gateway", "worker"}
    roles = {}
    for name, argv in commands.items():
        result = CliRunner().invoke(main, [*argv[1:], "--help"])
        assert result.exit_code == 0, (name, result.output)
        params = parse_command(argv[1:])
        assert str(params["config_path"]) == "/etc/mercury/mercury.yaml", name
        roles[name] = params.get("role", Role.WORKER.value if argv[1] == "worker" else None)
    assert roles == {"gateway": Role.GATEWAY.value, "worker": Role.WORKER.value}
    with pytest.raises(click.UsageError):  # the check can fail
        parse_command(["run", "--role", "gatway", "--config", "/etc/mercury/mercury.yaml"])


def test_the_config_each_process_reads_is_the_example(services: dict[str, dict[str, Any]]) -> None:
    for name in mercury_services(services):
        mounts = bind_mounts(services[name])
        source = mounts.get("/etc/mercury/mercury.yaml")
        assert source is not None, name
        assert (COMPOSE.parent / source).resolve() == EXAMPLE_CONFIG


def test_the_data_dir_is_a_host_path_at_the_same_path_everywhere(
    services: dict[str, dict[str, Any]], config: Config
) -> None:
    """The worker's engine reads bind-mount sources on the host; the gateway must find the
    reply files the workers recorded by path."""
    data_dir = str(config.data_dir)
    assert config.data_dir.is_absolute()
    for name in mercury_services(services):
        mounts = bind_mounts(services[name])
        assert mounts.get(data_dir) == data_dir, (name, mounts)
    assert DOCKER_SOCKET in bind_mounts(services["worker"])
    assert DOCKER_SOCKET not in bind_mounts(services["gateway"])  # it starts no container
    volumes = yaml.safe_load(COMPOSE.read_text()).get("volumes") or {}
    assert data_dir.strip("/") not in volumes  # not a named volume


def test_only_the_gateway_publishes_a_port_and_on_loopback_only(
    services: dict[str, dict[str, Any]], config: Config
) -> None:
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert list(published) == ["gateway"]
    for port in published["gateway"]:
        host_ip, _host_port, container_port = str(port).split(":")
        assert host_ip == "127.0.0.1"
        assert int(container_port) == config.server.port
    assert services["gateway"].get("deploy", {}).get("replicas", 1) == 1  # one per instance


def test_the_example_config_loads_and_suits_several_processes(config: Config) -> None:
    url = config.resolved_database_url()
    assert role_problem(Role.WORKER, url) is None  # PostgreSQL, not SQLite
    assert urlsplit(url).hostname == "postgres"  # the compose service
    assert "@" in url and ":" not in urlsplit(url).netloc.split("@")[0]  # no password here
    assert config.disk.space_limit == "watch"  # images cannot be shared (docs/scale-out.md)
    assert config.workers.lease >= 3


def test_the_image_copies_what_mercury_runs_from() -> None:
    """The agent image's context and the shipped resources sit beside the package, so the
    image copies them and installs editable."""
    text = DOCKERFILE.read_text()
    copied = []
    for line in text.splitlines():
        if line.startswith("COPY "):
            copied += line.split()[1:-1]
    for source in copied:
        assert (ROOT / source).exists(), source
    assert {"mercury", "container", "resources", "pyproject.toml"} <= set(copied)
    assert (ROOT / "container" / "Dockerfile").is_file()
    assert "pip install -e /src" in text
    assert text.splitlines()[0].startswith("#") and "FROM python:3.12-slim" in text


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, - for spaces."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_docs_link_only_to_files_that_exist() -> None:
    text = DOC.read_text()
    targets = _LINK_RE.findall(text)
    assert any("compose.scale-out.yaml" in t for t in targets)
    headings = {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in targets:
        parts = urlsplit(target)
        if parts.scheme:  # a web address
            continue
        if not parts.path:  # a section of this page
            assert parts.fragment in headings, target
            continue
        assert (DOC.parent / parts.path).resolve().exists(), target
    for path in (COMPOSE, EXAMPLE_CONFIG, DOCKERFILE):  # docs named in their comments
        for doc in re.findall(r"docs/[\w.-]+\.md", path.read_text()):
            assert (ROOT / doc).is_file(), (path.name, doc)
