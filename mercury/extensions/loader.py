"""Reading extensions from disk: a folder's extension.yaml, its skills and hooks file, and
the set the config enables (with the operator's settings), checked before anything runs.

The decisions are core/extension_spec.py's; this adds the file system: the folder is what a
run's container gets bind-mounted, so every file the host itself reads from it (SKILL.md,
hooks.py) must resolve inside it, a symlink out of it is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from mercury.core.extension_fields import quoted
from mercury.core.extension_spec import (
    NAME_PATTERN,
    ExtensionSpec,
    ManifestError,
    SettingsError,
    parse_manifest,
    settings_env,
    settings_values,
)

if TYPE_CHECKING:
    from mercury.config.sections import Config

MANIFEST = "extension.yaml"
MAX_MANIFEST_BYTES = 256 * 1024


class ExtensionConfigError(ValueError):
    """The config's extensions section is wrong: one line naming `extensions.enabled` or
    `extensions.settings.<name>.<key>` (and the extension's own field when it is broken)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class LoadedExtension:
    """A checked extension: its spec, its folder (resolved), the skill folders inside it,
    and its settings (defaults, or the operator's values when loaded by `load_enabled`)."""

    spec: ExtensionSpec
    folder: Path
    skill_dirs: tuple[Path, ...] = ()
    settings: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def env(self) -> dict[str, str]:
        """The settings as the run's environment (MERCURY_EXT_<NAME>_<KEY>)."""
        return settings_env(self.spec, self.settings)


def _inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink followed, is `root` or below it."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def read_manifest(folder: Path) -> object:
    """The YAML data of `folder`/extension.yaml (ManifestError when absent or not YAML)."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ManifestError("", f"not found: {folder} is not a folder")
    if not path.is_file():
        raise ManifestError("", f"not found in {folder}")
    if not _inside(folder.resolve(), path):
        raise ManifestError("", "is a symlink leading outside the extension folder")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError("", f"cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError("", "is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ManifestError("", f"not valid YAML{where}: {problem}") from None


def _skill_dir(root: Path, relative: str, where: str) -> Path:
    """The folder holding SKILL.md that a `skills` entry names (a folder or its SKILL.md)."""
    target = root / relative
    if not _inside(root, target):
        raise ManifestError(where, f'"{relative}" leads outside the extension folder')
    if target.is_file() and target.name == "SKILL.md":
        return target.resolve().parent
    if not target.is_dir():
        raise ManifestError(where, f'"{relative}" not found in the extension folder')
    skill = target / "SKILL.md"
    if not skill.is_file():
        raise ManifestError(where, f'"{relative}" holds no SKILL.md')
    if not _inside(root, skill):
        raise ManifestError(where, f'"{relative}/SKILL.md" leads outside the extension folder')
    return target.resolve()


def _skill_dirs(root: Path, spec: ExtensionSpec) -> tuple[Path, ...]:
    if spec.skills:
        found = [_skill_dir(root, rel, f"skills[{i}]") for i, rel in enumerate(spec.skills)]
    else:  # the default: every skills/*/SKILL.md
        found = []
        for skill in sorted((root / "skills").glob("*/SKILL.md")):
            relative = skill.relative_to(root).as_posix()
            if not _inside(root, skill):
                raise ManifestError("skills", f'"{relative}" leads outside the extension folder')
            found.append(skill.resolve().parent)
    return tuple(dict.fromkeys(found))  # each once, in order


def load_extension(folder: Path) -> LoadedExtension:
    """The checked extension in `folder` (its name must be the folder's name); a
    ManifestError naming the field for every problem, a missing skill or hooks file too."""
    folder = Path(os.path.normpath(Path(folder).absolute()))
    data = read_manifest(folder)
    spec = parse_manifest(data, folder_name=folder.name)
    root = folder.resolve()
    skill_dirs = _skill_dirs(root, spec)
    if spec.hooks is not None:
        hooks = root / spec.hooks
        if not hooks.is_file():
            raise ManifestError("hooks", f'"{spec.hooks}" not found in the extension folder')
        if not _inside(root, hooks):
            raise ManifestError("hooks", f'"{spec.hooks}" leads outside the extension folder')
    defaults = {s.name: s.default for s in spec.settings}
    return LoadedExtension(spec, root, skill_dirs, MappingProxyType(defaults))


def load_enabled(config: Config) -> dict[str, LoadedExtension]:
    """Every extension `extensions.enabled` names, from `extensions.dir`, with its settings
    (`extensions.settings.<name>`); ExtensionConfigError for the first problem. Settings
    for an extension that is not installed are refused: a typo must not go unnoticed."""
    section = config.extensions
    loaded: dict[str, LoadedExtension] = {}
    for name in section.enabled:
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise ExtensionConfigError(
                "extensions.enabled", f"{quoted(name)} is not an extension name"
            )
        if name in loaded:
            raise ExtensionConfigError("extensions.enabled", f'"{name}" is listed twice')
        folder = section.dir / name
        if not folder.is_dir():
            raise ExtensionConfigError(
                "extensions.enabled",
                f'"{name}" is not in {section.dir} (`mercury ext add PATH` installs it)',
            )
        try:
            extension = load_extension(folder)
        except ManifestError as exc:
            raise ExtensionConfigError("extensions.enabled", f"{name}: {exc}") from None
        given: Any = section.settings.get(name, {})
        try:
            values = settings_values(extension.spec, given if given is not None else {})
        except SettingsError as exc:
            raise ExtensionConfigError(exc.field, exc.message) from None
        loaded[name] = LoadedExtension(
            extension.spec, extension.folder, extension.skill_dirs, MappingProxyType(values)
        )
    for name in section.settings:
        # A disabled extension keeps its settings for when it is enabled again (`mercury ext
        # enable` checks them then); a name that is not installed at all is a typo.
        if name in loaded:
            continue
        if not re.fullmatch(NAME_PATTERN, name) or not (section.dir / name).is_dir():
            raise ExtensionConfigError(
                f"extensions.settings.{name}",
                f"no extension {quoted(name)} is installed in {section.dir}",
            )
    _check_env_names(loaded)
    return loaded


def _check_env_names(loaded: Mapping[str, LoadedExtension]) -> None:
    """Two extensions' settings must not share a variable ("web" + "reader_max" and
    "web-reader" + "max" both make MERCURY_EXT_WEB_READER_MAX)."""
    owner: dict[str, str] = {}
    for name, extension in loaded.items():
        for setting in extension.spec.settings:
            var = next(iter(settings_env(extension.spec, {setting.name: setting.default})))
            if var in owner:
                raise ExtensionConfigError(
                    f"extensions.settings.{name}.{setting.name}",
                    f"its variable {var} is also a setting of {owner[var]}",
                )
            owner[var] = name


__all__ = [
    "MANIFEST",
    "ExtensionConfigError",
    "LoadedExtension",
    "load_enabled",
    "load_extension",
    "read_manifest",
]
