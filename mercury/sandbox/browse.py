"""Reading a space's folder for the operator (the dashboard's file browser), read-only.

The folder is written by a hostile agent: any name in it may be a symlink to a host file
(/etc/passwd, Mercury's .env), a folder may be swapped for a link between two requests,
and names may hold markup or control characters. So, as in outputs.py:

- a path from a URL is split into components and refused if any is empty, `.`, `..`,
  holds a NUL or a slash, or there are too many (`split_path`);
- every component is opened relative to a handle of its parent with O_NOFOLLOW, so no
  symlink is followed anywhere on the path, and the final object is checked on its open
  descriptor (fstat), never by a second lookup of the name;
- a listing shows only regular files and folders (lstat of each entry relative to the
  folder handle; links, sockets, fifos and devices are counted, not shown) and stops after
  a bounded number of entries;
- a download reads from the descriptor that was checked to be a regular file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 32  # path components a browse request may have
MAX_SCAN = 10_000  # directory entries read for one listing at most
MAX_LIST = 500  # entries shown in one listing at most
CHUNK = 256 * 1024


class BrowseError(OSError):
    """The path is not a folder or regular file that may be shown (one line, safe to show)."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_dir: bool
    size: int  # bytes; 0 for folders
    modified: datetime


@dataclass(frozen=True, slots=True)
class Listing:
    """A folder's shown entries (folders first, then by name) and what was left out."""

    parts: tuple[str, ...]
    entries: list[Entry]
    hidden: int  # entries that are neither a regular file nor a folder (links, ...)
    truncated: bool  # more entries than MAX_LIST (or MAX_SCAN) exist


def split_path(path: str) -> tuple[str, ...] | None:
    """`a/b/c.txt` -> ("a", "b", "c.txt"); "" -> (); None for a path that may not be used.

    One leading or trailing slash is tolerated; `..`, `.`, empty components (`a//b`),
    NUL, backslashes and more than MAX_DEPTH components are refused.
    """
    if not isinstance(path, str) or "\x00" in path or "\\" in path or len(path) > 4096:
        return None
    stripped = path.strip("/")
    if not stripped:
        return ()
    parts = tuple(stripped.split("/"))
    if len(parts) > MAX_DEPTH or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


@contextlib.contextmanager
def _open_dir(root: Path, parts: tuple[str, ...]) -> Iterator[int]:
    """A handle of root/parts..., each component opened with O_NOFOLLOW under its parent."""
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(root, _DIR_FLAGS))
            for part in parts:
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        except OSError as exc:
            raise BrowseError("no such folder (or it is a link)") from exc
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def list_folder(root: Path, parts: tuple[str, ...], *, limit: int = MAX_LIST) -> Listing:
    """The regular files and folders in root/parts (see the module docstring). Blocking."""
    entries: list[Entry] = []
    hidden = 0
    scanned = 0
    truncated = False
    with _open_dir(root, parts) as fd, os.scandir(fd) as it:
        for item in it:
            scanned += 1
            if scanned > MAX_SCAN:
                truncated = True
                break
            try:
                st = os.stat(item.name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                entries.append(
                    Entry(
                        name=item.name,
                        is_dir=stat.S_ISDIR(st.st_mode),
                        size=0 if stat.S_ISDIR(st.st_mode) else st.st_size,
                        modified=datetime.fromtimestamp(st.st_mtime, UTC),
                    )
                )
            else:
                hidden += 1
    entries.sort(key=lambda e: (not e.is_dir, e.name.lower(), e.name))
    if len(entries) > limit:
        entries = entries[:limit]
        truncated = True
    return Listing(parts=parts, entries=entries, hidden=hidden, truncated=truncated)


@dataclass
class OpenFile:
    """A regular file of a space, open for reading; close it (or use `with`)."""

    fd: int
    name: str
    size: int

    def read(self, size: int = CHUNK) -> bytes:
        return os.read(self.fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_file(root: Path, parts: tuple[str, ...]) -> OpenFile:
    """root/parts opened for reading with no link followed; BrowseError unless it is a
    regular file. Blocking."""
    if not parts:
        raise BrowseError("not a file")
    with _open_dir(root, parts[:-1]) as parent:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise BrowseError("no such file (or it is a link)") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BrowseError("not a regular file")
        # O_NONBLOCK was only there so that opening a fifo cannot hang; reads block normally.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(fd=fd, name=parts[-1], size=st.st_size)


__all__ = [
    "MAX_LIST",
    "BrowseError",
    "Entry",
    "Listing",
    "OpenFile",
    "list_folder",
    "open_file",
    "split_path",
]
