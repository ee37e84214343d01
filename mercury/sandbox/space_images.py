"""Size-limited spaces: a space folder that is an ext4 image, loop-mounted.

`disk.space_limit: image` (spaces.py picks the mode): the folder `data_dir/spaces/<id>` is
the mount point of `data_dir/space-images/<id>.img`, a sparse ext4 file of
`disk.space_size` bytes. The kernel refuses writes past the size, so the agent sees "No
space left on device" and the host's disk is untouched. Needs root, loop devices,
mkfs.ext4 and mount. A space that already has files is copied into its image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

from mercury.logging import get_logger
from mercury.sandbox.identity import ContainerIdentity

log = get_logger("mercury.sandbox.spaces")


class ImageError(OSError):
    """A tool (mkfs, mount, resize2fs) failed, or the mount point is not a folder."""


def images_root(data_dir: Path) -> Path:
    return data_dir / "space-images"


def image_support() -> str | None:
    """Why per-space images cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "Mercury does not run as root (mounting needs it)"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/loop-control").exists():
        return "the kernel offers no loop devices (/dev/loop-control)"
    return None


def mount_image(
    space_id: str, path: Path, image: Path, size: int, ident: ContainerIdentity
) -> bool:
    """Mount `image` (made on first use, grown to `size`) at `path`; True for a new space.

    On success the image is mounted; on an error it is not (and a space's old files are
    back where they were). Blocking: off the event loop.
    """
    fresh = not image.exists()
    if fresh:
        _make_image(image, size, ident)
    elif image.stat().st_size < size:
        _grow_image(image, size)
    elif image.stat().st_size > size:
        log.warning(
            "space image is larger than disk.space_size; it is not shrunk",
            space_id=space_id,
            image_bytes=image.stat().st_size,
        )
    moved: Path | None = None
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ImageError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        # Files from before images were used: copy them in after mounting.
        moved = path.with_name(f".{space_id}.migrating")
        os.rename(path, moved)
    path.mkdir(mode=0o700, exist_ok=True)
    try:
        _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(path)])
    except BaseException:
        if moved is not None:
            path.rmdir()
            os.rename(moved, path)
        raise
    if fresh:
        with contextlib.suppress(OSError):
            (path / "lost+found").rmdir()
    if moved is not None:
        try:
            _copy_tree_into(moved, path)
        except OSError:
            subprocess.run(["umount", str(path)], capture_output=True, check=False)
            path.rmdir()
            os.rename(moved, path)
            image.unlink()
            raise
        shutil.rmtree(moved)
        log.info("space moved into its size-limited image", space_id=space_id)
    return fresh and moved is None


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ImageError(f"{cmd[0]} failed: {detail[-1] if detail else done.returncode}")


def _make_image(image: Path, size: int, ident: ContainerIdentity) -> None:
    tmp = image.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.truncate(size)  # sparse: disk is used as the agent writes
    try:
        _run(
            [
                "mkfs.ext4", "-q", "-F", "-m", "0", "-J", "size=4",
                "-E", f"root_owner={ident.uid}:{ident.gid}", str(tmp),
            ]
        )  # fmt: skip
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.rename(tmp, image)


def _grow_image(image: Path, size: int) -> None:
    with open(image, "r+b") as fh:
        fh.truncate(size)
    if shutil.which("resize2fs"):
        _run(["resize2fs", "-f", str(image)])


def _copy_tree_into(src: Path, dst: Path) -> None:
    """Copy a space's old files into its image: links copied as links, owners kept."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in dirs + files:
            s, d = Path(root) / name, dst / rel / name
            st = s.lstat()
            if stat.S_ISDIR(st.st_mode):
                d.mkdir(exist_ok=True)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(s, d, follow_symlinks=False)
            else:
                continue  # sockets, fifos, devices: not worth keeping
            os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(d, stat.S_IMODE(st.st_mode))
