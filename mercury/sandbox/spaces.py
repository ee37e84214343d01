"""Space folders on the host: the one owner of `data_dir/spaces/<id>` and what goes in it.

A space's folder is mounted at /space in every run of that space, and the agent is hostile:
between runs (and during one, for an upload that arrives while it works) the folder may hold
symlinks to host files where the host expects folders or files. So every host-side write
into a space is made relative to a directory handle, never follows a symlink at any
component, creates files exclusively, and sets ownership on the open file, not by path.

`SpaceStore.ensure` is the one place that makes the folder, whole, for the container's uid
(`container.user`): `inbox/` (the users' uploads, saved through `save_inbox_file`),
`outbox/` (files to send back) and `MEMORY.md`. Before every run it hands these back to
that uid, so a space made for another one (an older Mercury's fixed uid 1000, or a
`container.user` changed since) stays writable by the agent. A space has a size limit
(`disk.space_size`) enforced while the agent writes, in one of two ways (`disk.space_limit`):

- image: the folder is an ext4 filesystem image, loop-mounted (space_images.py); the
  kernel refuses writes past the size. Needs root, loop devices, mkfs.ext4 and mount.
- watch: a plain folder, measured while a run goes (`measure`); the runner stops the run
  when the folder is over the limit. Used where images cannot be mounted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mercury.config import Config
from mercury.logging import get_logger
from mercury.sandbox.hardening import check_id
from mercury.sandbox.identity import ContainerIdentity
from mercury.sandbox.space_images import image_support, images_root, mount_image

log = get_logger("mercury.sandbox.spaces")

INBOX = "inbox"
OUTBOX = "outbox"
MEMORY = "MEMORY.md"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Walking a huge space costs time; past this many entries the count is "at least".
MAX_MEASURE_ENTRIES = 1_000_000
# Folders open at once while measuring (one per level of nesting).
MAX_MEASURE_DEPTH = 128
# Inbox names that exist already get a numbered twin; past this many, the upload fails.
_MAX_NAME_TRIES = 100

SpaceLimit = Literal["image", "watch", "none"]


class SpaceError(OSError):
    """A space folder could not be prepared or written (one line for the operator)."""


@dataclass(frozen=True)
class SpaceInfo:
    path: Path
    limit: SpaceLimit  # how its size limit is enforced


def spaces_root(data_dir: Path) -> Path:
    return data_dir / "spaces"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still put on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as a folder only Mercury's user can enter (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise SpaceError(f"{path} is not a folder")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


class SpaceStore:
    """Creates, mounts, measures and writes into space folders for the container's uid."""

    def __init__(self, config: Config, identity: ContainerIdentity) -> None:
        self.config = config
        self.identity = identity
        self.data_dir = config.data_dir
        self.size = config.disk.space_size
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._mounted: set[str] = set()  # spaces this store mounted (unmounted at close)
        self._limits: dict[str, SpaceLimit] = {}
        self._mode = self._pick_mode()

    # ------------------------------------------------------------------ public

    @property
    def mode(self) -> SpaceLimit:
        """How new spaces are limited: image, watch, or none (no size limit configured)."""
        return self._mode

    def path(self, space_id: str) -> Path:
        check_id("space id", space_id)
        return spaces_root(self.data_dir) / space_id

    def limit_of(self, space_id: str) -> SpaceLimit:
        """How this space's size is limited (after `ensure`)."""
        return self._limits.get(space_id, self._mode)

    def ensure(self, space_id: str, profile: str = "general") -> SpaceInfo:
        """The space's folder, created (or mounted) on first use, ready for a run.

        Blocking (mkfs, mount, copies): call it off the event loop.
        """
        path = self.path(space_id)
        with self._lock(space_id):
            private_dir(spaces_root(self.data_dir))
            # A space whose image failed once stays watched until the next start.
            limit = self._limits.get(space_id, self._mode)
            new = False
            if limit == "image":
                try:
                    new = self._ensure_image(space_id, path)
                except (OSError, subprocess.SubprocessError) as exc:
                    if self.config.disk.space_limit == "image":
                        raise SpaceError(f"space {space_id}: {exc}") from exc
                    log.warning(
                        "space image unavailable; watching its size instead",
                        space_id=space_id,
                        error=str(exc),
                    )
                    limit = "watch"
            if limit != "image":
                new = self._ensure_plain(path)
            self._populate(path, space_id, profile, new=new)
            self._limits[space_id] = limit
        return SpaceInfo(path, limit)

    def save_inbox_file(self, space_id: str, name: str, data: bytes) -> str:
        """Write an upload into the space's inbox; returns its path relative to /space.

        No symlink is followed (a planted `inbox` link is removed, a planted file link is
        never written through), the file is created exclusively (an existing name gets a
        numbered twin) and handed to the container's uid on the open descriptor. Call
        `ensure` first (once per message is enough).
        """
        if not name or "/" in name or name in (".", "..") or "\x00" in name:
            raise ValueError(f"not a plain file name: {name!r}")
        root = _open_dir(self.path(space_id))
        try:
            inbox = self._open_subdir(root, INBOX)
            try:
                final = self._create_file(inbox, name, data)
            finally:
                os.close(inbox)
        finally:
            os.close(root)
        return f"{INBOX}/{final}"

    def measure(self, space_id: str, stop_after: int | None = None) -> int:
        """Bytes the space's files take on disk (allocated blocks). Blocking: off the loop.

        Walked by descriptor, relative to each folder's handle with O_NOFOLLOW, so a
        folder the agent swaps for a symlink mid-walk is never followed out of the space.
        `stop_after`: return as soon as the count passes it (the answer is then "over").
        Folders deeper than MAX_MEASURE_DEPTH are not counted (the free-disk floor still
        holds for them).
        """
        try:
            root = _open_dir(self.path(space_id))
        except SpaceError:
            return 0
        subdirs, total, seen = _scan(root)
        # Each frame: a folder's handle and the names of its subfolders still to visit.
        frames: list[tuple[int, list[str]]] = [(root, subdirs)]
        try:
            while frames:
                if seen >= MAX_MEASURE_ENTRIES or (stop_after is not None and total > stop_after):
                    break
                fd, pending = frames[-1]
                if not pending:
                    os.close(fd)
                    frames.pop()
                    continue
                name = pending.pop()
                if len(frames) >= MAX_MEASURE_DEPTH:
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # gone, or swapped for a link: not followed
                subdirs, blocks, entries = _scan(child)
                frames.append((child, subdirs))
                total += blocks
                seen += entries
        finally:
            for fd, _ in frames:
                os.close(fd)
        return total

    def close(self) -> None:
        """Unmount the images this store mounted (call once no run uses them)."""
        for space_id in sorted(self._mounted):
            path = self.path(space_id)
            done = subprocess.run(
                ["umount", str(path)], capture_output=True, text=True, timeout=30, check=False
            )
            if done.returncode != 0:
                # Still in use (a container that outlived us?): detach it when it lets go.
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        self._mounted.clear()

    # ------------------------------------------------------------------ modes

    def _pick_mode(self) -> SpaceLimit:
        wanted = self.config.disk.space_limit
        if self.size is None:
            return "none"
        if wanted == "watch":
            return "watch"
        why_not = image_support()
        if why_not is None:
            return "image"
        if wanted == "image":
            raise SpaceError(f"disk.space_limit is image, but {why_not}")
        log.info("space sizes are watched, not mounted as images", why=why_not)
        return "watch"

    def _lock(self, space_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(space_id, threading.Lock())

    # ------------------------------------------------------------------ plain folders

    def _ensure_plain(self, path: Path) -> bool:
        """The plain folder; True when it was made now."""
        new = True
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            new = False
        fd = _open_dir(path)
        try:
            self._give(fd, 0o750)
        finally:
            os.close(fd)
        return new

    def _populate(self, path: Path, space_id: str, profile: str, *, new: bool) -> None:
        """inbox/ and outbox/ whenever missing; MEMORY.md in a new space. All the agent's.

        Existing ones are handed (back) to the container's uid too: made for another uid,
        the agent could not write its outbox or its memory.
        """
        root = _open_dir(path)
        try:
            self._give(root, 0o750)  # an image's root comes from mkfs as 0755
            for sub in (INBOX, OUTBOX):
                fd = self._open_subdir(root, sub)
                try:
                    self._give(fd, 0o750)
                finally:
                    os.close(fd)
            if not new:
                self._give_memory(root)
                return
            text = (
                f"# Memory of space {space_id}\n\nProfile: {profile}. The agent keeps notes here.\n"
            )
            with contextlib.suppress(FileExistsError):
                self._create_file(root, MEMORY, text.encode(), exclusive_name=True)
        finally:
            os.close(root)

    def _give_memory(self, root: int) -> None:
        """Hand an existing MEMORY.md to the container's uid; its mode is the agent's.

        Only a regular file with one link: a link the agent planted is not followed, and
        a hard link's other names are not the space's to give away.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(MEMORY, flags, dir_fd=root)
        except OSError:
            return  # none (the agent may delete it), or a link: left as it is
        try:
            st = os.fstat(fd)
            wrong = (st.st_uid, st.st_gid) != (self.identity.uid, self.identity.gid)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and wrong and os.geteuid() == 0:
                os.fchown(fd, self.identity.uid, self.identity.gid)
        finally:
            os.close(fd)

    def _give(self, fd: int, mode: int) -> None:
        """Hand an open file or folder to the container's uid (no path, so no link)."""
        st = os.fstat(fd)
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (self.identity.uid, self.identity.gid):
            os.fchown(fd, self.identity.uid, self.identity.gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)

    def _open_subdir(self, parent: int, name: str) -> int:
        """Open (or make) folder `name` under `parent`; whatever else sits there goes."""
        for _ in range(5):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o750, dir_fd=parent)
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                    self._give(fd, 0o750)
                    return fd
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # A symlink or a file where the folder belongs: planted by the agent. It is
                # removed (a link) or moved aside (a file), never followed.
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(name, dir_fd=parent)
                else:
                    aside = f"{name}.moved-{time.time_ns()}"
                    os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
                log.warning("replaced a non-folder in a space", name=name)
        raise SpaceError(f"cannot open the folder {name!r} in a space: it keeps changing")

    def _create_file(
        self, parent: int, name: str, data: bytes, *, exclusive_name: bool = False
    ) -> str:
        """Create `name` (or a numbered twin) exclusively under `parent`; return its name."""
        stem, dot, ext = name.rpartition(".")
        if not stem:
            stem, dot, ext = name, "", ""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for i in range(_MAX_NAME_TRIES):
            candidate = name if i == 0 else f"{stem}-{i}{dot}{ext}"
            try:
                fd = os.open(candidate, flags, 0o600, dir_fd=parent)
            except FileExistsError:
                if exclusive_name:
                    raise
                continue
            try:
                self._give(fd, 0o640)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(candidate, dir_fd=parent)
                raise
            finally:
                os.close(fd)
            return candidate
        raise SpaceError(f"too many files named like {name!r} in the inbox")

    def _ensure_image(self, space_id: str, path: Path) -> bool:
        """Mount the space's image (made on first use); True when the space is new."""
        if not os.path.ismount(path):
            assert self.size is not None
            image = private_dir(images_root(self.data_dir)) / f"{space_id}.img"
            new = mount_image(space_id, path, image, self.size, self.identity)
            self._mounted.add(space_id)
            return new
        self._mounted.add(space_id)
        return False


def _scan(fd: int) -> tuple[list[str], int, int]:
    """An open folder's subfolder names, the bytes its entries take, and how many there are."""
    blocks = entries = 0
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                entries += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                blocks += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(entry.name)
    except OSError:
        pass
    return subdirs, blocks, entries


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise SpaceError(f"cannot open the space folder {path}: {exc.strerror}") from exc
