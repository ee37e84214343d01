"""The systemd unit that runs Mercury as a service: its text from plain inputs.

Pure: `UnitSpec` holds every fact the unit depends on (paths, user, systemd version, whether
Mercury mounts space images), and each choice is a small function over plain data, so
every choice is tested without systemd. mercury/ops/service.py gathers the facts and does
the I/O.

The choices that matter:
- Restart back-off: systemd >= 254 knows RestartSteps/RestartMaxDelaySec (a growing delay,
  never giving up); older ones get a fixed RestartSec and a start limit the restarts never
  reach, so a long Docker or database outage does not leave the service dead for good.
- Filesystem sandboxing (ProtectSystem, PrivateTmp, ProtectHome, ...) puts the service in
  its own mount namespace. Loop-mounted space images made there are invisible to the Docker
  engine, which would bind-mount the empty folder underneath. So a root service that may
  mount space images gets no namespacing directives; everyone else gets all of them.
- ProtectHome=yes hides /home, /root and /run/user; when a path Mercury needs is there
  (a venv in a home folder, or the Python a venv elsewhere resolves into, such as pyenv's
  in /root), it is read-only instead, with ReadWritePaths for data_dir.
- The role (docs/scale-out.md): `all` runs `mercury run`, a gateway `mercury run --role
  gateway`, a worker `mercury worker`. A gateway starts no container, so it is neither
  ordered after docker.service nor given the Docker socket's group.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

from mercury.core.roles import Role

# systemd learnt Type=exec in 240 and RestartSteps/RestartMaxDelaySec in 254.
EXEC_TYPE_SINCE = 240
RESTART_STEPS_SINCE = 254
# Seconds systemd waits beyond Mercury's own shutdown timeout before it kills the rest.
STOP_MARGIN_S = 10.0
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")
COMMENT_WIDTH = 88
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Characters that make an ExecStart argument need quotes.
_PLAIN_ARG_RE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


class UnitError(ValueError):
    """An input the unit cannot be written for (one line naming it)."""


@dataclass(frozen=True)
class UnitSpec:
    """Everything the unit text depends on. Paths are absolute strings."""

    name: str  # the unit is <name>.service
    python: str  # the interpreter that has Mercury installed (not resolved: a venv's own)
    config_path: str
    env_file: str
    data_dir: str
    stop_timeout_s: float  # TimeoutStopSec: see stop_timeout()
    user: str | None = None  # None: runs as root (--as-root)
    docker_group: str | None = None  # the group owning the Docker socket (dedicated user)
    systemd_version: int | None = None  # None: unknown, only long-known directives
    mounts_space_images: bool = False  # see mounts_space_images()
    write_paths: tuple[str, ...] = ()  # written besides data_dir (a SQLite file elsewhere)
    read_paths: tuple[str, ...] = ()  # only read (the extensions folder)
    runtime_paths: tuple[str, ...] = ()  # where python really lives: see interpreter_paths()
    mercury_version: str = ""
    role: Role = Role.ALL  # what the process does: see role_command()

    @property
    def working_dir(self) -> str:
        """The config's folder: relative paths in mercury.yaml are relative to it."""
        return self.config_path.rsplit("/", 1)[0] or "/"

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"


# --------------------------------------------------------------------------- decisions


def check_name(name: str) -> str:
    """The unit's name: letters, digits, `_.-`; no `@` (that would be a template)."""
    if not _NAME_RE.fullmatch(name) or name.endswith(".service"):
        raise UnitError(
            f'--name: "{name}" is not a usable service name (letters, digits, "_", "." and '
            '"-", at most 64, without ".service")'
        )
    return name


def check_user_name(user: str) -> str:
    """A system account name useradd accepts everywhere."""
    if not _USER_RE.fullmatch(user) or user == "root":
        raise UnitError(
            f'--user: "{user}" is not a usable account name (lowercase letters, digits, "_" '
            'and "-", at most 32; for root say --as-root)'
        )
    return user


def check_path(what: str, path: str) -> str:
    """A path systemd can take: absolute, no control characters, no outer whitespace."""
    if not path.startswith("/"):
        raise UnitError(f"{what}: {path!r} is not an absolute path")
    if any(ord(c) < 32 or ord(c) == 127 for c in path) or path != path.strip():
        raise UnitError(
            f"{what}: {path!r} contains a control character or outer whitespace, which a "
            "systemd unit cannot hold; move it to a plainer path"
        )
    return path


def parse_systemd_version(text: str) -> int | None:
    """`systemctl --version`'s first line ("systemd 252 (252.39-1~deb12u2)") -> 252."""
    m = re.match(r"\s*systemd\s+(\d+)", text)
    return int(m.group(1)) if m else None


