"""Folders into and out of a backup archive, never through a link.

Spaces are written by hostile agents, and a run may be going while a backup reads them:
any folder may be a symlink to /etc, any file a FIFO that blocks a reader forever. So a
folder is walked by descriptor (O_NOFOLLOW, relative to its parent's handle, like
SpaceStore.measure), a link is stored as a link (its target text, never read through),
and FIFOs, sockets and devices are skipped and listed. Each file is copied once into a
spool while it is hashed, so the size and sha256 in the manifest are those of the bytes
stored even if the agent writes to it meanwhile.

Unpacking is the mirror: a member name must pass `member_problem`, files are created
exclusively in a fresh staging folder, links are made last (and the manifest forbids any
path below a link), and only regular files, folders and links are accepted.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mercury.core.backups import member_problem
from mercury.ops.manifest import (
    MANIFEST_NAME,
    BackupError,
    FileEntry,
    LinkEntry,
    ManifestError,
    MemberCheck,
    SkippedEntry,
    sha256_hex,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 128
CHUNK = 1024 * 1024
SPOOL_IN_MEMORY = 16 * 1024 * 1024


@dataclass
class Listing:
    """What went into an archive, for its manifest."""

    files: list[FileEntry] = field(default_factory=list)
    links: list[LinkEntry] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)


def _info(name: str, kind: bytes, st: os.stat_result | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode) & 0o777 if st else 0o600
    info.mtime = int(st.st_mtime) if st else 0
    info.uid = info.gid = 0  # ownership is the restoring install's (its container uid)
    info.uname = info.gname = ""
    return info


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, listing: Listing) -> None:
    """Add an in-memory file (the masked config)."""
    import io

    info = _info(name, tarfile.REGTYPE, None)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    digest = sha256_hex()
    digest.update(data)
    listing.files.append(FileEntry(name, len(data), digest.hexdigest()))


def add_file(
    tar: tarfile.TarFile, name: str, path: Path, spool_dir: Path, listing: Listing
) -> None:
    """Add one regular file by path (the database snapshot, a space image), not via links."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        _add_fd(tar, name, fd, spool_dir, listing)
    finally:
        os.close(fd)


def _add_fd(tar: tarfile.TarFile, name: str, fd: int, spool_dir: Path, listing: Listing) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        listing.skipped.append(SkippedEntry(name, _kind(st.st_mode)))
        return
    os.set_blocking(fd, True)
    digest = sha256_hex()
    size = 0
    with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=spool_dir) as spool:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)
        info = _info(name, tarfile.REGTYPE, st)
        info.size = size
        tar.addfile(info, spool)
    listing.files.append(FileEntry(name, size, digest.hexdigest()))


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (not read)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def add_tree(
    tar: tarfile.TarFile,
    root: Path,
    prefix: str,
    spool_dir: Path,
    listing: Listing,
    keep: Callable[[str], bool] = lambda _name: True,
) -> None:
    """Add the folder `root` as `prefix/...`; `keep` filters its top-level names."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            listing.skipped.append(SkippedEntry(prefix, "not a folder (a link?): not followed"))
            return
        raise BackupError(f"cannot read {root}: {exc.strerror}") from exc
    try:
        _walk(tar, fd, prefix, spool_dir, listing, 0, keep)
    finally:
        os.close(fd)


def _walk(
    tar: tarfile.TarFile,
    dfd: int,
    rel: str,
    spool_dir: Path,
    listing: Listing,
    depth: int,
    keep: Callable[[str], bool],
) -> None:
    tar.addfile(_info(rel, tarfile.DIRTYPE, os.fstat(dfd)))
    for name in sorted(os.listdir(dfd)):
        if depth == 0 and not keep(name):
            continue
        path = f"{rel}/{name}"
        if member_problem(path):
            listing.skipped.append(SkippedEntry(path, "a name an archive cannot hold"))
            continue
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we read the folder
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=dfd)
            info = _info(path, tarfile.SYMTYPE, st)
            info.linkname = target
            tar.addfile(info)
            listing.links.append(LinkEntry(path, target))
        elif stat.S_ISDIR(st.st_mode):
            if depth + 1 >= MAX_DEPTH:
                listing.skipped.append(SkippedEntry(path, f"nested deeper than {MAX_DEPTH}"))
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except OSError:
                listing.skipped.append(SkippedEntry(path, "changed while it was read"))
                continue
            try:
                _walk(tar, child, path, spool_dir, listing, depth + 1, keep)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
            except OSError:
                listing.skipped.append(SkippedEntry(path, "changed while it was read"))
                continue
            try:
                _add_fd(tar, path, fd, spool_dir, listing)
            finally:
                os.close(fd)
        else:
            listing.skipped.append(SkippedEntry(path, _kind(st.st_mode)))


# --------------------------------------------------------------------------- unpacking


def unpack(tar: tarfile.TarFile, staging: Path, check: MemberCheck) -> None:
    """Unpack every member after the manifest into `staging`, checking each against it.

    `staging` is a fresh folder of ours; ManifestError on the first mismatch (the caller
    removes `staging`, so nothing of a bad archive is left).
    """
    links: list[tuple[str, str]] = []
    manifest_seen = False
    for member in tar:
        if member.name == MANIFEST_NAME and not manifest_seen:
            manifest_seen = True  # read already (a stream re-yields its first member)
            continue
        problem = member_problem(member.name)
        if problem:
            raise ManifestError(f"archive: member {member.name!r} has {problem}")
        dest = staging / member.name
        if member.isdir():
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif member.isreg():
            _unpack_file(tar, member, dest, check)
        elif member.issym():
            check.link(member.name, member.linkname)
            links.append((member.name, member.linkname))
        else:
            raise ManifestError(
                f"archive: {member.name} is neither a file, a folder nor a link; "
                "a Mercury backup never holds one"
            )
    check.finish()
    for name, target in links:  # last: nothing is ever written below a link
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.symlink(target, dest)


def _unpack_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, check: MemberCheck
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - isreg() members always have data
        raise ManifestError(f"archive: {member.name} has no data")
    digest = sha256_hex()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    check.file(member.name, size, digest.hexdigest())
    os.chmod(dest, (member.mode & 0o777) | 0o600)


def hand_over(root: Path, uid: int, gid: int) -> None:
    """Give everything below `root` (links themselves, not `root`) to uid:gid (root only)."""
    if os.geteuid() != 0 or not root.exists():
        return
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)
