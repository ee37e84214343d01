"""The built-in loop's tools: bash, read_file, write_file, edit_file, list_files, send_file.

File tools are confined to the space dir and /tmp. A path is taken relative to the space
dir, resolved with every symlink followed, and refused unless the result lies inside one
of those roots - so `../..`, absolute paths elsewhere, a symlink pointing out and a
symlinked parent directory are all refused. (bash is not confined by path: the container
is its boundary; file tools are the ones that must never touch the host's mounts.)

Every failure comes back to the model as a tool error it can read and react to; nothing
here raises into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mercury_agent.conversation import ToolDef
from mercury_agent.settings import OUTBOX, SPACE_MOUNT

# bash output kept for the model: the first and the last part, where errors usually are.
OUTPUT_HEAD_BYTES = 12_000
OUTPUT_TAIL_BYTES = 12_000
# After the shell exits, how long background children may keep its output pipe open.
_DRAIN_AFTER_EXIT_S = 2.0
READ_MAX_CHARS = 100_000
READ_MAX_FILE_BYTES = 20 * 1024**2
LIST_MAX_ENTRIES = 500


class ToolError(Exception):
    """A tool failed in a way the model should hear about (returned as is_error)."""


@dataclass(frozen=True)
class ToolOutcome:
    content: str
    is_error: bool = False


# A tool beyond the built-in ones (an extension's MCP tool): (arguments, time limit in
# seconds) -> outcome. It reports failures as is_error outcomes, like the built-in tools.
ToolHandler = Callable[[Mapping[str, Any], float], Awaitable["ToolOutcome"]]


@dataclass
class ToolContext:
    """What the tools of one run share."""

    space_dir: Path
    tmp_dir: Path = Path("/tmp")
    bash_timeout_s: float = 120.0
    env: Mapping[str, str] | None = None  # bash's environment (None: inherit)
    # Seconds left in the run's budget (None: no budget); caps bash timeouts.
    remaining: Callable[[], float | None] = lambda: None
    files: list[str] = field(default_factory=list)  # "outbox/NAME", recorded by send_file
    # Readable but never written: the resources and skill dirs (SKILL.md files).
    read_only: tuple[Path, ...] = ()
    # Tools beyond the built-in ones, by name (McpHub.handlers()); a built-in name wins.
    extra: Mapping[str, ToolHandler] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.space_dir = Path(self.space_dir)
        self.space_real = Path(os.path.realpath(self.space_dir))
        self.tmp_real = Path(os.path.realpath(self.tmp_dir))
        self.read_only_real = tuple(Path(os.path.realpath(p)) for p in self.read_only)

    @property
    def roots(self) -> tuple[Path, Path]:
        return (self.space_real, self.tmp_real)

    def display(self, real: Path) -> str:
        """How a resolved path is shown to the model: relative inside the space."""
        if real == self.space_real:
            return "."
        if real.is_relative_to(self.space_real):
            return str(real.relative_to(self.space_real))
        return str(real)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_path(ctx: ToolContext, raw: Any, *, reading: bool = False) -> Path:
    """The real path for a file tool's `path` argument, or ToolError if it leaves the roots.

    `reading`: the read-only roots (skills, resources) are allowed as well.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ToolError("path must be a non-empty string")
    if "\0" in raw:
        raise ToolError("path must not contain NUL bytes")
    text = raw.strip()
    # The model is told the space is /space; outside a container it lives elsewhere.
    if (text == SPACE_MOUNT or text.startswith(SPACE_MOUNT + "/")) and str(
        ctx.space_real
    ) != SPACE_MOUNT:
        text = str(ctx.space_dir) + text[len(SPACE_MOUNT) :]
    candidate = Path(text) if os.path.isabs(text) else ctx.space_dir / text
    lexical = Path(os.path.normpath(candidate))
    real = Path(os.path.realpath(candidate))
    if _inside(real, ctx.roots):
        return real
    if reading and _inside(real, ctx.read_only_real):
        return real
    if _inside(real, ctx.read_only_real):
        raise ToolError(f"{raw}: refused, skills and resources are read-only")
    lexical_roots = (*ctx.roots, Path(os.path.normpath(ctx.space_dir)))
    if _inside(lexical, lexical_roots):
        raise ToolError(
            f"{raw}: refused, it leads through a symlink to {real}, outside the space and "
            "/tmp (file tools may only use those)"
        )
    raise ToolError(
        f"{raw}: refused, it is outside the space ({ctx.space_dir}) and /tmp "
        "(file tools may only use those)"
    )


# --------------------------------------------------------------------------- arguments


