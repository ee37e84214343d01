"""`mercury ext list|add|remove|validate|enable|disable`: the operator's extensions.

An extension is a folder with an extension.yaml (docs/extensions.md); `add` copies one into
`extensions.dir`, `enable`/`disable` change `extensions.enabled` in the config file (only
that list: its comments and the rest stay as written). A running Mercury reads extensions
at its start, so a change applies from its next start.

Failures are one line on stderr naming what is wrong, for a manifest the field of
extension.yaml: exit 1, or 2 for a config that does not load (common.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mercury.cli.common import config_option, fail, load_or_exit, out

if TYPE_CHECKING:  # imported where used: `mercury --help` stays fast
    from mercury.config import LoadedConfig
    from mercury.extensions.loader import LoadedExtension

NEXT_START = "A running Mercury picks it up at its next start."


def _say(text: str) -> None:
    """One answer line on stdout, printed as written (no markup: "[1]" stays "[1]")."""
    out.print(text, markup=False, soft_wrap=True)


@click.group()
def ext() -> None:
    """Extensions: skills, tools, MCP servers and API access (docs/extensions.md)."""


# --------------------------------------------------------------------------- list


def _entry(loaded: LoadedExtension, enabled: bool, given: Any) -> dict[str, Any]:
    from mercury.core.extension_spec import SettingsError, settings_values

    spec = loaded.spec
    try:
        settings: Any = settings_values(spec, given if given is not None else {})
        settings_error = None
    except SettingsError as exc:
        settings, settings_error = None, str(exc)
    return {
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "enabled": enabled,
        "permission": spec.permission,
        "network": list(spec.network),
        "services": {s.name: s.base_url for s in spec.services},
        "mcp": {m.name: ("command" if m.command else "url") for m in spec.mcp},
        "install": {
            "apt": list(spec.install.apt),
            "pip": list(spec.install.pip),
            "npm": list(spec.install.npm),
        },
        "skills": [d.relative_to(loaded.folder).as_posix() for d in loaded.skill_dirs],
        "settings": settings,
        "settings_error": settings_error,
        "hooks": spec.hooks,
        "error": None,
    }


def _print_entry(entry: dict[str, Any]) -> None:
    state = "enabled" if entry["enabled"] else "disabled"
    if entry["error"] is not None:
        _say(f"{entry['name']}  {state}  invalid: {entry['error']}")
        return
    _say(f"{entry['name']} {entry['version']}  {state}  permission: {entry['permission']}")
    _say(f"  {entry['description']}")
    details = [
        ("network", ", ".join(entry["network"])),
        ("services", ", ".join(f"{k} ({v})" for k, v in entry["services"].items())),
        ("mcp", ", ".join(f"{k} ({v})" for k, v in entry["mcp"].items())),
        ("install", "; ".join(f"{k} {', '.join(v)}" for k, v in entry["install"].items() if v)),
        ("skills", ", ".join(entry["skills"])),
        ("hooks", entry["hooks"] or ""),
    ]
    if entry["settings_error"]:
        details.append(("settings", entry["settings_error"]))
    elif entry["settings"]:
        details.append(
            ("settings", ", ".join(f"{k}={json.dumps(v)}" for k, v in entry["settings"].items()))
        )
    for label, text in details:
        if text:
            _say(f"  {label}: {text}")


@ext.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the extensions as JSON.")
@config_option
def ext_list(as_json: bool) -> None:
    """Each extension in extensions.dir: version, enabled or not, what it may reach and
    install; an invalid one with its error."""
    from mercury.extensions.install import installed_folders
    from mercury.extensions.loader import ManifestError, load_extension

    section = load_or_exit().config.extensions
    enabled = set(section.enabled)
    entries = []
    for folder in installed_folders(section.dir):
        name = folder.name
        try:
            loaded = load_extension(folder)
        except ManifestError as exc:
            entries.append({"name": name, "enabled": name in enabled, "error": str(exc)})
            continue
        entries.append(_entry(loaded, name in enabled, section.settings.get(name)))
    found = {e["name"] for e in entries}
    for name in section.enabled:
        if name not in found:
            error = f"not found in {section.dir} (`mercury ext add PATH` installs it)"
            entries.append({"name": name, "enabled": True, "error": error})
    if as_json:
        click.echo(json.dumps({"dir": str(section.dir), "extensions": entries}, indent=2))
        return
    if not entries:
        _say(f"No extensions in {section.dir} (`mercury ext add PATH` installs one).")
        return
    _say(f"Extensions in {section.dir}:")
    for entry in entries:
        _print_entry(entry)


# --------------------------------------------------------------------------- validate, add, remove


@ext.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
def ext_validate(path: Path) -> None:
    """Check the extension folder PATH: "ok: NAME VERSION" or what is wrong (exit 1)."""
    from mercury.extensions.loader import ManifestError, load_extension

    try:
        loaded = load_extension(path)
    except ManifestError as exc:
        fail(str(exc))
    _say(f"ok: {loaded.spec.name} {loaded.spec.version}")


@ext.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an installed extension of that name.")
@config_option
def ext_add(path: Path, force: bool) -> None:
    """Check the extension folder PATH and copy it into extensions.dir."""
    from mercury.extensions.install import InstallError, copy_extension
    from mercury.extensions.loader import ManifestError

    section = load_or_exit().config.extensions
    try:
        loaded, replaced = copy_extension(path, section.dir, force=force)
    except ManifestError as exc:
        fail(str(exc))
    except (InstallError, OSError) as exc:
        fail(f"cannot add {path}: {exc}")
    spec = loaded.spec
    then = (
        "It is enabled; a running Mercury picks it up at its next start."
        if spec.name in section.enabled
        else f"Enable it with `mercury ext enable {spec.name}`."
    )
    done = (
        f"Replaced {spec.name} in {section.dir} with {spec.version}."
        if replaced
        else f"Added {spec.name} {spec.version} to {section.dir}."
    )
    _say(f"{done} {then}")


@ext.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also disable it when it is enabled.")
@config_option
def ext_remove(name: str, force: bool) -> None:
    """Delete the installed extension NAME (an enabled one only with --force)."""
    from mercury.extensions.install import InstallError, extension_name, remove_extension

    loaded_config = load_or_exit()
    section = loaded_config.config.extensions
    try:
        extension_name(name)
    except InstallError as exc:
        fail(str(exc))
    folder = section.dir / name
    if not (folder.is_dir() or folder.is_symlink()):
        fail(f'"{name}" is not in {section.dir}')
    disabled = ""
    if name in section.enabled:
        if not force:
            fail(f'"{name}" is enabled: `mercury ext disable {name}` first (or --force)')
        path = _set_enabled(loaded_config, [n for n in section.enabled if n != name])
        disabled = f" Disabled it in {path}; a running Mercury drops it at its next start."
    try:
        remove_extension(section.dir, name)
    except (InstallError, OSError) as exc:
        fail(f"cannot remove {name}: {exc}")
    _say(f"Removed {name} from {section.dir}.{disabled}")


# --------------------------------------------------------------------------- enable, disable


def _set_enabled(loaded: LoadedConfig, names: list[str]) -> Path:
    """Write `extensions.enabled` = `names` into the config file; its path."""
    from mercury.extensions.config_file import ConfigEditError, write_enabled

    source = loaded.sources.get("extensions.enabled")
    if source is not None:
        fail(f"extensions.enabled is set by {source}: change it there")
    if loaded.path is None:
        fail("no config file to change: run `mercury init` first (or pass --config)")
    try:
        write_enabled(loaded.path, names)
    except ConfigEditError as exc:
        fail(f"{loaded.path}: {exc}")
    except OSError as exc:
        fail(f"{loaded.path}: cannot write the config file ({exc.strerror})")
    return loaded.path


@ext.command("enable")
@click.argument("name")
@config_option
def ext_enable(name: str) -> None:
    """Check the installed extension NAME and add it to extensions.enabled."""
    from mercury.core.extension_spec import SettingsError, settings_values
    from mercury.core.permissions import ALL_PERMISSIONS
    from mercury.extensions.install import InstallError, extension_name
    from mercury.extensions.loader import ManifestError, load_extension

    loaded_config = load_or_exit()
    section = loaded_config.config.extensions
    try:
        extension_name(name)
    except InstallError as exc:
        fail(str(exc))
    folder = section.dir / name
    if not folder.is_dir():
        fail(f'"{name}" is not in {section.dir} (`mercury ext add PATH` installs it)')
    try:
        spec = load_extension(folder).spec
        settings_values(spec, section.settings.get(name) or {})
    except ManifestError as exc:
        fail(f"{name}: {exc}")
    except SettingsError as exc:
        fail(str(exc))
    if name in section.enabled:
        _say(f"{name} is already enabled.")
        return
    path = _set_enabled(loaded_config, [*section.enabled, name])
    who = (
        ""
        if spec.permission in ALL_PERMISSIONS
        else f" Callers need the permission {spec.permission}: grant it through a custom role."
    )
    _say(f"Enabled {name} {spec.version} in {path}.{who} {NEXT_START}")


@ext.command("disable")
@click.argument("name")
@config_option
def ext_disable(name: str) -> None:
    """Take NAME out of extensions.enabled (its folder stays installed)."""
    loaded_config = load_or_exit()
    section = loaded_config.config.extensions
    if name not in section.enabled:
        _say(f"{name} is not enabled.")
        return
    path = _set_enabled(loaded_config, [n for n in section.enabled if n != name])
    _say(f"Disabled {name} in {path}. A running Mercury drops it at its next start.")


__all__ = ["ext"]
