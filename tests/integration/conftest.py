"""Fixtures for tests on the real Docker engine: test images and runners that leave nothing.

The test images are built once per session FROM a local base image (no registry needed):
MERCURY_TEST_BASE_IMAGE names it, else scripts/ensure-base-image provides one. Each runner
gets its own instance id, so its containers are told apart by label, and after each test
the fixture checks that no container of that instance and no io dir is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.config import Config, ContainerConfig, DiskConfig
from mercury.sandbox.hardening import LABEL_INSTANCE
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState
from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import Mercury

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "tests" / "images"
# Read at import: the autouse fixture in tests/conftest.py strips MERCURY_* per test.
_BASE_IMAGE_ENV = os.environ.get("MERCURY_TEST_BASE_IMAGE")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        pytest.fail(f"no Docker engine ({exc}); run scripts/ensure-docker", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> str:
    if _BASE_IMAGE_ENV:
        return _BASE_IMAGE_ENV
    done = subprocess.run(
        [str(REPO / "scripts" / "ensure-base-image")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"scripts/ensure-base-image failed:\n{done.stderr[-2000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def build_test_image(client: docker.DockerClient, name: str, base: str) -> str:
    """Build tests/images/<name> FROM `base` once; the tag hashes the dir and the base."""
    folder = IMAGES / name
    digest = hashlib.sha256(base.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    tag = f"mercury-test-{name}:{digest.hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        client.images.build(
            path=str(folder), tag=tag, buildargs={"BASE_IMAGE": base}, rm=True, pull=False
        )
    return tag


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient, base_image: str) -> str:
    return build_test_image(docker_client, "testagent", base_image)


@pytest.fixture(scope="session")
def badentry_image(docker_client: docker.DockerClient, base_image: str) -> str:
    return build_test_image(docker_client, "badentry", base_image)


def instance_containers(client: docker.DockerClient, instance: str) -> list[Any]:
    return client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
    )


@pytest.fixture
async def make_runner(
    docker_client: docker.DockerClient, test_image: str, tmp_path: Path
) -> AsyncIterator[Callable[..., ContainerRunner]]:
    """Factory: a ContainerRunner on a tmp data dir with a fresh instance id.

    Container settings are small (128m, 64 pids, 20 s) and can be overridden by keyword;
    `images=`, `poll_interval=`, `probe_interval=` go to the runner. Afterwards every
    runner is closed and must have left no container and no io dir behind.
    """
    made: list[ContainerRunner] = []

    def factory(
        *,
        images: ImageBuildState | None = None,
        poll_interval: float = 0.01,
        probe_interval: float = 1.0,
        disk: dict[str, Any] | None = None,
        data_dir: Path | None = None,
        **container: Any,
    ) -> ContainerRunner:
        instance = f"t{uuid.uuid4().hex[:12]}"
        root = tmp_path / instance
        (root / "resources").mkdir(parents=True)
        (root / "resources" / "AGENTS.md").write_text("# test profile\n")
        (root / "api").mkdir()
        settings: dict[str, Any] = {
            "image": test_image,
            "base_image": test_image,
            "timeout": 20,
            "memory": "128m",
            "pids": 64,
            "tmpfs_size": "16m",
            "network": "none",
            "cpus": 1.0,
        }
        settings.update(container)
        config = Config(
            instance=instance,
            data_dir=data_dir or root / "data",
            container=ContainerConfig(**settings),
            disk=DiskConfig(**(disk or {})),
        )
        runner = ContainerRunner(
            config,
            images or ImageBuildState(test_image),
            client=docker_client,
            resources_dir=root / "resources",
            api_socket_dir=root / "api",
            poll_interval=poll_interval,
            probe_interval=probe_interval,
        )
        made.append(runner)
        return runner

    yield factory

    problems: list[str] = []
    for runner in made:
        await runner.aclose()
        instance = runner.config.instance
        left = instance_containers(docker_client, instance)
        for container in left:
            problems.append(f"container {container.name} was left behind")
            container.remove(force=True)
        io_root = runner.config.data_dir / "io"
        leftovers = sorted(p.name for p in io_root.iterdir()) if io_root.is_dir() else []
        if leftovers:
            problems.append(f"io dirs left behind in {io_root}: {leftovers}")
    assert not problems, "; ".join(problems)


@pytest.fixture
def runner(make_runner: Callable[..., ContainerRunner]) -> ContainerRunner:
    return make_runner()


@pytest.fixture(scope="session")
def agent_image(docker_client: docker.DockerClient, base_image: str) -> Iterator[str]:
    """The real agent image (container/Dockerfile), built once per session from the base."""
    from mercury.sandbox.images import agent_context_dir, build_agent_image

    context = agent_context_dir()
    digest = hashlib.sha256()
    for path in sorted(context.rglob("*")):
        skip = "__pycache__" in path.parts or ".egg-info" in str(path)
        # The agent's own tests are not in the image (container/.dockerignore).
        if path.is_file() and not skip and "tests" not in path.relative_to(context).parts:
            digest.update(str(path.relative_to(context)).encode())
            digest.update(path.read_bytes())
    digest.update(base_image.encode())
    tag = f"mercury-agent-test:{digest.hexdigest()[:12]}"
    lines: list[str] = []
    try:
        build_agent_image(docker_client, base=base_image, tag=tag, on_event=lines.append)
    except Exception as exc:
        pytest.fail(f"agent image build failed: {exc}\n" + "\n".join(lines[-40:]), pytrace=False)
    yield tag


# --------------------------------------------------------------------------- mercury run


@pytest.fixture
def fake() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def site(tmp_path: Path, agent_image: str, fake: FakeModelServer) -> Iterator[Any]:
    made: list[Mercury] = []

    def make(**cfg: Any) -> Mercury:
        m = Mercury(tmp_path, agent_image, fake, **cfg)
        made.append(m)
        return m

    yield make
    client = docker.from_env()
    for m in made:
        if m.proc is not None and m.proc.poll() is None:
            m.stop(signal.SIGKILL)
        for c in client.containers.list(
            ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={m.instance}"}
        ):
            # 404/409: Mercury's own cleanup got there first ("removal in progress").
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                c.remove(force=True)
    client.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB filesystem of its own, to fill without touching the host's disk (root only:
    it mounts a tmpfs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
