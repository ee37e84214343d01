"""`mercury service`: the I/O around the unit text of mercury/core/service_unit.py.

Gathers the facts (the interpreter, the config's paths, the systemd version, the Docker
socket's group; the role: all, gateway or worker, docs/scale-out.md), then installs: the
dedicated system user, its Docker access (not for a gateway, which starts no container),
data_dir handed to it, the unit written, enabled and started. Uninstall stops and removes
the unit and keeps data and user. Status reads `systemctl show`.

Who owns data_dir afterwards (the spaces' files matter: Mercury hands them to
`container.user` before each run, and agents write into them as that uid):
- a dedicated user: everything in data_dir goes to that user. With `container.user: auto`
  a non-root Mercury runs agents as its own uid, so the spaces are the user's too: exactly
  what that Mercury would have made itself. Files an earlier root Mercury gave to
  AUTO_CONTAINER_ID are taken back this way, or the agents could not change them.
- root: data_dir goes to root, and each space's content to the container's id
  (AUTO_CONTAINER_ID, or container.user), which is what a root Mercury runs agents as.
The walk never follows a symlink (an agent may have planted some) and stays on data_dir's
filesystem (a mounted space image belongs to the container's id already).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mercury import __version__
from mercury.config import AUTO_CONTAINER_ID, LoadedConfig
from mercury.core.roles import Role, role_problem, space_limit_for
from mercury.core.service_unit import (
    UnitError,
    UnitSpec,
    check_name,
    check_user_name,
    dedicated_user_problem,
    interpreter_paths,
    is_active,
    mounts_space_images,
    parse_show,
    parse_systemd_version,
    render_unit,
    status_lines,
    stop_timeout,
)

UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING_MARKER = Path("/run/systemd/system")  # what sd_booted() looks at
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")
_SQLITE_PREFIX = "sqlite+aiosqlite:///"
NOT_ACTIVE_EXIT = 3  # as `systemctl is-active`


class ServiceError(Exception):
    """The service cannot be installed, removed or read (one line for the operator)."""


@dataclass(frozen=True)
class Plan:
    """What install will do: the unit and who gets data_dir."""

    spec: UnitSpec
    docker_socket: Path | None
    notes: tuple[str, ...]  # said before the unit (on stderr with --dry-run)


def systemd_running() -> bool:
    return SYSTEMD_RUNNING_MARKER.is_dir()


def require_systemd(consequence: str) -> None:
    if not systemd_running():
        raise ServiceError(f"systemd is not running here (PID 1 is not systemd), {consequence}")


def systemd_version() -> int | None:
    """From `systemctl --version` (works without a running systemd); None if unknown."""
    try:
        done = subprocess.run(
            ["systemctl", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_systemd_version(done.stdout) if done.returncode == 0 else None


def docker_socket(configured: str | None = None) -> Path | None:
    """The Docker engine's unix socket: `container.docker_host` (which Mercury itself puts
    before $DOCKER_HOST, so a worker's own engine is the one whose group it joins), else
    $DOCKER_HOST unix://..., else the usual one."""
    host = configured or os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None  # a TCP engine: no socket group to join
    path = Path(host[len("unix://") :]) if host else DEFAULT_DOCKER_SOCKET
    return path if path.exists() else None


def socket_group(path: Path) -> str | None:
    try:
        return grp.getgrgid(path.stat().st_gid).gr_name
    except (OSError, KeyError):
        return None


