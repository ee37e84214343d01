"""What one run's container looks like: mounts, limits, environment, labels. Pure data.

`container_spec()` turns the config and one run's paths into a `ContainerSpec` without
touching Docker, so every hardening decision can be unit-tested and read in one place.
It refuses (ValueError) anything that would widen what a container can reach: an unsafe
space or run id, a mount of the spaces root, the data dir or the Docker socket, a secret
in the environment.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mercury.config import AUTO_CONTAINER_ID, SECRET_ENV, ContainerConfig
from mercury.logging import is_secret_key, scrub_text

# Where things appear inside the container.
SPACE_MOUNT = "/space"
IO_MOUNT = "/run/mercury-io"
RESOURCES_MOUNT = "/opt/mercury/resources"
API_MOUNT = "/run/mercury-api"
_RESERVED_TARGETS = (SPACE_MOUNT, IO_MOUNT, RESOURCES_MOUNT, API_MOUNT, "/tmp")

LABEL_MANAGED = "mercury.managed"
LABEL_INSTANCE = "mercury.instance"
LABEL_SPACE = "mercury.space"
LABEL_RUN = "mercury.run"
# Set on a container made ahead of its message (warm.py); it serves one run like any other.
LABEL_WARM = "mercury.warm"

# Space and run ids become path components, container names and labels: keep them boring.
# A leading alphanumeric rules out ".", ".." and option-looking names.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Name parts that mark a credential even where mercury.logging's key heuristic does not.
_SECRET_NAME_PARTS = {"dsn", "credential", "credentials", "passphrase", "apikey", "privatekey"}
# Variables the host sets itself; config or a request may not replace them.
_HOST_SET = ("MERCURY_RUN_ID", "MERCURY_SPACE_ID", "MERCURY_IO_DIR", "HOME", "MERCURY_PRELOAD")
# The agent's waiting mode (a warm container): its arguments after the image's entry point.
WAIT_COMMAND = ("--wait",)
# CPU weight of a warm container while it starts and waits (Docker's default is 1024): its
# imports yield to the runs going on; raised to the default when a run is handed to it.
WAITING_CPU_SHARES = 128
RUN_CPU_SHARES = 1024
# The engine's sockets: a container that can reach one owns the host.
_DOCKER_SOCKETS = (Path("/var/run/docker.sock"), Path("/run/docker.sock"))
# Container logs are only read for a crash's last lines; cap them so a chatty agent cannot
# fill the host's disk before its timeout.
LOG_CONFIG = {"type": "json-file", "config": {"max-size": "5m", "max-file": "1"}}


@dataclass(frozen=True)
class BindMount:
    source: Path  # host path
    target: str  # container path
    read_only: bool

    def bind(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `create_container` needs for one run.

    `host_config` holds keyword arguments for docker's low-level
    `APIClient.create_host_config`; the rest go to `APIClient.create_container`.
    """

    name: str
    image: str
    user: str
    labels: dict[str, str]
    environment: dict[str, str]
    mounts: tuple[BindMount, ...]
    host_config: dict[str, Any] = field(default_factory=dict)
    # Arguments after the image's entry point; None = the image's own (a cold run).
    command: tuple[str, ...] | None = None


def check_id(kind: str, value: str) -> str:
    """Return `value` if it is a safe path component / name part, else ValueError."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def looks_secret(name: str) -> bool:
    """Whether an environment variable name names a credential or Mercury's own settings."""
    upper = name.upper()
    if upper in SECRET_ENV.values() or upper.startswith("MERCURY_"):
        return True
    if is_secret_key(name) or "DATABASE_URL" in upper:
        return True
    parts = {p.lower() for p in re.split(r"[_\-.]+", name) if p}
    return bool(parts & _SECRET_NAME_PARTS)


