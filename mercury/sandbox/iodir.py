"""The run's io dir on the host: input.json in, result.json out.

Layout under the data dir:

    io/<run_id>/         mounted at /run/mercury-io (rw), removed after the run
        input.json       written by the host before the container starts; it holds the
                         run token, so it is 0600 and owned by the container's uid
        result.json      written by the agent (tmp file + rename); presence = complete

The io dir belongs to the container's uid (0700) so the agent can write its result; its
parent is Mercury's own. result.json is untrusted input: read without following links,
capped in size, nesting depth and listed files, and parsed off the event loop (the runner
calls `read_result` on its thread pool).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mercury.sandbox.hardening import check_id
from mercury.sandbox.identity import ContainerIdentity
from mercury.sandbox.spaces import private_dir

INPUT_NAME = "input.json"
RESULT_NAME = "result.json"
# A result is a reply and some metadata; anything bigger is a misbehaving agent.
MAX_RESULT_BYTES = 8 * 1024**2
# Deeper JSON than this is not a result anyone writes on purpose (and deep enough nesting
# makes the parser recurse until Python gives up).
MAX_RESULT_DEPTH = 32
# Entries of "files" looked at; the runner sends at most container.max_output_files.
MAX_LISTED_FILES = 1000
# result.json "tools", the run's tool calls: what the agent writes at most (and the record
# keeps). Longer text is cut, entries past the cap or of the wrong shape are dropped.
MAX_TOOL_RECORDS = 200
MAX_TOOL_NAME_CHARS = 128
MAX_TOOL_TEXT_CHARS = 2000
_MAX_TOOL_MS = 2**31 - 1


def io_root(data_dir: Path) -> Path:
    return data_dir / "io"


def create_io_dir(
    data_dir: Path,
    run_id: str,
    payload: Any,
    ident: ContainerIdentity,
    *,
    replace: bool = False,
) -> Path:
    """data_dir/io/<run_id> with input.json in it; `replace` clears a stale dir first."""
    path = empty_io_dir(data_dir, run_id, ident, replace=replace, chown=False)
    # Written before the container exists, so nobody else can race this file; still,
    # created exclusively, and owned by the container's uid alone (it holds the run token).
    _write_input(path / INPUT_NAME, payload, ident)
    if os.geteuid() == 0:
        os.chown(path, ident.uid, ident.gid, follow_symlinks=False)
    return path


def empty_io_dir(
    data_dir: Path,
    run_id: str,
    ident: ContainerIdentity,
    *,
    replace: bool = False,
    chown: bool = True,
) -> Path:
    """data_dir/io/<run_id>, empty: a warm container's, whose input.json comes later."""
    check_id("run id", run_id)
    root = private_dir(io_root(data_dir))
    path = root / run_id
    if replace:
        remove_io_dir(path)
    path.mkdir(mode=0o700)
    if chown and os.geteuid() == 0:
        os.chown(path, ident.uid, ident.gid, follow_symlinks=False)
    return path


def hand_over_input(io_dir: Path, payload: Any, ident: ContainerIdentity) -> None:
    """Put input.json into a waiting container's io dir, all at once.

    The agent polls for the name, so the file is written under a temporary name first and
    renamed into place: it never sees a half-written input. The io dir belongs to the
    container's uid, but the container never served a message and runs only the agent's
    waiting loop; the temporary name is still random and created exclusively, and the
    rename replaces whatever might sit at input.json.
    """
    tmp = io_dir / f".input.{os.urandom(8).hex()}.tmp"
    _write_input(tmp, payload, ident)
    os.replace(tmp, io_dir / INPUT_NAME)


def _write_input(path: Path, payload: Any, ident: ContainerIdentity) -> None:
    data = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if os.geteuid() == 0:
            os.fchown(fd, ident.uid, ident.gid)
    finally:
        os.close(fd)


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
    files: list[str] = field(default_factory=list)  # as listed; checked when copied
    # The run's tool calls: {name, ok, ms, input, output}, checked and capped (parse_tools).
    tools: list[dict[str, Any]] = field(default_factory=list)
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


def read_result(io_dir: Path) -> ResultFile | None:
    """Read and validate result.json; None when it is not there. Blocking: off the loop.

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
    if len(raw) > MAX_RESULT_BYTES:
        return ResultFile(problem="result.json is too large", signature=signature)
    return parse_result(raw, signature)


def json_depth_over(raw: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than `limit` (strings skipped).

    Checked before parsing: the parser recurses once per level, and a result.json of a
    million `[` would otherwise end the run in a RecursionError.
    """
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _tool_text(value: Any, limit: int) -> str:
    # NUL cannot be stored in a PostgreSQL text column.
    return value[:limit].replace("\0", "") if isinstance(value, str) else ""


def parse_tools(raw: Any) -> list[dict[str, Any]]:
    """result.json "tools" as far as it is usable; never a reason to lose the reply.

    Untrusted: the first MAX_TOOL_RECORDS entries are looked at; one without a text name
    or a boolean "ok" is dropped; "ms" that is not a count becomes 0; text is cut.
    """
    if not isinstance(raw, list):
        return []
    tools: list[dict[str, Any]] = []
    for item in raw[:MAX_TOOL_RECORDS]:
        if not isinstance(item, dict):
            continue
        name = _tool_text(item.get("name"), MAX_TOOL_NAME_CHARS)
        ok = item.get("ok")
        if not name or not isinstance(ok, bool):
            continue
        ms = item.get("ms")
        valid_ms = isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0
        tools.append(
            {
                "name": name,
                "ok": ok,
                # float("inf") and NaN are valid JSON to Python's parser: cap before int().
                "ms": int(min(ms, _MAX_TOOL_MS)) if valid_ms and ms == ms else 0,
                "input": _tool_text(item.get("input"), MAX_TOOL_TEXT_CHARS),
                "output": _tool_text(item.get("output"), MAX_TOOL_TEXT_CHARS),
            }
        )
    return tools


def parse_result(raw: bytes, signature: tuple[int, int] = (0, 0)) -> ResultFile:
    """Validate the result.json schema: {ok, reply, usage, files} or {ok: false, error}."""
    if len(raw) > MAX_RESULT_BYTES:
        return ResultFile(problem="result.json is too large", signature=signature)
    if json_depth_over(raw, MAX_RESULT_DEPTH):
        return ResultFile(
            problem=f"result.json nests deeper than {MAX_RESULT_DEPTH} levels",
            signature=signature,
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return ResultFile(problem=f"result.json is not UTF-8 ({exc.reason})", signature=signature)
    except json.JSONDecodeError as exc:
        return ResultFile(problem=f"result.json is not valid JSON: {exc}", signature=signature)
    except RecursionError:  # belt and braces: the depth check above should catch it
        return ResultFile(problem="result.json nests too deeply", signature=signature)
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
    usage = data["usage"] if isinstance(data.get("usage"), dict) else {}
    tools = parse_tools(data.get("tools"))
    if not ok:
        error = data.get("error")
        text = str(error)[:10_000] if error else "the agent reported a failure without a message"
        return ResultFile(
            ok=False,
            error=text,
            usage=usage,
            tools=tools,
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
    if len(raw_files) > MAX_LISTED_FILES:
        # The reply still goes out; the listing past the cap is not even looked at.
        data["files"] = raw_files = raw_files[:MAX_LISTED_FILES]
    return ResultFile(
        ok=True,
        reply=reply or "",
        usage=usage,
        files=list(raw_files),
        tools=tools,
        data=data,
        signature=signature,
    )