def sqlite_file(url: str) -> Path | None:
    if not url.startswith(_SQLITE_PREFIX):
        return None
    raw = url[len(_SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(raw) if raw and raw != ":memory:" else None


def user_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def plan_install(
    loaded: LoadedConfig,
    *,
    name: str,
    user: str | None,
    version: int | None,
    role: Role = Role.ALL,
) -> Plan:
    """The unit for this install, or ServiceError saying why it cannot run as asked."""
    from mercury.app import SHUTDOWN_TIMEOUT_S

    if loaded.path is None:
        raise ServiceError("no mercury.yaml found: pass --config PATH (see `mercury init`)")
    config = loaded.config
    notes: list[str] = []
    try:
        check_name(name)
        if user is not None:
            check_user_name(user)
    except UnitError as exc:
        raise ServiceError(str(exc)) from None
    # A gateway or worker on SQLite would fail at every start: say so now, not in a
    # restart loop in the journal.
    problem = role_problem(role, config.resolved_database_url())
    # ... and so would one told to mount space images (a gateway's and workers' spaces
    # are shared folders: `auto` means watch for them).
    space_limit, refused = space_limit_for(role, config.disk.space_limit)
    if problem or refused:
        raise ServiceError(str(problem or refused))
    disk = config.disk
    if user is not None:
        problem = dedicated_user_problem(
            config.container.user, user_uid(user), disk.space_size, disk.space_limit
        )
        if problem:
            raise ServiceError(problem)
    write_paths: list[str] = []
    db_file = sqlite_file(config.resolved_database_url())
    if db_file is not None:
        folder = db_file.resolve().parent
        if folder != config.data_dir and config.data_dir not in folder.parents:
            write_paths.append(str(folder))
    # A gateway never talks to Docker: no socket group, so its account stays unprivileged.
    socket = docker_socket(config.container.docker_host) if role.runs_containers else None
    group = None
    if user is not None and socket is not None:
        group = socket_group(socket)
        if group == "root":
            raise ServiceError(
                f"the Docker socket {socket} belongs to group root; give it a docker group "
                "(Docker's post-install steps) or install with --as-root"
            )
    elif user is not None and role.runs_containers:
        group = "docker"
        notes.append(
            "no Docker socket found (DOCKER_HOST or /var/run/docker.sock): the unit assumes "
            "group docker"
        )
    images = mounts_space_images(user is None, disk.space_size, space_limit)
    config_path = loaded.path.resolve()
    spec = UnitSpec(
        name=name,
        python=os.path.abspath(sys.executable),  # a venv's python: not resolved
        config_path=str(config_path),
        env_file=str(config_path.parent / ".env"),
        data_dir=str(config.data_dir),
        stop_timeout_s=stop_timeout(SHUTDOWN_TIMEOUT_S),
        user=user,
        docker_group=group,
        systemd_version=version,
        mounts_space_images=images,
        write_paths=tuple(write_paths),
        read_paths=(str(config.extensions.dir),),
        runtime_paths=interpreter_paths(
            os.path.abspath(sys.executable),
            os.path.realpath(sys.executable),
            os.path.realpath(sys.base_prefix),
        ),
        mercury_version=__version__,
        role=role,
    )
    try:
        render_unit(spec)
    except UnitError as exc:
        raise ServiceError(str(exc)) from None
    return Plan(spec=spec, docker_socket=socket, notes=tuple(notes))


# --------------------------------------------------------------------------- install


def _run(cmd: list[str]) -> str:
    """Run a system tool; its first error line becomes a ServiceError."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"{cmd[0]} could not be run: {exc}") from None
    if done.returncode != 0:
        # The last line: systemctl says what it did ("Created symlink ...") before the error.
        why = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ServiceError(f"`{' '.join(cmd)}` failed: {why}")
    return done.stdout


def ensure_user(user: str, home: str) -> str:
    """Create the system account (no login shell) if missing; what was done, in words."""
    if user_uid(user) is not None:
        return f"system user {user} exists; kept as it is"
    shell = shutil.which("nologin") or "/usr/sbin/nologin"
    if not Path(shell).exists():
        shell = "/bin/false"
    _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
          "--shell", shell, user])  # fmt: skip
    return f"created system user {user} (no login shell, home {home})"


def join_group(user: str, group: str) -> str:
    if user in grp.getgrnam(group).gr_mem:
        return f"{user} is in group {group} already"
    _run(["usermod", "--append", "--groups", group, user])
    return (
        f"added {user} to group {group}, which owns the Docker socket: Docker access is "
        f"root-equivalent, so treat {user} as trusted as root"
    )


def can_reach(user: str, path: Path, test: str) -> bool:
    """Whether `user` passes `test -<test> path` (ACLs included): asked as that user."""
    done = subprocess.run(
        ["runuser", "-u", user, "--", "test", f"-{test}", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def chown_tree(root: Path, uid: int, gid: int, *, skip: Callable[[str], bool]) -> int:
    """Give `root` and everything below it to uid:gid; never follows a symlink, never
    leaves root's filesystem, leaves what `skip(relative path)` names. Returns the count."""
    count = 0
    dev = root.lstat().st_dev
    os.chown(root, uid, gid, follow_symlinks=False)
    for top, dirs, files, fd in os.fwalk(root, follow_symlinks=False):
        rel_top = os.path.relpath(top, root)
        keep: list[str] = []
        for entry in [*dirs, *files]:
            rel = os.path.normpath(os.path.join(rel_top, entry))
            if skip(rel):
                continue
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if st.st_dev != dev:
                continue
            os.chown(entry, uid, gid, dir_fd=fd, follow_symlinks=False)
            count += 1
            if entry in dirs:
                keep.append(entry)
        dirs[:] = keep
    return count


def hand_over_data(plan: Plan, loaded: LoadedConfig) -> list[str]:
    """data_dir (and a SQLite file elsewhere) to the service's user; see the module doc."""
    from mercury.sandbox.identity import resolve_identity
    from mercury.sandbox.spaces import spaces_root

    spec = plan.spec
    data = Path(spec.data_dir)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    done: list[str] = []
    if spec.user is None:
        ident = resolve_identity(loaded.config.container.user, 0, 0)
        n = chown_tree(data, 0, 0, skip=lambda rel: rel.startswith("spaces/"))
        spaces = spaces_root(data)
        if spaces.is_dir():
            for space in spaces.iterdir():
                if space.is_dir() and not space.is_symlink():
                    n += chown_tree(space, ident.uid, ident.gid, skip=lambda _rel: False)
        who = "AUTO_CONTAINER_ID" if ident.uid == AUTO_CONTAINER_ID else ident.user
        done.append(
            f"gave {data} to root and the spaces' files to the agents' id {who} "
            f"({n} files and folders)"
        )
    else:
        pw = pwd.getpwnam(spec.user)
        n = chown_tree(data, pw.pw_uid, pw.pw_gid, skip=lambda _rel: False)
        done.append(f"gave {data} and its {n} files and folders to {spec.user}")
        db_file = sqlite_file(loaded.config.resolved_database_url())
        if db_file is not None and spec.write_paths:
            for f in (db_file, *(Path(f"{db_file}{s}") for s in ("-wal", "-shm", "-journal"))):
                if f.exists() and not f.is_symlink():
                    os.chown(f, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
            done.append(f"gave the SQLite database {db_file} to {spec.user}")
        env = Path(spec.env_file)
        if env.is_file():
            # Mercury reads .env itself too; the group may read it, the owner stays.
            os.chown(env, -1, pw.pw_gid, follow_symlinks=False)
            os.chmod(env, 0o640)
            done.append(f"{env}: readable by group {spec.user} (0640), owner unchanged")
    return done


def check_access(spec: UnitSpec, *, writes: bool) -> None:
    """The dedicated user must reach the interpreter and the config (not in /root, say),
    and, once handed over, write data_dir."""
    if spec.user is None:
        return
    checks = [(Path(spec.python), "x"), (Path(spec.config_path), "r")]
    checks += [(Path(p), "r") for p in spec.runtime_paths]
    if writes:
        checks = [(Path(p), "w") for p in (spec.data_dir, *spec.write_paths)]
    for path, test in checks:
        if not can_reach(spec.user, path, test):
            what = {"x": "run", "r": "read", "w": "write"}[test]
            raise ServiceError(
                f"the service user {spec.user} cannot {what} {path} (a folder on the way is "
                "closed to it); install Mercury where it can, such as a venv in /opt, or use "
                "--as-root"
            )


def write_unit(text: str, path: Path) -> None:
    """Write the unit whole or not at all (0644: systemd and `systemctl cat` read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def install(plan: Plan, loaded: LoadedConfig, unit_dir: Path = UNIT_DIR) -> list[str]:
    """Create the user, hand it data_dir, write, enable and start the unit."""
    require_systemd("so no service can be installed; use --dry-run to see the unit")
    if os.geteuid() != 0:
        raise ServiceError("installing a service needs root: run it with sudo")
    spec = plan.spec
    done: list[str] = []
    if spec.user is not None:
        done.append(ensure_user(spec.user, spec.data_dir))
        if spec.docker_group:
            if plan.docker_socket is None:
                raise ServiceError("no Docker socket found: install Docker first")
            done.append(join_group(spec.user, spec.docker_group))
    check_access(spec, writes=False)
    done += hand_over_data(plan, loaded)
    check_access(spec, writes=True)
    path = unit_dir / spec.unit_name
    existed = path.exists()
    write_unit(render_unit(spec), path)
    done.append(f"{'replaced' if existed else 'wrote'} {path}")
    _run(["systemctl", "daemon-reload"])
    _run(["systemctl", "enable", "--now", spec.unit_name])
    done.append(
        f"enabled and started {spec.unit_name}; check it with `mercury service status` "
        f"and `journalctl -u {spec.unit_name} -f`"
    )
    return done


def uninstall(name: str, unit_dir: Path = UNIT_DIR) -> list[str]:
    """Stop, disable and remove the unit; data_dir and the user stay."""
    try:
        check_name(name)
    except UnitError as exc:
        raise ServiceError(str(exc)) from None
    require_systemd("so there is no service to remove")
    if os.geteuid() != 0:
        raise ServiceError("removing a service needs root: run it with sudo")
    unit = f"{name}.service"
    path = unit_dir / unit
    if not path.exists():
        raise ServiceError(f"{path} does not exist: {unit} is not installed there")
    _run(["systemctl", "disable", "--now", unit])
    path.unlink()
    _run(["systemctl", "daemon-reload"])
    return [
        f"stopped and disabled {unit}, removed {path}",
        "kept: data_dir, the config, .env and the system user (remove the user with "
        "`userdel USER` if no longer wanted)",
    ]


def status(name: str) -> tuple[list[str], bool]:
    """The unit's state in plain lines, and whether it is active."""
    from mercury.core.service_unit import STATUS_PROPERTIES

    try:
        check_name(name)
    except UnitError as exc:
        raise ServiceError(str(exc)) from None
    require_systemd("so there is no service to report on")
    unit = f"{name}.service"
    out = _run(["systemctl", "show", unit, "--property=" + ",".join(STATUS_PROPERTIES)])
    props = parse_show(out)
    return status_lines(unit, props), is_active(props)