def build_environment(
    *,
    run_id: str,
    space_id: str,
    granted: Mapping[str, str],
    preload: Sequence[str] = (),
) -> dict[str, str]:
    """The container's whole environment: host-set run ids plus what config/extensions grant.

    Nothing is inherited from the host process. Raises ValueError naming (never showing
    the value of) any variable that is or looks like a secret.
    """
    env: dict[str, str] = {}
    for name, value in granted.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"environment variable name {name!r} is not valid")
        if name in _HOST_SET:
            raise ValueError(f"environment variable {name} is set by Mercury and cannot be granted")
        if looks_secret(name):
            raise ValueError(
                f"environment variable {name} may not enter a container: secrets and Mercury's "
                "own settings stay on the host"
            )
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"environment variable {name} must be text without NUL bytes")
        # A credential-shaped value under an innocent name is still a credential.
        if scrub_text(value) != value:
            raise ValueError(
                f"environment variable {name} holds a credential-shaped value and may not "
                "enter a container"
            )
        env[name] = value
    env.update(
        {
            "MERCURY_RUN_ID": run_id,
            "MERCURY_SPACE_ID": space_id,
            "MERCURY_IO_DIR": IO_MOUNT,
            # The root fs is read-only; /tmp is the only writable place that is not shared.
            "HOME": "/tmp",
        }
    )
    if preload:
        # A waiting agent imports these providers' SDKs before its message comes.
        env["MERCURY_PRELOAD"] = ",".join(p for p in preload if re.fullmatch(r"[a-z]+", p))
    return env


def _resolved(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"mount source {path} must be an absolute path")
    return path.resolve()


def _is_within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _check_source(what: str, source: Path, data_dir: Path) -> Path:
    """Refuse a mount source that exposes the data dir, other spaces/runs or the engine."""
    src = _resolved(source)
    if ":" in str(src) or "," in str(src):
        raise ValueError(f"{what} {src} contains ':' or ',' and cannot be bind-mounted")
    if _is_within(data_dir, src):
        raise ValueError(f"{what} {src} would expose the data dir {data_dir}")
    for shared in (data_dir / "spaces", data_dir / "io"):
        if _is_within(src, shared):
            raise ValueError(f"{what} {src} lies inside {shared}, which holds other runs' files")
    for sock in _DOCKER_SOCKETS:
        if _is_within(sock, src) or src.name == "docker.sock":
            raise ValueError(f"{what} {src} would expose the Docker engine socket")
    return src


def _check_target(target: str) -> str:
    norm = posixpath.normpath(target)
    if not target.startswith("/") or norm != target.rstrip("/") or norm == "/":
        raise ValueError(f"mount target {target!r} must be a normalised absolute path below /")
    if ":" in norm or "," in norm:
        raise ValueError(f"mount target {target!r} contains ':' or ','")
    for reserved in _RESERVED_TARGETS:
        if _is_within(PurePosixPath(norm), PurePosixPath(reserved)) or _is_within(
            PurePosixPath(reserved), PurePosixPath(norm)
        ):
            raise ValueError(f"mount target {target!r} overlaps Mercury's own mount {reserved}")
    return norm


# An empty, read-only, unusable folder over what a run must not see.
MASK_OPTIONS = "ro,nosuid,nodev,noexec,size=4k,mode=0555"


def _check_masked(path: str, targets: set[str]) -> str:
    """A masked folder: absolute, normalised, not /tmp nor a mount target of the run."""
    norm = _check_target(path)
    if norm in targets or norm == "/tmp":
        raise ValueError(f"masked folder {path!r} is also a mount of the run")
    return norm


def _check_network(network: str) -> str:
    # `host` or `container:<id>` would share a namespace with the host or another container.
    if not _NETWORK_RE.fullmatch(network) or network == "host":
        raise ValueError(f"network {network!r} is not allowed: use none, bridge or a network name")
    return network