def _arg(
    args: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    if name not in args or args[name] is None:
        if default is ...:
            raise ToolError(f"missing required argument {name!r}")
        return default
    value = args[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ToolError(f"argument {name!r} must be {kinds[0].__name__}, not a boolean")
    if int in kinds and float not in kinds and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kinds):
        raise ToolError(
            f"argument {name!r} must be {kinds[0].__name__}, got {type(value).__name__}"
        )
    return value


# --------------------------------------------------------------------------- bash


class _Output:
    """Keeps the head and the tail of a stream, counting what is dropped in between."""

    def __init__(self, head: int = OUTPUT_HEAD_BYTES, tail: int = OUTPUT_TAIL_BYTES) -> None:
        self._head_max, self._tail_max = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self._tail_max:  # trim in batches, not per chunk
                del self.tail[: len(self.tail) - self._tail_max]

    def text(self) -> str:
        tail = bytes(self.tail[-self._tail_max :]) if self._tail_max else b""
        omitted = self.total - len(self.head) - len(tail)
        head_text = self.head.decode("utf-8", errors="replace")
        tail_text = tail.decode("utf-8", errors="replace")
        if omitted > 0:
            return f"{head_text}\n[... {omitted} bytes of output omitted ...]\n{tail_text}"
        return head_text + tail_text


def truncate_output(
    data: bytes, head: int = OUTPUT_HEAD_BYTES, tail: int = OUTPUT_TAIL_BYTES
) -> str:
    """`data` as text, keeping `head` + `tail` bytes with a marker in between."""
    out = _Output(head, tail)
    out.feed(data)
    return out.text()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Collect(asyncio.Protocol):
    """Feeds a pipe's data into an _Output and signals its end."""

    def __init__(self, out: _Output) -> None:
        self.out = out
        self.done = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.out.feed(data)

    def eof_received(self) -> bool:
        self.done.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set()


async def run_bash(ctx: ToolContext, command: str, timeout_s: float) -> ToolOutcome:
    """Run `command` with bash in the space dir; output (stdout+stderr) and exit code."""
    shell = shutil.which("bash") or "/bin/sh"
    loop = asyncio.get_running_loop()
    # Our own pipe rather than asyncio's: a background child may hold it open after the
    # shell exits, and then we must be able to stop reading and close it ourselves.
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            shell,
            "-c",
            command,
            cwd=ctx.space_dir,
            env=dict(ctx.env) if ctx.env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            # Its own process group, so a timeout kills the children too.
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    out = _Output()
    transport, collector = await loop.connect_read_pipe(
        lambda: _Collect(out), os.fdopen(read_fd, "rb", buffering=0)
    )
    timed_out = False
    notes: list[str] = []
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        try:
            await asyncio.wait_for(collector.done.wait(), _DRAIN_AFTER_EXIT_S)
        except TimeoutError:
            # A background child still holds the pipe; do not wait for it forever.
            notes.append("[background processes still hold the output open; not waiting]")
    finally:
        if proc.returncode is None:  # cancelled mid-run: leave nothing behind
            _kill_group(proc.pid)
        transport.close()
    text = out.text()
    if timed_out:
        notes.append(f"[timed out after {timeout_s:g} s; the command and its children were killed]")
        return ToolOutcome("\n".join([text, *notes]).strip(), is_error=True)
    notes.append(f"[exit code {proc.returncode}]")
    body = text.rstrip("\n") or "(no output)"
    return ToolOutcome("\n".join([body, *notes]), is_error=proc.returncode != 0)


async def _bash(ctx: ToolContext, args: Mapping[str, Any]) -> ToolOutcome:
    command = _arg(args, "command", str)
    if not command.strip():
        raise ToolError("command is empty")
    timeout = float(_arg(args, "timeout_s", (int, float), ctx.bash_timeout_s))
    return await run_bash(ctx, command, call_timeout(ctx, timeout))


def call_timeout(ctx: ToolContext, wanted: float | None = None) -> float:
    """A tool call's time limit: `wanted`, at most the run's bash timeout and never past
    the run's budget (at least 1 s)."""
    timeout = ctx.bash_timeout_s if wanted is None else min(wanted, ctx.bash_timeout_s)
    remaining = ctx.remaining()
    if remaining is not None:
        # Never let one call outlive the run's budget.
        timeout = min(timeout, remaining)
    return max(1.0, timeout)


# --------------------------------------------------------------------------- files


def _read_file(ctx: ToolContext, args: Mapping[str, Any]) -> ToolOutcome:
    path = resolve_path(ctx, _arg(args, "path", str), reading=True)
    offset = _arg(args, "offset", int, 1)
    limit = _arg(args, "limit", int, 0)
    if offset < 1 or limit < 0:
        raise ToolError("offset must be >= 1 and limit >= 0")
    if path.is_dir():
        raise ToolError(f"{ctx.display(path)} is a directory; use list_files")
    if not path.exists():
        raise ToolError(f"{ctx.display(path)} does not exist")
    if not path.is_file():
        raise ToolError(f"{ctx.display(path)} is not a regular file")
    size = path.stat().st_size
    if size > READ_MAX_FILE_BYTES:
        raise ToolError(
            f"{ctx.display(path)} is {size} bytes, too large to read whole; use bash "
            "(head, tail, grep, sed -n) to look at parts of it"
        )
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ToolError(
            f"{ctx.display(path)} looks binary ({size} bytes); use bash (file, xxd) to inspect it"
        )
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if offset > max(1, len(lines)):
        raise ToolError(f"offset {offset} is past the end of the file ({len(lines)} lines)")
    end = len(lines) if not limit else min(len(lines), offset - 1 + limit)
    parts: list[str] = []
    size_so_far = 0
    for line in lines[offset - 1 : end]:
        if parts and size_so_far + len(line) > READ_MAX_CHARS:
            break
        parts.append(line[:READ_MAX_CHARS])  # one giant line is cut, not skipped
        size_so_far += len(parts[-1])
    shown_end = offset - 1 + len(parts)
    text = "".join(parts)
    if offset > 1 or shown_end < len(lines):
        more = f"; continue with offset={shown_end + 1}" if shown_end < len(lines) else ""
        text += f"\n[lines {offset}-{shown_end} of {len(lines)}{more}]"
    return ToolOutcome(text if text else "(empty file)")


def _write_file(ctx: ToolContext, args: Mapping[str, Any]) -> ToolOutcome:
    path = resolve_path(ctx, _arg(args, "path", str))
    content = _arg(args, "content", str)
    if path.is_dir():
        raise ToolError(f"{ctx.display(path)} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8")
    path.write_bytes(data)
    return ToolOutcome(f"wrote {len(data)} bytes to {ctx.display(path)}")


def _edit_file(ctx: ToolContext, args: Mapping[str, Any]) -> ToolOutcome:
    path = resolve_path(ctx, _arg(args, "path", str))
    old = _arg(args, "old_text", str)
    new = _arg(args, "new_text", str)
    if not old:
        raise ToolError("old_text must not be empty (use write_file to create a file)")
    if not path.is_file():
        raise ToolError(f"{ctx.display(path)} does not exist or is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{ctx.display(path)} is not UTF-8 text; edit it with bash") from None
    count = text.count(old)
    if count == 0:
        raise ToolError(
            f"old_text was not found in {ctx.display(path)}; read the file and copy the exact "
            "text, including whitespace and indentation"
        )
    if count > 1:
        raise ToolError(
            f"old_text occurs {count} times in {ctx.display(path)}; include more surrounding "
            "text so that it matches exactly once"
        )
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return ToolOutcome(f"replaced 1 occurrence in {ctx.display(path)}")


def _describe_entry(path: Path, name: str) -> str:
    if path.is_symlink():
        return f"{name} -> {os.readlink(path)}"
    if path.is_dir():
        return f"{name}/"
    try:
        return f"{name}  ({path.stat().st_size} bytes)"
    except OSError:
        return name


def _list_files(ctx: ToolContext, args: Mapping[str, Any]) -> ToolOutcome:
    path = resolve_path(ctx, _arg(args, "path", str, "."), reading=True)
    recursive = _arg(args, "recursive", bool, False)
    if not path.exists():
        raise ToolError(f"{ctx.display(path)} does not exist")
    if not path.is_dir():
        return ToolOutcome(_describe_entry(path, ctx.display(path)))
    lines: list[str] = []
    truncated = False
    if recursive:
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                entry = base / name
                if len(lines) >= LIST_MAX_ENTRIES:
                    truncated = True
                    break
                lines.append(_describe_entry(entry, str(entry.relative_to(path))))
            if truncated:
                break
    else:
        for entry in sorted(path.iterdir(), key=lambda p: p.name):
            if len(lines) >= LIST_MAX_ENTRIES:
                truncated = True
                break
            lines.append(_describe_entry(entry, entry.name))
    if truncated:
        lines.append(f"[... stopped after {LIST_MAX_ENTRIES} entries; list a subdirectory]")
    header = f"{ctx.display(path)}:"
    return ToolOutcome("\n".join([header, *lines]) if lines else f"{header} (empty)")


def _send_file(ctx: ToolContext, args: Mapping[str, Any]) -> ToolOutcome:
    src = resolve_path(ctx, _arg(args, "path", str))
    name = _arg(args, "name", str, "") or src.name
    move = _arg(args, "move", bool, False)
    if not src.is_file():
        raise ToolError(f"{ctx.display(src)} does not exist or is not a regular file")
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ToolError(f"name {name!r} must be a plain file name, without directories")
    outbox = ctx.space_dir / OUTBOX
    if outbox.is_symlink() or (outbox.exists() and not outbox.is_dir()):
        raise ToolError(f"{OUTBOX} in the space is not a directory; remove it first")
    outbox.mkdir(exist_ok=True)
    dest = Path(os.path.realpath(outbox)) / name
    if dest.is_symlink():
        dest.unlink()  # the host delivers regular files only; replace a link, never follow it
    if dest.is_dir():
        raise ToolError(f"{OUTBOX}/{name} is a directory; choose another name")
    if src != dest:
        if move:
            shutil.move(src, dest)
        else:
            shutil.copyfile(src, dest)
    rel = f"{OUTBOX}/{name}"
    if rel not in ctx.files:
        ctx.files.append(rel)
    return ToolOutcome(f"{rel} ({dest.stat().st_size} bytes) will be sent with the reply")


# --------------------------------------------------------------------------- registry

_PATH_NOTE = (
    "Relative paths are inside the space dir; only the space and /tmp are allowed "
    "(symlinks leading elsewhere are refused)."
)

TOOLS: list[ToolDef] = [
    ToolDef(
        "bash",
        "Run a bash command in the space dir (the working directory, which persists between "
        "runs). Returns combined stdout/stderr (long output keeps its start and end) and the "
        "exit code. Each call is a fresh shell; it has a time limit.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command line to run."},
                "timeout_s": {
                    "type": "number",
                    "description": "Optional shorter time limit in seconds.",
                },
            },
            "required": ["command"],
        },
    ),
    ToolDef(
        "read_file",
        "Read a text file. " + _PATH_NOTE + " For long files pass offset/limit (in lines).",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "offset": {"type": "integer", "description": "First line to read, from 1."},
                "limit": {"type": "integer", "description": "Number of lines to read."},
            },
            "required": ["path"],
        },
    ),
    ToolDef(
        "write_file",
        "Create or overwrite a text file (parent directories are created). " + _PATH_NOTE,
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
    ToolDef(
        "edit_file",
        "Replace one exact occurrence of old_text with new_text in a file. old_text must "
        "match exactly once (whitespace included); include surrounding lines to make it "
        "unique. " + _PATH_NOTE,
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_text": {"type": "string"},
                "new_text": {"type": "string"},
            },
            "required": ["path", "old_text", "new_text"],
        },
    ),
    ToolDef(
        "list_files",
        "List a directory (default: the space dir), optionally recursively. " + _PATH_NOTE,
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Directory; default '.'"},
                "recursive": {"type": "boolean"},
            },
        },
    ),
    ToolDef(
        "send_file",
        "Attach a file to your reply: it is copied (or moved) into outbox/ and delivered to "
        "the chat with your answer. " + _PATH_NOTE,
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The file to send."},
                "name": {
                    "type": "string",
                    "description": "File name to send it as (default: its own name).",
                },
                "move": {
                    "type": "boolean",
                    "description": "Move instead of copy (default false).",
                },
            },
            "required": ["path"],
        },
    ),
]

_SYNC_TOOLS = {
    "read_file": _read_file,
    "write_file": _write_file,
    "edit_file": _edit_file,
    "list_files": _list_files,
    "send_file": _send_file,
}


async def run_tool(ctx: ToolContext, name: str, args: Mapping[str, Any]) -> ToolOutcome:
    """Run one tool call; every failure becomes an is_error outcome, never an exception."""
    try:
        if not isinstance(args, Mapping):
            raise ToolError("arguments must be a JSON object")
        if name == "bash":
            return await _bash(ctx, args)
        handler = _SYNC_TOOLS.get(name)
        if handler is not None:
            return handler(ctx, args)
        extra = ctx.extra.get(name)
        if extra is not None:
            return await extra(args, call_timeout(ctx))
        known = ", ".join([*(t.name for t in TOOLS), *ctx.extra])
        raise ToolError(f"unknown tool {name!r}; the tools are: {known}")
    except ToolError as exc:
        return ToolOutcome(f"Error: {exc}", is_error=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return ToolOutcome(f"Error: {exc.strerror or exc}{where}", is_error=True)
    except Exception as exc:  # a tool bug must not end the run; the model can work around it
        return ToolOutcome(f"Error: {type(exc).__name__}: {exc}", is_error=True)
