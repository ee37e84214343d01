"""`mercury image build` against the real Docker engine, and the image it builds, run hardened.

The agent image is built FROM a local base (no registry here): $MERCURY_TEST_BASE_IMAGE,
else whatever scripts/ensure-base-image provides. Every image built is removed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import ImageNotFound

from mercury.config import ContainerConfig
from mercury.sandbox.engine import connect_engine
from mercury.sandbox.identity import container_identity

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
# Read at import: an autouse fixture clears MERCURY_* variables before each test runs.
BASE_FROM_ENV = os.environ.get("MERCURY_TEST_BASE_IMAGE")
SESSION = uuid.uuid4().hex[:8]
REPO = f"mercury-test-agent-{SESSION}"

CLI = [
    sys.executable,
    "-c",
    "from mercury.cli.image import image; image(prog_name='mercury image')",
]


def image_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `mercury image ARGS` as a real process; returns (exit code, stdout + stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    full_env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    full_env.update(env or {})
    r = subprocess.run(
        [*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c, _ = connect_engine()
    yield c
    c.close()


@pytest.fixture(scope="module")
def base_image() -> str:
    if BASE_FROM_ENV:
        return BASE_FROM_ENV
    r = subprocess.run(
        [str(ROOT / "scripts" / "ensure-base-image")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tags(client: docker.DockerClient) -> Iterator[list[str]]:
    """Tags the tests create; all removed at the end, whatever happened."""
    created: list[str] = []
    yield created
    for tag in created:
        # noprune keeps the untagged parent layers: they are the layer cache the next
        # session's build reuses (so it needs no PyPI), shared with every other agent build.
        with contextlib.suppress(ImageNotFound):
            client.images.remove(tag, force=True, noprune=True)


def remove_with_descendants(client: docker.DockerClient, image_id: str) -> None:
    """An image and every image built on it (a failed build's intermediate layers)."""
    children: dict[str, list[str]] = {}
    for img in client.api.images(all=True):
        children.setdefault(img.get("ParentId") or "", []).append(img["Id"])
    order: list[str] = []
    todo = [image_id]
    while todo:
        current = todo.pop()
        order.append(current)
        todo.extend(children.get(current, []))
    for img_id in reversed(order):  # leaves first: a parent with children cannot go
        with contextlib.suppress(ImageNotFound):
            client.images.remove(img_id, force=True)


@pytest.fixture
def broken_base(client: docker.DockerClient) -> Iterator[str]:
    """A base with no shell and no python: the Dockerfile's first RUN step must fail."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    repo = f"{REPO}-broken-base"
    client.api.import_image_from_data(data.getvalue(), repository=repo, tag="1")
    image_id = client.images.get(f"{repo}:1").id
    yield f"{repo}:1"
    remove_with_descendants(client, image_id)


@pytest.fixture(scope="module")
def built(
    client: docker.DockerClient, base_image: str, tags: list[str], tmp_path_factory: Any
) -> tuple[str, int, str]:
    """The agent image, built once through the CLI: (tag, exit code, output)."""
    tag = f"{REPO}:main"
    tags.append(tag)
    cwd = tmp_path_factory.mktemp("cli")
    code, output = image_cli("build", "--base", base_image, "--tag", tag, cwd=cwd)
    return tag, code, output


def test_build_succeeds_and_reports_tag_and_id(
    client: docker.DockerClient, built: tuple[str, int, str], base_image: str
) -> None:
    tag, code, output = built
    assert code == 0, output
    img = client.images.get(tag)
    assert f"built {tag} {img.id}" in output
    # The plain (non-terminal) view printed the build log as it went.
    assert "Step 1/" in output
    assert img.labels["mercury.image"] == "agent"
    assert img.labels["mercury.base-image"] == base_image


def test_image_runs_as_the_container_user(
    client: docker.DockerClient, built: tuple[str, int, str]
) -> None:
    tag, code, output = built
    assert code == 0, output
    config = client.images.get(tag).attrs["Config"]
    # `mercury image build` gives the image the account of container.user (auto).
    ident = container_identity(ContainerConfig())
    assert config["User"] == f"{ident.uid}:{ident.gid}"
    passwd = client.containers.run(
        tag, entrypoint=["getent", "passwd", str(ident.uid)], remove=True
    )
    assert passwd.decode().startswith("agent:")
    assert config["WorkingDir"] == "/space"
    assert config["Entrypoint"] == ["/opt/mercury-agent/bin/mercury-agent"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert not any(k.endswith(("_KEY", "_TOKEN", "_SECRET", "PASSWORD")) for k in env)


def run_hardened(
    client: docker.DockerClient, tag: str, io_dir: Path
) -> tuple[int, dict[str, Any], str]:
    """One run as the runner will do it: no network, the container uid, read-only root."""
    io_dir.chmod(0o777)  # written by the container's uid, whoever runs the tests
    container = client.containers.run(
        tag,
        detach=True,
        network_mode="none",
        user=container_identity(ContainerConfig()).user,
        read_only=True,
        tmpfs={"/tmp": "size=16m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        volumes={str(io_dir): {"bind": "/run/mercury-io", "mode": "rw"}},
        labels={"mercury.test": SESSION},
    )
    try:
        status = container.wait(timeout=60)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    result = json.loads((io_dir / "result.json").read_text())
    return int(status["StatusCode"]), result, logs


def test_container_answers_hardened(
    client: docker.DockerClient, built: tuple[str, int, str], tmp_path: Path
) -> None:
    tag, code, output = built
    assert code == 0, output
    payload = {"run_id": "r1", "space_id": "s1", "prompt": "ping ✓", "messages": []}
    (tmp_path / "input.json").write_text(json.dumps(payload))
    status, result, logs = run_hardened(client, tag, tmp_path)
    assert status == 0, logs
    assert result == {
        "ok": True,
        "reply": "echo: ping ✓",
        "usage": {"input_tokens": 0, "output_tokens": 0, "model": "echo"},
        "files": [],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json", "result.json"]


def test_container_reports_bad_input(
    client: docker.DockerClient, built: tuple[str, int, str], tmp_path: Path
) -> None:
    tag, code, output = built
    assert code == 0, output
    (tmp_path / "input.json").write_text(json.dumps({"run_id": "r1", "prompt": "x"}))
    status, result, logs = run_hardened(client, tag, tmp_path)
    assert status == 2
    assert result["ok"] is False
    assert result["error_class"] == "bad_input"
    assert "space_id" in result["error"]
    assert "space_id" in logs


def test_if_missing_does_not_rebuild(
    client: docker.DockerClient, built: tuple[str, int, str], tmp_path: Path
) -> None:
    tag, code, output = built
    assert code == 0, output
    before = client.images.get(tag).id
    # A base that does not exist proves nothing is even attempted.
    code, output = image_cli(
        "build", "--if-missing", "--tag", tag, "--base", "mercury-no-such-base:1", cwd=tmp_path
    )
    assert code == 0, output
    assert "already exists" in output
    assert "Step " not in output
    assert client.images.get(tag).id == before


def test_if_missing_builds_an_absent_tag_in_a_terminal(
    client: docker.DockerClient,
    built: tuple[str, int, str],
    base_image: str,
    tags: list[str],
    tmp_path: Path,
) -> None:
    tag, code, output = built
    assert code == 0, output
    other = f"{REPO}:if-missing"
    tags.append(other)
    # FORCE_COLOR makes rich treat the pipe as a terminal: the live view's code path.
    code, output = image_cli(
        "build",
        "--if-missing",
        "--tag",
        other,
        "--base",
        base_image,
        cwd=tmp_path,
        env={"FORCE_COLOR": "1", "NO_COLOR": ""},
    )
    assert code == 0, output
    # Same Dockerfile, same base: the layer cache makes it the same image.
    assert client.images.get(other).id == client.images.get(tag).id
    assert f"built {other}" in output


def test_tag_and_base_default_to_config(
    client: docker.DockerClient,
    built: tuple[str, int, str],
    base_image: str,
    tags: list[str],
    tmp_path: Path,
) -> None:
    _tag, code, output = built  # built first: its layers make this build a cache hit
    assert code == 0, output
    other = f"{REPO}:from-config"
    tags.append(other)
    cfg = tmp_path / "mercury.yaml"
    cfg.write_text(f"container:\n  image: {other}\n  base_image: {base_image}\n")
    code, output = image_cli("build", "--config", str(cfg), cwd=tmp_path)
    assert code == 0, output
    assert client.images.get(other).labels["mercury.base-image"] == base_image


def test_unavailable_base_prints_the_local_build_commands(
    client: docker.DockerClient, tags: list[str], tmp_path: Path
) -> None:
    tag = f"{REPO}:no-base"
    tags.append(tag)
    code, output = image_cli(
        "build", "--base", "mercury-no-such-base:1", "--tag", tag, cwd=tmp_path
    )
    assert code == 1, output
    assert "mercury-no-such-base:1" in output
    assert "scripts/build-base-image mercury-base:bookworm" in output
    assert "mercury image build --base mercury-base:bookworm" in output
    assert "Traceback" not in output
    with pytest.raises(ImageNotFound):
        client.images.get(tag)


def test_failing_step_is_named(
    client: docker.DockerClient, broken_base: str, tags: list[str], tmp_path: Path
) -> None:
    tag = f"{REPO}:broken"
    tags.append(tag)
    code, output = image_cli("build", "--base", broken_base, "--tag", tag, cwd=tmp_path)
    assert code == 1, output
    assert "image build failed: Step " in output
    assert ": RUN " in output
    assert "Traceback" not in output
    with pytest.raises(ImageNotFound):
        client.images.get(tag)


def test_config_errors_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "mercury.yaml"
    cfg.write_text("container:\n  imagee: x\n")
    code, output = image_cli("build", "--config", str(cfg), cwd=tmp_path)
    assert code == 2, output
    assert "config:" in output
    assert "container.imagee" in output


def test_unreachable_engine_is_one_line(tmp_path: Path) -> None:
    code, output = image_cli(
        "build", cwd=tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    )
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: Docker engine not reachable")
