"""The host side of a run's files: the space dir, the io dir, input.json and result.json.

Layout under the data dir:

    spaces/<space_id>/   mounted at /space (rw), persists across runs
    io/<run_id>/         mounted at /run/mercury-io (rw), removed after the run
        input.json       written by the host before the container starts
        result.json      written by the agent (tmp file + rename); presence = complete

Both dirs belong to the container's uid (chown when the host runs as root, else world
writable) so the non-root agent can write into them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mercury.sandbox.hardening import SPACE_MOUNT, check_id

INPUT_NAME = "input.json"
RESULT_NAME = "result.json"
# A result is a reply and some metadata; anything bigger is a misbehaving agent.
MAX_RESULT_BYTES = 8 * 1024**2
OUTBOX = "outbox"


def parse_user(user: str) -> tuple[int, int]:
    """`"1000:1000"` or `"1000"` -> (uid, gid)."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def spaces_root(data_dir: Path) -> Path:
    return data_dir / "spaces"


def io_root(data_dir: Path) -> Path:
    return data_dir / "io"


def _give_to(path: Path, uid: int, gid: int, mode: int) -> None:
    """Make `path` writable by the container's uid: chown as root, else open it up."""
    if os.geteuid() == 0:
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
        if stat.S_IMODE(st.st_mode) != mode:
            path.chmod(mode)
    else:
        # Without root we cannot chown; the container's uid needs write access anyway.
        path.chmod(0o777)


def ensure_space_dir(data_dir: Path, space_id: str, uid: int, gid: int) -> Path:
    """data_dir/spaces/<space_id>, created on first use, owned by the container's uid."""
    check_id("space id", space_id)
    root = spaces_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / space_id
    try:
        path.mkdir(mode=0o750)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise ValueError(f"space dir {path} exists but is not a directory") from None
    _give_to(path, uid, gid, 0o750)
    return path


def create_io_dir(
    data_dir: Path, run_id: str, payload: Any, uid: int, gid: int, *, replace: bool = False
) -> Path:
    """data_dir/io/<run_id> with input.json in it; `replace` clears a stale dir first."""
    check_id("run id", run_id)
    root = io_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / run_id
    if replace:
        remove_io_dir(path)
    path.mkdir(mode=0o700)
    data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
    # Written before the container exists, so nobody else can race this file.
    (path / INPUT_NAME).write_bytes(data)
    (path / INPUT_NAME).chmod(0o644)
    _give_to(path, uid, gid, 0o700)
    return path


def remove_io_dir(path: Path) -> None:
    """Remove an io dir and everything the agent left in it (symlinks are not followed)."""
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class ResultFile:
    """result.json as read from the io dir. `problem` is set when it cannot be used."""

    ok: bool = False
    reply: str | None = None
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    dropped_files: list[str] = field(default_factory=list)
    data: dict[str, Any] | None = None
    problem: str | None = None
    signature: tuple[int, int] = (0, 0)  # (size, mtime_ns): tells a settled file apart


def result_present(io_dir: Path) -> bool:
    """Cheap enough to call every 10 ms on the event loop: one lstat."""
    try:
        os.lstat(io_dir / RESULT_NAME)
    except FileNotFoundError:
        return False
    return True


def read_result(io_dir: Path, space_dir: Path) -> ResultFile | None:
    """Read and validate result.json; None when it is not there.

    The io dir is writable by the agent, so the file is opened without following
    symlinks and must be a regular file (a FIFO would block, a symlink could point at a
    host file).
    """
    path = io_dir / RESULT_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return ResultFile(problem=f"result.json cannot be opened ({exc.strerror})")
    try:
        st = os.fstat(fd)
        signature = (st.st_size, st.st_mtime_ns)
        if not stat.S_ISREG(st.st_mode):
            return ResultFile(problem="result.json is not a regular file", signature=signature)
        if st.st_size > MAX_RESULT_BYTES:
            return ResultFile(
                problem=f"result.json is too large ({st.st_size} bytes, limit "
                f"{MAX_RESULT_BYTES} bytes)",
                signature=signature,
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_RESULT_BYTES + 1)
    finally:
        os.close(fd)
    return parse_result(raw, space_dir, signature)


def parse_result(raw: bytes, space_dir: Path, signature: tuple[int, int] = (0, 0)) -> ResultFile:
    """Validate the result.json schema: {ok, reply, usage, files} or {ok: false, error}."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return ResultFile(problem=f"result.json is not UTF-8 ({exc.reason})", signature=signature)
    except json.JSONDecodeError as exc:
        return ResultFile(problem=f"result.json is not valid JSON: {exc}", signature=signature)
    if not isinstance(data, dict):
        return ResultFile(
            problem=f"result.json must hold a JSON object, not {type(data).__name__}",
            signature=signature,
        )
    ok = data.get("ok")
    if not isinstance(ok, bool):
        return ResultFile(
            problem='result.json has no boolean "ok" field', data=data, signature=signature
        )
    if not ok:
        error = data.get("error")
        return ResultFile(
            ok=False,
            error=str(error) if error else "the agent reported a failure without a message",
            usage=data["usage"] if isinstance(data.get("usage"), dict) else {},
            data=data,
            signature=signature,
        )
    reply = data.get("reply")
    if reply is not None and not isinstance(reply, str):
        return ResultFile(
            problem='result.json "reply" must be text', data=data, signature=signature
        )
    raw_files = data.get("files") or []
    if not isinstance(raw_files, list):
        return ResultFile(
            problem='result.json "files" must be a list of paths', data=data, signature=signature
        )
    files, dropped = safe_outbox_files(raw_files, space_dir)
    return ResultFile(
        ok=True,
        reply=reply or "",
        usage=data["usage"] if isinstance(data.get("usage"), dict) else {},
        files=files,
        dropped_files=dropped,
        data=data,
        signature=signature,
    )


def safe_outbox_files(raw: list[Any], space_dir: Path) -> tuple[list[str], list[str]]:
    """Keep the files that are regular files inside the space's outbox.

    The agent names them, and the host will read them to send them back: a path like
    `../../etc/shadow` or an outbox symlink pointing out of the space must not leak a host
    file. Returns (kept paths relative to /space, dropped entries).
    """
    kept: list[str] = []
    dropped: list[str] = []
    space = space_dir.resolve()
    outbox = space / OUTBOX
    for item in raw:
        if not isinstance(item, str) or not item:
            dropped.append(repr(item))
            continue
        rel = item
        if rel.startswith(SPACE_MOUNT + "/"):
            rel = rel[len(SPACE_MOUNT) + 1 :]
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or pure.parts[0] != OUTBOX:
            dropped.append(item)
            continue
        real = (space / pure).resolve()
        if not real.is_relative_to(outbox) or not real.is_file():
            dropped.append(item)
            continue
        kept.append(str(pure))
    return kept, dropped
