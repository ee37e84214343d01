"""Extension manifests (extension.yaml): what an extension declares, checked before anything
acts on it. Pure: the loader (mercury/extensions/loader.py) reads the file, this decides.

Every value that later reaches a Dockerfile, a container's environment, an HTTP request or
the egress proxy is validated here against a narrow grammar, so no shell text, URL-borne
credential or header injection gets past a manifest. Each problem is one `ManifestError`
naming the dotted field (`install.pip[1]`, `services.github.base_url`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mercury.core.extension_fields import (
    ANY_PORT,
    ManifestError,
    SettingsError,
    check_apt,
    check_command,
    check_env,
    check_headers,
    check_host_pattern,
    check_npm,
    check_pip,
    check_relpath,
    check_setting_value,
    check_text,
    check_url,
    quoted,
    split_host_pattern,
)
from mercury.core.permissions import (
    ALL_PERMISSIONS,
    EXT_PERMISSION_PREFIX,
    Permission,
    is_extension_permission,
)

# Where an extension's folder is bind-mounted (read-only) in a run's container.
EXT_MOUNT_ROOT = "/opt/mercury/ext"
# Where an extension's own venv (pip) and npm prefix live in the derived image.
EXT_VENV_ROOT = "/opt/mercury-ext"
# The repository of derived images (base image + every enabled extension's install steps).
EXT_IMAGE_REPO = "mercury-agent-ext"
# EXT_PERMISSION_PREFIX ("ext:"): an extension's own permission, which an operator grants
# through a custom role; defined in core/permissions.py, which keeps such names in roles.

NAME_PATTERN = r"^[a-z][a-z0-9-]{1,31}$"
MAX_LIST = 50  # install steps per manager, skills, network patterns, settings
MAX_SERVICES = 20  # services, and MCP servers
SETTING_TYPES = ("str", "int", "float", "bool", "list")
TOP_LEVEL_KEYS = (
    "name",
    "version",
    "description",
    "permission",
    "install",
    "skills",
    "network",
    "services",
    "mcp",
    "settings",
    "hooks",
)


def _no_entries() -> Mapping[str, str]:
    return MappingProxyType({})


# Mappings (and a list setting's default) stay out of the hash: specs remain hashable.
def _mapping_field() -> Any:
    return field(default_factory=_no_entries, hash=False)


@dataclass(frozen=True)
class InstallSteps:
    """Validated package names for the derived image (never shell text)."""

    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.apt or self.pip or self.npm)


@dataclass(frozen=True)
class ServiceSpec:
    """A credentialed HTTP API reached through the host; header values are templates whose
    ${VAR} the host fills from its own environment at call time."""

    name: str
    base_url: str
    headers: Mapping[str, str] = _mapping_field()


@dataclass(frozen=True)
class McpServerSpec:
    """A stdio server (`command`, run in the container) or a remote one (`url`, via the
    host, with template `headers`): exactly one of the two is set."""

    name: str
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: Mapping[str, str] = _mapping_field()
    headers: Mapping[str, str] = _mapping_field()


@dataclass(frozen=True)
class SettingSpec:
    """A typed setting; the operator's value goes under extensions.settings.<extension>."""

    name: str
    type: str  # one of SETTING_TYPES
    default: object = field(hash=False)
    description: str = ""


@dataclass(frozen=True)
class ExtensionSpec:
    """A checked extension.yaml (parse_manifest): everything it declares, nothing granted
    yet; what a run gets is decided per caller (holds_permission)."""

    name: str
    version: str
    description: str
    permission: str = "run"
    install: InstallSteps = field(default_factory=InstallSteps)
    # Skill folders (or SKILL.md files), relative; () = every skills/*/SKILL.md.
    skills: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    mcp: tuple[McpServerSpec, ...] = ()
    settings: tuple[SettingSpec, ...] = ()
    hooks: str | None = None


