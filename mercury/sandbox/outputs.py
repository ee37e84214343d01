"""Files a run sends back: copied out of the space's outbox into host-owned storage.

The agent names the files in result.json and controls the outbox, so a listed path may be
a symlink to /etc/shadow, may sit under a folder that is a symlink, or may be swapped for
one between a check and a copy. The rules, in order:

1. the container is stopped before its outputs are read (the runner's job), so nothing
   changes under the copy;
2. each file is opened exactly once, relative to a handle of the space folder, one
   component at a time with O_NOFOLLOW, so no symlink is followed anywhere;
3. the open file must be a regular file within the size left (count and bytes capped, the
   same file listed twice counts once);
4. it is copied, from that descriptor, into `data_dir/outputs/<run_id>/` (owned by Mercury,
   0600). Adapters get that copy, never a path inside the space.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mercury.sandbox.hardening import SPACE_MOUNT, check_id
from mercury.sandbox.spaces import OUTBOX, private_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1024 * 1024
# Deeper outbox paths than this are not worth walking.
MAX_PARTS = 16


@dataclass(frozen=True)
class OutputFile:
    """One file a run sent back: the host-owned copy and the name to show."""

    path: Path
    name: str
    size: int


@dataclass(frozen=True)
class DroppedFile:
    """A listed file that was not sent; `why` is plain enough for the chat user."""

    listed: str
    why: str
    count: int = 1  # how many listed entries this stands for ("5 more")


@dataclass(frozen=True)
class Outputs:
    files: list[OutputFile] = field(default_factory=list)
    dropped: list[DroppedFile] = field(default_factory=list)


def outputs_root(data_dir: Path) -> Path:
    return data_dir / "outputs"


def outbox_parts(item: Any) -> tuple[str, ...] | None:
    """`outbox/a/b.txt` or `/space/outbox/a/b.txt` -> its parts; None when not in the outbox."""
    if not isinstance(item, str) or not item or "\x00" in item or len(item) > 4096:
        return None
    rel = item.removeprefix(SPACE_MOUNT + "/")
    pure = PurePosixPath(rel)
    parts = pure.parts
    if (
        pure.is_absolute()
        or len(parts) < 2
        or len(parts) > MAX_PARTS
        or parts[0] != OUTBOX
        or any(p in (".", "..") for p in parts)
    ):
        return None
    return parts


def display_name(name: str) -> str:
    """A file name safe to show and to hand to a platform (one component, no controls)."""
    cleaned = re.sub(r"[\x00-\x1f\x7f/\\]", "_", name).strip(" .")
    return cleaned[:128] or "file"


def collect_outputs(
    space_dir: Path,
    listed: list[Any],
    data_dir: Path,
    run_id: str,
    *,
    max_files: int,
    max_bytes: int,
) -> Outputs:
    """Copy the listed outbox files of a stopped run into host storage. Blocking."""
    check_id("run id", run_id)
    files: list[OutputFile] = []
    dropped: list[DroppedFile] = []
    if not listed:
        return Outputs()
    dest: Path | None = None
    seen: set[tuple[int, int]] = set()
    names: set[str] = set()
    left = max_bytes
    try:
        root = os.open(space_dir, _DIR_FLAGS)
    except OSError:
        return Outputs(dropped=[DroppedFile(str(x), "the space folder is gone") for x in listed])
    try:
        for index, item in enumerate(listed):
            if len(files) >= max_files:
                rest = len(listed) - index
                dropped.append(
                    DroppedFile(f"{rest} more", f"more than {max_files} files", count=rest)
                )
                break
            parts = outbox_parts(item)
            if parts is None:
                dropped.append(DroppedFile(str(item)[:200], "not a file in /space/outbox"))
                continue
            fd = _open_no_follow(root, parts)
            if fd is None:
                dropped.append(DroppedFile(item, "missing, or not a regular file"))
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    dropped.append(DroppedFile(item, "not a regular file"))
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue  # listed twice: sent once
                if st.st_size > left:
                    dropped.append(DroppedFile(item, "too large to send"))
                    continue
                if dest is None:
                    dest = private_dir(outputs_root(data_dir)) / run_id
                    dest.mkdir(mode=0o700)
                name = _unique(display_name(parts[-1]), names)
                target = dest / f"{len(files):02d}-{name}"
                size = _copy(fd, target, left)
                if size is None:
                    dropped.append(DroppedFile(item, "too large to send"))
                    continue
                seen.add((st.st_dev, st.st_ino))
                left -= size
                files.append(OutputFile(target, name, size))
            finally:
                os.close(fd)
    finally:
        os.close(root)
    return Outputs(files, dropped)


def remove_outputs(data_dir: Path, run_id: str) -> None:
    """Delete a run's copies once they were delivered (or are no longer wanted)."""
    check_id("run id", run_id)
    shutil.rmtree(outputs_root(data_dir) / run_id, ignore_errors=True)


def _open_no_follow(root: int, parts: tuple[str, ...]) -> int | None:
    """Open root/parts[0]/.../parts[-1] with no symlink followed at any component."""
    fds: list[int] = []
    try:
        current = root
        for part in parts[:-1]:
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
    except OSError:
        return None  # ELOOP (a link), ENOTDIR, ENOENT, EACCES: not sent
    finally:
        for fd in fds:
            os.close(fd)


def _copy(src: int, target: Path, limit: int) -> int | None:
    """Copy from an open descriptor into a new private file; None if it passes `limit`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(target, flags, 0o600)
    size = 0
    try:
        while chunk := os.read(src, _CHUNK):
            size += len(chunk)
            if size > limit:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
    finally:
        os.close(out)
    if size > limit:
        with contextlib.suppress(OSError):
            target.unlink()
        return None
    return size


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        stem, dot, ext = name.rpartition(".")
        candidate = f"{stem}-{i}.{ext}" if dot and stem else f"{name}-{i}"
        i += 1
    taken.add(candidate)
    return candidate