def stop_timeout(shutdown_timeout_s: float) -> float:
    """TimeoutStopSec: Mercury's own shutdown limit plus a margin for exiting."""
    return shutdown_timeout_s + STOP_MARGIN_S


def role_command(role: Role | str) -> list[str]:
    """The `mercury` arguments that start this role (before `--config`)."""
    role = Role(role)
    if role is Role.WORKER:
        return ["worker"]
    if role is Role.GATEWAY:
        return ["run", "--role", Role.GATEWAY.value]
    return ["run"]


def description(role: Role | str, config_path: str) -> str:
    """Description=: the role is named, so `systemctl list-units` tells the units apart."""
    role = Role(role)
    what = "" if role is Role.ALL else f", {role.value}"
    return f"Mercury chat-bot host{what} ({config_path})"


def mounts_space_images(as_root: bool, space_size: int | None, space_limit: str) -> bool:
    """Whether Mercury may loop-mount space images (root only; disk.space_limit auto/image)."""
    return as_root and space_size is not None and space_limit != "watch"


def dedicated_user_problem(
    container_user: str, user_uid: int | None, space_size: int | None, space_limit: str
) -> str | None:
    """Why a non-root service cannot run this config, or None.

    A non-root Mercury runs agents as its own uid (container.user auto) and cannot mount
    space images, so an explicit other uid or `disk.space_limit: image` would fail at start.
    """
    if space_limit == "image" and space_size is not None:
        return (
            "disk.space_limit is image, which needs root (loop mounts); set it to auto or "
            "watch for a dedicated user, or install with --as-root"
        )
    if container_user != "auto":
        uid = int(container_user.split(":")[0])
        if uid != user_uid:
            return (
                f"container.user is {container_user}, but a service that is not root runs "
                "agents as its own uid; set container.user to auto, or install with --as-root"
            )
    return None


def is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def interpreter_paths(python: str, resolved: str, base_prefix: str) -> tuple[str, ...]:
    """The paths the interpreter needs besides `python` itself (a venv's own, unresolved).

    A venv's python is a symlink into the installation it was built on, and its standard
    library is there too (sys.base_prefix): a venv in /opt built on a pyenv Python in /root
    runs nothing if ProtectHome=yes hides /root. So the resolved file and the base prefix
    count as needed paths for ProtectHome and PrivateTmp, like python itself.
    """
    out: list[str] = []
    for path in (resolved, base_prefix):
        if path and path != python and path not in out:
            out.append(path)
    return tuple(out)


def protect_home(paths: Iterable[str]) -> str:
    """ProtectHome's value: yes, or read-only when Mercury needs a path in a home folder."""
    return "read-only" if any(is_under(p, d) for p in paths for d in HOME_DIRS) else "yes"


def private_tmp(paths: Iterable[str]) -> bool:
    """PrivateTmp hides the host's /tmp: only when Mercury needs nothing in it."""
    return not any(is_under(p, d) for p in paths for d in TMP_DIRS)


def service_type(version: int | None) -> str:
    """exec (a missing interpreter is a failed start, not a started service), else simple."""
    return "exec" if version is None or version >= EXEC_TYPE_SINCE else "simple"


Directive = tuple[str, str, str]  # key, value, the comment saying why

# ExecStart's comment per role: what this process does (docs/scale-out.md).
_EXEC_WHY = {
    Role.ALL: "The interpreter Mercury is installed in, with this install's config: "
    "everything in one process.",
    Role.GATEWAY: "The interpreter Mercury is installed in, with this install's config: the "
    "gateway (chats, web server, scheduler, sending replies); workers run the jobs.",
    Role.WORKER: "The interpreter Mercury is installed in, with this install's config: a "
    "worker (claims jobs, runs their containers on this machine's engine).",
}


def restart_directives(version: int | None) -> tuple[list[Directive], list[Directive]]:
    """([Unit] lines, [Service] lines) for restarting after a crash, by systemd version."""
    if version is not None and version >= RESTART_STEPS_SINCE:
        unit = [("StartLimitIntervalSec", "0", "Never give up restarting (a long outage ends).")]
        service = [
            ("RestartSec", "2s", "The first restart comes quickly ..."),
            ("RestartSteps", "10", "... and each further one waits longer ..."),
            ("RestartMaxDelaySec", "5min", "... up to 5 minutes between tries."),
        ]
        return unit, service
    unit = [
        (
            "StartLimitIntervalSec",
            "10min",
            "This systemd has no growing back-off; this start limit is above what restarts "
            "30 s apart reach, so an outage never leaves the service dead ...",
        ),
        ("StartLimitBurst", "30", "... while a storm of manual restarts is still stopped."),
    ]
    service = [("RestartSec", "30s", "Wait between tries, so a crash loop does not spin.")]
    return unit, service