# --------------------------------------------------------------------------- parsing


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(where, f"expected a mapping of keys, got {quoted(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ManifestError(where, f"keys must be text, got {quoted(key)}")
    return value


def _list(value: object, where: str, limit: int = MAX_LIST) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(where, f"expected a list, got {quoted(value)}")
    if len(value) > limit:
        raise ManifestError(where, f"at most {limit} entries, got {len(value)}")
    return value


def _only_keys(data: Mapping[str, Any], where: str, known: Iterable[str]) -> None:
    known = tuple(known)
    for key in data:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise ManifestError(f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")


def _name_key(key: str, where: str) -> str:
    """Service and MCP server names: they become URL path parts and env names."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", key):
        raise ManifestError(
            f"{where}.{key}",
            "name must be lowercase letters, digits, _ and - (up to 32), starting with a letter",
        )
    return key


def _install(value: object) -> InstallSteps:
    data = _mapping(value, "install")
    _only_keys(data, "install", ("apt", "pip", "npm"))
    steps: dict[str, tuple[str, ...]] = {}
    for manager, check in (("apt", check_apt), ("pip", check_pip), ("npm", check_npm)):
        items = _list(data.get(manager) or [], f"install.{manager}")
        steps[manager] = tuple(
            check(item, f"install.{manager}[{i}]") for i, item in enumerate(items)
        )
        for i, item in enumerate(steps[manager]):
            if item in steps[manager][:i]:
                raise ManifestError(f"install.{manager}[{i}]", f"{quoted(item)} is listed twice")
    return InstallSteps(**steps)


def _services(value: object) -> tuple[ServiceSpec, ...]:
    data = _mapping(value, "services")
    if len(data) > MAX_SERVICES:
        raise ManifestError("services", f"at most {MAX_SERVICES} services, got {len(data)}")
    out = []
    for key, body in data.items():
        where = f"services.{_name_key(key, 'services')}"
        body = _mapping(body, where)
        _only_keys(body, where, ("base_url", "headers"))
        if "base_url" not in body:
            raise ManifestError(f"{where}.base_url", "required key is missing")
        # Without a trailing "/": the host joins base_url + "/" + the caller's path.
        url = check_url(body["base_url"], f"{where}.base_url", query=False).rstrip("/")
        headers = check_headers(body.get("headers") or {}, f"{where}.headers")
        out.append(ServiceSpec(key, url, MappingProxyType(headers)))
    return tuple(out)


def _mcp(value: object, service_names: set[str]) -> tuple[McpServerSpec, ...]:
    data = _mapping(value, "mcp")
    if len(data) > MAX_SERVICES:
        raise ManifestError("mcp", f"at most {MAX_SERVICES} servers, got {len(data)}")
    out = []
    for key, body in data.items():
        where = f"mcp.{_name_key(key, 'mcp')}"
        body = _mapping(body, where)
        _only_keys(body, where, ("command", "url", "env", "headers"))
        has_command, has_url = body.get("command") is not None, body.get("url") is not None
        if has_command == has_url:
            raise ManifestError(where, "give exactly one of command (a stdio server) or url")
        if has_command:
            if body.get("headers"):
                raise ManifestError(f"{where}.headers", "headers apply to a url server only")
            command = check_command(body["command"], f"{where}.command")
            env = check_env(body.get("env") or {}, f"{where}.env")
            out.append(McpServerSpec(key, command=command, env=MappingProxyType(env)))
        else:
            if body.get("env"):
                raise ManifestError(f"{where}.env", "env applies to a command server only")
            if key in service_names:
                # Both are granted to a run as (extension, name): one name, one endpoint.
                raise ManifestError(where, f"{quoted(key)} is also the name of a service")
            url = check_url(body["url"], f"{where}.url", query=False)
            headers = check_headers(body.get("headers") or {}, f"{where}.headers")
            out.append(McpServerSpec(key, url=url, headers=MappingProxyType(headers)))
    return tuple(out)


def _settings(value: object) -> tuple[SettingSpec, ...]:
    data = _mapping(value, "settings")
    if len(data) > MAX_LIST:
        raise ManifestError("settings", f"at most {MAX_LIST} settings, got {len(data)}")
    out = []
    for key, body in data.items():
        where = f"settings.{key}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", key):
            # Settings become MERCURY_EXT_<NAME>_<KEY>: no "-" that could collide with "_".
            raise ManifestError(where, "name must be lowercase letters, digits and _ (up to 32)")
        body = _mapping(body, where)
        _only_keys(body, where, ("type", "default", "description"))
        kind = body.get("type")
        if kind not in SETTING_TYPES:
            raise ManifestError(
                f"{where}.type", f"expected one of {', '.join(SETTING_TYPES)}, got {quoted(kind)}"
            )
        if "default" not in body:
            raise ManifestError(f"{where}.default", "required key is missing")
        default = check_setting_value(kind, body["default"], f"{where}.default", ManifestError)
        description = check_text(body.get("description", ""), f"{where}.description", 300)
        out.append(SettingSpec(key, kind, default, description))
    return tuple(out)


def parse_manifest(data: object, *, folder_name: str | None = None) -> ExtensionSpec:
    """The checked ExtensionSpec of a loaded extension.yaml, or a ManifestError naming the
    first wrong field. `folder_name`: the extension's folder, which the name must equal."""
    if not isinstance(data, Mapping):
        raise ManifestError("", f"expected a mapping of fields (name: ...), got {quoted(data)}")
    data = _mapping(data, "")
    _only_keys(data, "", TOP_LEVEL_KEYS)
    for key in ("name", "version", "description"):
        if key not in data:
            raise ManifestError(key, "required key is missing")
    name = data["name"]
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ManifestError(
            "name",
            f"{quoted(name)} is not an extension name "
            "(lowercase letters, digits and -, 2-32, starting with a letter)",
        )
    if folder_name is not None and name != folder_name:
        raise ManifestError(
            "name", f"{quoted(name)} differs from the folder name {quoted(folder_name)}"
        )
    version = data["version"]
    if not isinstance(version, str):
        raise ManifestError("version", f'expected text (quote it: "{version}")')
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}", version):
        raise ManifestError("version", f"{quoted(version)} is not a version like 1.0.0")
    description = check_text(data["description"], "description", 200)
    if not description:
        raise ManifestError("description", "must not be empty")

    permission = data.get("permission", "run")
    if not isinstance(permission, str) or not (
        permission in ALL_PERMISSIONS or is_extension_permission(permission)
    ):
        builtin = ", ".join(sorted(ALL_PERMISSIONS))
        raise ManifestError(
            "permission",
            f"{quoted(permission)} is neither a built-in permission ({builtin}) nor "
            f'"{EXT_PERMISSION_PREFIX}<word>" (lowercase letters, digits, _ and -, up to 32)',
        )
    install = _install(data["install"]) if data.get("install") is not None else InstallSteps()
    skills = tuple(
        check_relpath(item, f"skills[{i}]")
        for i, item in enumerate(_list(data.get("skills") or [], "skills"))
    )
    network = tuple(
        check_host_pattern(item, f"network[{i}]")
        for i, item in enumerate(_list(data.get("network") or [], "network"))
    )
    services = _services(data["services"]) if data.get("services") is not None else ()
    mcp = _mcp(data["mcp"], {s.name for s in services}) if data.get("mcp") is not None else ()
    settings = _settings(data["settings"]) if data.get("settings") is not None else ()
    hooks = data.get("hooks")
    if hooks is not None:
        hooks = check_relpath(hooks, "hooks")
        if not hooks.endswith(".py"):
            raise ManifestError("hooks", f"{quoted(hooks)} is not a Python file (.py)")
    return ExtensionSpec(
        name=name,
        version=version,
        description=description,
        permission=permission,
        install=install,
        skills=skills,
        network=network,
        services=services,
        mcp=mcp,
        settings=settings,
        hooks=hooks,
    )


# --------------------------------------------------------------------------- settings


def settings_values(spec: ExtensionSpec, given: Mapping[str, object]) -> dict[str, object]:
    """Every setting's value: the operator's (`extensions.settings.<name>`) over the
    defaults, type-checked; a key the extension does not declare is refused (a typo must
    not silently leave the default in force)."""
    where = f"extensions.settings.{spec.name}"
    if not isinstance(given, Mapping):
        raise SettingsError(where, f"expected a mapping of settings, got {quoted(given)}")
    declared = {s.name: s for s in spec.settings}
    values: dict[str, object] = {s.name: s.default for s in spec.settings}
    for key, value in given.items():
        setting = declared.get(key) if isinstance(key, str) else None
        if setting is None:
            known = ", ".join(declared) or "none"
            raise SettingsError(f"{where}.{key}", f"unknown setting (known: {known})")
        values[key] = check_setting_value(setting.type, value, f"{where}.{key}", SettingsError)
    return values


def _upper_snake(word: str) -> str:
    return word.replace("-", "_").upper()


def settings_env(spec: ExtensionSpec, values: Mapping[str, object]) -> dict[str, str]:
    """The settings as a run's environment: MERCURY_EXT_<NAME>_<KEY> (upper snake), lists
    as JSON, bools as "true"/"false"."""
    env = {}
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = json.dumps(list(value), ensure_ascii=False)
        else:
            text = str(value)
        env[f"MERCURY_EXT_{_upper_snake(spec.name)}_{_upper_snake(key)}"] = text
    return env


# --------------------------------------------------------------------------- decisions


def holds_permission(spec: ExtensionSpec, permissions: frozenset[str]) -> bool:
    """Whether a caller with `permissions` is granted this extension (admin holds all)."""
    return Permission.ADMIN in permissions or spec.permission in permissions


def host_allowed(patterns: Iterable[str], host: str, port: int) -> bool:
    """Whether `host:port` matches one of the network patterns: "*" any host, "*.x" the
    subdomains of x (not x itself), else the exact host; a pattern without a port allows
    80 and 443 only, ":*" every port. Case-insensitive; a trailing dot on the host is ignored."""
    host = host.lower().rstrip(".")
    if not host:
        return False
    for pattern in patterns:
        want_host, want_port = split_host_pattern(pattern.lower())
        if want_port is None:
            if port not in (80, 443):
                continue
        elif want_port != ANY_PORT and port != want_port:
            continue
        if want_host == "*":
            return True
        if want_host.startswith("*."):
            if host.endswith(want_host[1:]) and len(host) > len(want_host) - 1:
                return True
        elif host == want_host:
            return True
    return False


def install_plan(specs: Iterable[ExtensionSpec]) -> tuple[tuple[str, InstallSteps], ...]:
    """The derived image's steps: each extension with any, sorted by name (stable hash)."""
    return tuple(
        (spec.name, spec.install)
        for spec in sorted(specs, key=lambda s: s.name)
        if not spec.install.empty
    )


def install_hash(base_image_id: str, plan: Iterable[tuple[str, InstallSteps]]) -> str:
    """The derived image's tag: 12 hex of sha256 over the base image id and the plan, so a
    changed base or a changed step makes a new tag and an unchanged set reuses the old."""
    canonical = json.dumps(
        {
            "base": base_image_id,
            "plan": [
                [name, {"apt": list(s.apt), "pip": list(s.pip), "npm": list(s.npm)}]
                for name, s in plan
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


__all__ = [
    "EXT_IMAGE_REPO",
    "EXT_MOUNT_ROOT",
    "EXT_PERMISSION_PREFIX",
    "EXT_VENV_ROOT",
    "ExtensionSpec",
    "InstallSteps",
    "ManifestError",
    "McpServerSpec",
    "ServiceSpec",
    "SettingSpec",
    "SettingsError",
    "holds_permission",
    "host_allowed",
    "install_hash",
    "install_plan",
    "parse_manifest",
    "settings_env",
    "settings_values",
]
