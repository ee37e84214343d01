"""Installing an extension folder into `extensions.dir` and removing it (`mercury ext`).

The copy is checked before and after: the source must be a valid extension, nothing in it
may be a symlink leading out of it (the copy must not pick up files from elsewhere on the
host), symlinked folders and special files (fifos, sockets, devices) are refused, and the
copy lands under a temporary name first so a failed copy never leaves half an extension.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from mercury.core.extension_fields import quoted
from mercury.core.extension_spec import NAME_PATTERN
from mercury.extensions.loader import LoadedExtension, ManifestError, load_extension

# Left behind by the copy: build leftovers and version control are not the extension.
IGNORED = ("__pycache__", "*.pyc", ".git")


class InstallError(ValueError):
    """What `add` / `remove` cannot do, as one line."""


def _inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def check_tree(root: Path) -> None:
    """Refuse what must not be copied: symlinks out of `root` (or to a folder), special
    files. `root` is resolved."""
    ignore = shutil.ignore_patterns(*IGNORED)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        skipped = ignore(dirpath, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in skipped]
        for name in dirnames + [f for f in filenames if f not in skipped]:
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                if not _inside(root, path):
                    raise InstallError(f"{relative}: a symlink leading outside the folder")
                if path.is_dir():
                    raise InstallError(f"{relative}: a symlink to a folder (copy it instead)")
            elif not (path.is_file() or path.is_dir()):
                raise InstallError(f"{relative}: not a regular file or folder")


def extension_name(name: str) -> str:
    """`name` when it can be an installed extension's folder name (no path tricks)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise InstallError(
            f"{quoted(name)} is not an extension name "
            "(lowercase letters, digits and -, 2-32, starting with a letter)"
        )
    return name


def copy_extension(
    source: Path, extensions_dir: Path, *, force: bool = False
) -> tuple[LoadedExtension, bool]:
    """Copy the extension folder `source` to `extensions_dir`/<name>; the installed
    extension and whether an older copy was replaced (only with `force`). ManifestError
    when the source is not a valid extension, InstallError for the rest."""
    loaded = load_extension(source)
    name = loaded.spec.name
    check_tree(loaded.folder)
    target = extensions_dir / name
    if target.exists() or target.is_symlink():
        if target.resolve() == loaded.folder:
            raise InstallError(f'"{name}" in {extensions_dir} is this folder itself')
        if not force:
            raise InstallError(f'"{name}" is already in {extensions_dir} (--force replaces it)')
    extensions_dir.mkdir(parents=True, exist_ok=True)
    # A hidden sibling: `list` skips it, and the final rename stays on one file system.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=extensions_dir))
    try:
        copy = staging / name
        shutil.copytree(
            loaded.folder, copy, symlinks=False, ignore=shutil.ignore_patterns(*IGNORED)
        )
        installed = load_extension(copy)  # what was copied is what was checked
        replaced = target.exists() or target.is_symlink()
        if replaced:
            os.replace(target, staging / "replaced")
        os.replace(copy, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    folder = target.resolve()
    skill_dirs = tuple(folder / d.relative_to(installed.folder) for d in installed.skill_dirs)
    return LoadedExtension(installed.spec, folder, skill_dirs, installed.settings), replaced


def remove_extension(extensions_dir: Path, name: str) -> Path:
    """Delete the installed extension `name` (a symlinked folder: only the link)."""
    target = extensions_dir / extension_name(name)
    if target.is_symlink():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        raise InstallError(f'"{name}" is not in {extensions_dir}')
    return target


def installed_folders(extensions_dir: Path) -> list[Path]:
    """The folders in `extensions_dir` that may be extensions (hidden ones are not)."""
    if not extensions_dir.is_dir():
        return []
    return sorted(p for p in extensions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


__all__ = [
    "InstallError",
    "ManifestError",
    "check_tree",
    "copy_extension",
    "extension_name",
    "installed_folders",
    "remove_extension",
]