def container_spec(
    config: ContainerConfig,
    *,
    instance: str,
    run_id: str,
    space_id: str,
    image: str,
    data_dir: Path,
    space_dir: Path,
    io_dir: Path,
    resources_dir: Path | None = None,
    api_socket_dir: Path | None = None,
    readonly_mounts: Mapping[Path, str] | None = None,
    masked: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    memory: int | None = None,
    network: str | None = None,
    user: str | None = None,
    wait: bool = False,
    wait_timeout: float | None = None,
    preload: Sequence[str] = (),
) -> ContainerSpec:
    """The hardened container for one run (no Docker calls; ValueError on anything unsafe).

    `space_dir` must be exactly data_dir/spaces/<space_id> and `io_dir` a child of
    data_dir/io: only that space and that run are mounted, never their roots. `env` is what
    the request grants on top of `config.env`; `memory` and `network` override the config.
    `user` is the resolved `uid:gid` (identity.container_identity); by default the config's.
    `masked`: folders of the image hidden under an empty read-only tmpfs (the packages of
    extensions the run is not granted: absent from its container, not merely unused).
    `wait`: a warm container (warm.py), made exactly like a cold one but started with the
    agent's waiting mode and labelled so; `preload` names the SDKs it imports meanwhile;
    `wait_timeout`: the agent exits by itself after that long without a message (so one
    left behind by a killed Mercury does not wait for ever).
    """
    check_id("instance", instance)
    check_id("run id", run_id)
    check_id("space id", space_id)
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} is not a valid image reference")
    if user is None:
        # Pure data: "auto" resolves to the root-install id here; the runner passes the
        # id resolved for its process.
        user = config.user if config.user != "auto" else f"{AUTO_CONTAINER_ID}:{AUTO_CONTAINER_ID}"
    if not re.fullmatch(r"\d+(:\d+)?", user) or user.split(":")[0] == "0":
        raise ValueError(f"user {user!r}: containers run as a non-root numeric uid:gid")

    data = _resolved(data_dir)
    space = _resolved(space_dir)
    if space != data / "spaces" / space_id:
        raise ValueError(
            f"space dir {space} must be {data / 'spaces' / space_id}: a container sees only "
            "its own space, never the spaces root or another space"
        )
    io = _resolved(io_dir)
    if io.parent != data / "io":
        raise ValueError(f"io dir {io} must be a direct child of {data / 'io'}")
    for what, path in (("space dir", space), ("io dir", io)):
        if ":" in str(path) or "," in str(path):
            raise ValueError(f"{what} {path} contains ':' or ',' and cannot be bind-mounted")

    mounts = [
        BindMount(space, SPACE_MOUNT, read_only=False),
        BindMount(io, IO_MOUNT, read_only=False),
    ]
    if resources_dir is not None:
        mounts.append(
            BindMount(_check_source("resources dir", resources_dir, data), RESOURCES_MOUNT, True)
        )
    if api_socket_dir is not None:
        # Read-only still lets the agent connect() to the socket (sockets are exempt from
        # EROFS), but it cannot plant or replace files next to it.
        mounts.append(
            BindMount(_check_source("API socket dir", api_socket_dir, data), API_MOUNT, True)
        )
    targets = {m.target for m in mounts}
    for source, target in (readonly_mounts or {}).items():
        norm = _check_target(target)
        if norm in targets:
            raise ValueError(f"mount target {target!r} is used twice")
        targets.add(norm)
        mounts.append(BindMount(_check_source("extension mount", Path(source), data), norm, True))

    mem = config.memory if memory is None else memory
    if not isinstance(mem, int) or isinstance(mem, bool) or mem < 6 * 1024**2:
        raise ValueError(f"memory limit {mem!r} must be at least 6 MiB (in bytes)")
    net = _check_network(config.network if network is None else network)

    environment = build_environment(
        run_id=run_id,
        space_id=space_id,
        granted={**config.env, **(env or {})},
        preload=preload,
    )

    host_config: dict[str, Any] = {
        "binds": [m.bind() for m in mounts],
        # memswap == memory: no swap on top, so the limit is the limit and OOM is prompt.
        "mem_limit": mem,
        "memswap_limit": mem,
        "nano_cpus": int(config.cpus * 1e9),
        "pids_limit": config.pids,
        "cap_drop": list(config.cap_drop),
        "read_only": config.read_only_rootfs,
        "tmpfs": {
            "/tmp": f"rw,nosuid,nodev,size={config.tmpfs_size},mode=1777",
            **{_check_masked(path, targets): MASK_OPTIONS for path in masked},
        },
        "init": config.init,
        "network_mode": net,
        # Kept after exit so the exit code and OOMKilled stay readable; the runner removes it.
        "auto_remove": False,
        "log_config": LOG_CONFIG,
        # Open files per process: together with the pids limit this bounds what one run
        # can hold open, the host API connections included.
        "ulimits": [{"name": "nofile", "soft": config.nofile, "hard": config.nofile}],
    }
    if wait:
        host_config["cpu_shares"] = WAITING_CPU_SHARES
    if config.no_new_privileges:
        host_config["security_opt"] = ["no-new-privileges:true"]
    if config.runtime:
        host_config["runtime"] = config.runtime

    return ContainerSpec(
        name=f"mercury-{instance}-{run_id}",
        image=image,
        user=user,
        labels={
            LABEL_MANAGED: "true",
            LABEL_INSTANCE: instance,
            LABEL_SPACE: space_id,
            LABEL_RUN: run_id,
            **({LABEL_WARM: "true"} if wait else {}),
        },
        command=(
            (*WAIT_COMMAND, *(("--wait-timeout", f"{wait_timeout:g}") if wait_timeout else ()))
            if wait
            else None
        ),
        environment=environment,
        mounts=tuple(mounts),
        host_config=host_config,
    )
