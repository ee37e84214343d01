"""What one run gets of the enabled extensions: exactly those its caller may use.

The executor asks `ExtensionSet.for_run(permissions)` before a run starts. An extension is
granted when the caller's permissions in the space hold its `permission`
(core/extension_spec.holds_permission); everything of the others is absent from the run,
not merely left out of the prompt:

- its folder (skills, bin/, MCP server files) is not mounted, and its Python/npm packages
  in the derived image are masked by an empty tmpfs (the runner, sandbox/hardening.py);
- its hosts and services are not in the run's token (api/tokens.RunGrants), so the egress
  proxy and the service proxy refuse them even to a client that calls them directly;
- it is not in input.json, so the agent starts none of its MCP servers.

Pure over loaded data: the I/O (reading folders) is loader.py's, the enforcement the host
API's and the runner's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mercury.api.tokens import RunGrants, ServiceGrant
from mercury.core.extension_spec import (
    EXT_MOUNT_ROOT,
    EXT_VENV_ROOT,
    ExtensionSpec,
    holds_permission,
    install_plan,
)
from mercury.extensions.loader import LoadedExtension
from mercury.sandbox.contract import ExtensionEntry, McpServerEntry


def mount_point(name: str) -> str:
    """Where an extension's folder is mounted (read-only) in a granted run's container."""
    return f"{EXT_MOUNT_ROOT}/{name}"


def venv_path(name: str) -> str:
    """An extension's own Python environment in the derived image."""
    return f"{EXT_VENV_ROOT}/{name}"


def has_packages(spec: ExtensionSpec) -> bool:
    """Whether the derived image holds packages of this extension's own (pip or npm)."""
    return bool(spec.install.pip or spec.install.npm)


def service_path(extension: str, service: str) -> str:
    """The host API path of a service, as the container calls it through its relay."""
    return f"/v1/ext/{extension}/svc/{service}"


def mcp_path(extension: str, server: str) -> str:
    """The host API path of a remote MCP server, reached through the host."""
    return f"/v1/ext/{extension}/mcp/{server}"


@dataclass(frozen=True)
class RunExtensions:
    """One run's share: what goes into its input.json, its container and its token."""

    names: tuple[str, ...] = ()
    entries: tuple[ExtensionEntry, ...] = ()
    skills: tuple[str, ...] = ()  # container paths of the granted skills
    mounts: Mapping[Path, str] = field(default_factory=dict)  # folder -> mount point
    grants: RunGrants = field(default_factory=RunGrants)

    @property
    def egress(self) -> bool:
        """Whether the run may reach any host (the agent then starts its egress relay)."""
        return bool(self.grants.hosts)


NONE = RunExtensions()


def _entry(ext: LoadedExtension) -> ExtensionEntry:
    spec = ext.spec
    servers = tuple(
        McpServerEntry(
            name=server.name,
            command=server.command,
            env=dict(server.env),
            url=mcp_path(spec.name, server.name) if server.url else None,
        )
        for server in spec.mcp
    )
    return ExtensionEntry(
        name=spec.name,
        dir=mount_point(spec.name),
        venv=venv_path(spec.name) if has_packages(spec) else None,
        env=ext.env,
        services={s.name: service_path(spec.name, s.name) for s in spec.services},
        mcp=servers,
    )


def _skill_paths(ext: LoadedExtension) -> list[str]:
    root = PurePosixPath(mount_point(ext.name))
    return [str(root / d.relative_to(ext.folder).as_posix()) for d in ext.skill_dirs]


def _service_grants(ext: LoadedExtension) -> list[ServiceGrant]:
    spec = ext.spec
    grants = [ServiceGrant(spec.name, s.name, s.base_url, dict(s.headers)) for s in spec.services]
    grants += [ServiceGrant(spec.name, m.name, m.url, dict(m.headers)) for m in spec.mcp if m.url]
    return grants


class ExtensionSet:
    """The enabled extensions of this Mercury, as loaded and checked at start."""

    def __init__(self, extensions: Iterable[LoadedExtension] = ()) -> None:
        self.extensions = {ext.name: ext for ext in sorted(extensions, key=lambda e: e.name)}

    def __bool__(self) -> bool:
        return bool(self.extensions)

    def install_plan(self) -> tuple[tuple[str, object], ...]:
        """The derived image's install steps (sandbox/ext_image.py), by extension."""
        return install_plan(ext.spec for ext in self.extensions.values())

    def packaged(self) -> dict[str, str]:
        """Extension name -> its packages' folder in the derived image: the runner masks
        the folders of extensions a run is not granted."""
        return {
            name: venv_path(name) for name, ext in self.extensions.items() if has_packages(ext.spec)
        }

    def granted(self, permissions: frozenset[str]) -> list[LoadedExtension]:
        return [e for e in self.extensions.values() if holds_permission(e.spec, permissions)]

    def for_run(self, permissions: frozenset[str]) -> RunExtensions:
        """What a caller with `permissions` gets; NONE when nothing is granted."""
        granted = self.granted(permissions)
        if not granted:
            return NONE
        hosts: list[str] = []
        services: list[ServiceGrant] = []
        skills: list[str] = []
        for ext in granted:
            hosts += [h for h in ext.spec.network if h not in hosts]
            services += _service_grants(ext)
            skills += _skill_paths(ext)
        return RunExtensions(
            names=tuple(e.name for e in granted),
            entries=tuple(_entry(e) for e in granted),
            skills=tuple(skills),
            mounts={e.folder: mount_point(e.name) for e in granted},
            grants=RunGrants(hosts=tuple(hosts), services=tuple(services)),
        )
