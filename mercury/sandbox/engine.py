"""Connecting to the Docker engine, with one clear line when it does not answer."""

from __future__ import annotations

import os
from dataclasses import dataclass

import docker
from docker.errors import DockerException

from mercury.logging import scrub_text

ENGINE_HINT = (
    "start the engine (scripts/ensure-docker installs Debian's docker.io and starts dockerd) "
    "or point DOCKER_HOST at a running one"
)


class EngineUnavailable(Exception):
    """The Docker engine did not answer; the message is one line, safe to print."""


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str
    endpoint: str


def engine_endpoint() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def use_docker_host(docker_host: str | None) -> None:
    """Point this process at `container.docker_host` when set: docker.from_env and so every
    engine call of the process read DOCKER_HOST (a worker's own engine, docs/scale-out.md)."""
    if docker_host:
        os.environ["DOCKER_HOST"] = docker_host


def connect_engine(timeout: float = 10.0) -> tuple[docker.DockerClient, EngineInfo]:
    """Connect and ping. Blocking: call it off the event loop."""
    endpoint = engine_endpoint()
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)))
        version = client.version()
    except DockerException as exc:
        raise EngineUnavailable(
            f"Docker engine not reachable at {scrub_text(endpoint)}: {_reason(exc)}"
        ) from exc
    except Exception as exc:  # requests/urllib3 errors surface unwrapped from version()
        raise EngineUnavailable(
            f"Docker engine not reachable at {scrub_text(endpoint)}: {_reason(exc)}"
        ) from exc
    return client, EngineInfo(
        version=str(version.get("Version", "?")),
        api_version=str(version.get("ApiVersion", "?")),
        endpoint=endpoint,
    )


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "No such file or directory",
        "Permission denied",
        "timed out",
        "Name or service not known",
    ):
        if marker in text:
            return marker.lower()
    first = text.splitlines()[0] if text else type(exc).__name__
    return scrub_text(first[:160])