# --------------------------------------------------------------------------- quoting


def escape_specifiers(value: str) -> str:
    """systemd expands `%x` specifiers in most values; a literal `%` is `%%`."""
    return value.replace("%", "%%")


def quote_word(word: str) -> str:
    """One word of a quoted list (ExecStart, ReadWritePaths): quoted when it has to be."""
    if _PLAIN_ARG_RE.fullmatch(word):
        return escape_specifiers(word)
    inner = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escape_specifiers(inner)}"'


def exec_line(args: Iterable[str]) -> str:
    """ExecStart's value; `$` is doubled too, as systemd expands `$VAR` there."""
    return " ".join(quote_word(a).replace("$", "$$") for a in args)


# --------------------------------------------------------------------------- the unit


def _section(lines: list[str], name: str, directives: list[Directive]) -> None:
    lines.append(f"[{name}]")
    for key, value, why in directives:
        lines += textwrap.wrap(
            why, COMMENT_WIDTH, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
        )
        lines.append(f"{key}={value}")
    lines.append("")


def _identity(spec: UnitSpec) -> list[Directive]:
    if spec.user is None:
        return [
            (
                "User",
                "root",
                "Runs as root, as the operator chose (--as-root): root can mount space "
                "images and run agents as an id no account has; a flaw in Mercury is root's.",
            )
        ]
    out = [
        ("User", spec.user, "A dedicated system account: Mercury needs no login user's rights."),
        ("Group", spec.user, "Its own group, so the files it makes are nobody else's."),
    ]
    if spec.docker_group and Role(spec.role).runs_containers:  # a gateway never uses Docker
        out.append(
            (
                "SupplementaryGroups",
                spec.docker_group,
                "The Docker socket's group: Mercury starts each run's container. Docker "
                "access is root-equivalent, so this account is as trusted as root.",
            )
        )
    return out


def _sandbox(spec: UnitSpec) -> list[Directive]:
    """The hardening directives that leave Docker, the host-API sockets and mounts working."""
    out: list[Directive] = [
        ("UMask", "0077", "Whatever Mercury creates is private to it (data_dir holds secrets)."),
        ("NoNewPrivileges", "yes", "No setuid program can raise Mercury's privileges."),
        ("RestrictSUIDSGID", "yes", "Mercury never makes setuid or setgid files."),
        ("LockPersonality", "yes", "The execution domain cannot be changed."),
        ("RestrictRealtime", "yes", "No realtime scheduling: a loop cannot freeze the host."),
        ("SystemCallArchitectures", "native", "Only this machine's own system call ABI."),
        ("RestrictNamespaces", "yes", "Mercury makes no namespaces (Docker makes them)."),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "Unix sockets (Docker, the host API), IP, and netlink for address lookups.",
        ),
    ]
    if spec.user is not None:
        out += [
            ("CapabilityBoundingSet", "", "A plain user needs no capabilities at all."),
            ("AmbientCapabilities", "", "... and gets none handed in."),
        ]
    if spec.mounts_space_images:
        out.append(
            (
                "ProtectSystem",
                "no",
                "No filesystem sandbox: space images Mercury mounts in a private mount "
                "namespace would be invisible to Docker (set disk.space_limit: watch to "
                "get the sandbox, then install again).",
            )
        )
        return out
    needed = [spec.python, spec.config_path, spec.env_file, spec.data_dir]
    needed += [*spec.write_paths, *spec.read_paths, *spec.runtime_paths]
    home = protect_home(needed)
    tmp = private_tmp(needed)
    writable = " ".join(quote_word(p) for p in (spec.data_dir, *spec.write_paths))
    out += [
        ("ProtectSystem", "strict", "The whole file system is read-only to Mercury ..."),
        ("ReadWritePaths", writable, "... except data_dir (and a SQLite file kept elsewhere)."),
        (
            "ProtectHome",
            home,
            "Home folders are hidden."
            if home == "yes"
            else "Home folders are read-only (Mercury needs a path in one).",
        ),
        (
            "PrivateTmp",
            "yes" if tmp else "no",
            "Its own /tmp (Mercury bind-mounts nothing from /tmp)."
            if tmp
            else "The host's /tmp: this install keeps files Mercury needs there.",
        ),
        ("PrivateDevices", "yes", "No device nodes beyond /dev/null and the like."),
        ("ProtectKernelTunables", "yes", "/proc/sys and /sys are read-only."),
        ("ProtectKernelModules", "yes", "No kernel modules loaded."),
        ("ProtectKernelLogs", "yes", "The kernel log is not readable."),
        ("ProtectControlGroups", "yes", "The cgroup tree is read-only (Docker owns cgroups)."),
        ("ProtectClock", "yes", "The clock cannot be changed."),
        ("ProtectHostname", "yes", "The host name cannot be changed."),
    ]
    return out


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text; every directive comes with a comment saying why."""
    check_name(spec.name)
    if spec.user is not None:
        check_user_name(spec.user)
    paths = [
        ("python", spec.python),
        ("config", spec.config_path),
        (".env", spec.env_file),
        ("data_dir", spec.data_dir),
    ]
    paths += [("a path Mercury writes", p) for p in spec.write_paths]
    paths += [("a path Mercury reads", p) for p in spec.read_paths]
    paths += [("the Python installation", p) for p in spec.runtime_paths]
    for what, path in paths:
        check_path(what, path)
    role = Role(spec.role)
    restart_unit, restart_service = restart_directives(spec.systemd_version)
    head = f" (Mercury {spec.mercury_version})" if spec.mercury_version else ""
    lines = [
        f"# Mercury as a systemd service, written by `mercury service install`{head}.",
        "# Running that command again rewrites this file; `mercury service uninstall` removes",
        "# it. Logs: journalctl -u " + spec.unit_name,
        "",
    ]
    unit: list[Directive] = [
        ("Description", escape_specifiers(description(role, spec.config_path)), "For"
         " `systemctl status`."),
        ("Wants", "network-online.target", "Chat platforms and models are reached over the "
         "network ..."),
        ("After", "network-online.target", "... so start once it is up."),
    ]  # fmt: skip
    if role.runs_containers:
        unit.append(("After", "docker.service", "Runs are Docker containers: start after "
                     "the engine, and stop before it."))  # fmt: skip
    unit += restart_unit
    env = [("PYTHONUNBUFFERED", "1")]
    service: list[Directive] = [
        ("Type", service_type(spec.systemd_version), "Started once the program runs."),
        *_identity(spec),
        ("WorkingDirectory", escape_specifiers(spec.working_dir), "The config's folder: "
         "relative paths in mercury.yaml are relative to it."),
        ("EnvironmentFile", "-" + escape_specifiers(spec.env_file), "The secrets (tokens, "
         "keys, the dashboard password) from .env; '-': a missing file is no error."),
        ("Environment", " ".join(quote_word(f"{k}={v}") for k, v in env), "Log lines reach "
         "the journal as they are written."),
        ("ExecStart", exec_line([spec.python, "-m", "mercury.cli", *role_command(role),
                                  "--config", spec.config_path]),
         _EXEC_WHY[role]),
        ("Restart", "on-failure", "A crash or a failed start is retried; a clean stop is not."),
        *restart_service,
        ("KillSignal", "SIGTERM", "Mercury's graceful stop: runs get their grace period ..."),
        ("TimeoutStopSec", f"{spec.stop_timeout_s:g}s", "... and the whole shutdown its "
         "limit, plus a margin, before the rest is killed."),
        ("KillMode", "mixed", "SIGTERM to Mercury alone (it stops its children itself); "
         "what is left at the timeout is killed."),
        *_sandbox(spec),
    ]  # fmt: skip
    _section(lines, "Unit", unit)
    _section(lines, "Service", service)
    _section(lines, "Install", [("WantedBy", "multi-user.target", "Started at boot.")])
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- status

STATUS_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "ExecMainStartTimestamp",
    "NRestarts",
    "Result",
    "FragmentPath",
)


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p ...` output (Key=Value lines) -> a dict."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def is_active(props: dict[str, str]) -> bool:
    return props.get("ActiveState") == "active"


def status_lines(unit_name: str, props: dict[str, str]) -> list[str]:
    """What `mercury service status` prints, in plain words."""
    if props.get("LoadState") == "not-found":
        return [f"{unit_name} is not installed (`mercury service install` installs it)."]
    active = props.get("ActiveState", "unknown")
    sub = props.get("SubState", "")
    pid = props.get("MainPID", "0")
    first = f"{unit_name}: {active}" + (f" ({sub})" if sub and sub != active else "")
    if pid not in ("", "0"):
        first += f", main PID {pid}"
    lines = [first]
    if props.get("FragmentPath"):
        lines.append(f"  unit file: {props['FragmentPath']}")
    lines.append(f"  started: {props.get('ExecMainStartTimestamp') or 'never'}")
    lines.append(f"  restarts after failures: {props.get('NRestarts', '0') or '0'}")
    result = props.get("Result", "")
    if result:
        lines.append(
            f"  last result: {result}"
            + ("" if result == "success" else f" (see journalctl -u {unit_name})")
        )
    if active != "active":
        lines.append(
            f"  not running: `systemctl start {unit_name}`, logs: journalctl -u {unit_name}"
        )
    return lines
