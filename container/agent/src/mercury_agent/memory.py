"""The space's memory: MEMORY.md, read for the system prompt of every run.

MEMORY.md (in the space dir, /space) holds what earlier runs of the space noted for later
ones. It goes into the system prompt up to a cap (input.json `agent.memory_max_chars`,
the host's `memory.max_chars`). A file over the cap is never cut silently: the prompt shows
its start, cut at a line, says how long the file is and that the rest is not shown, and
asks the agent to condense it now.

Earlier runs wrote the space, so the file is read with care: a link leading out of the
space is not followed (its target could be anything the container can read, and the prompt
goes to the model provider), only a regular file is read (a FIFO would block), bytes that
are not UTF-8 are replaced rather than failing the run, and at most MAX_READ_BYTES are read
however large the file is.
"""

from __future__ import annotations

import codecs
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MEMORY_FILE = "MEMORY.md"
HEADING = "## The space's memory (MEMORY.md)"
MAX_READ_BYTES = 32 * 1024 * 1024  # past this the length is given as "more than"
_CHUNK = 64 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class SpaceMemory:
    """What the prompt needs of MEMORY.md.

    `head` is the file's start, at most the cap plus one character (the one after the cap
    tells whether the cut falls at a line's end); `total_chars` counts the whole file, or
    the part read when `complete` is false (a file past MAX_READ_BYTES). `reason` says why a
    `refused` file was not read.
    """

    status: Literal["ok", "missing", "refused"]
    head: str = ""
    total_chars: int = 0
    complete: bool = True
    reason: str = ""


def _log(message: str) -> None:
    print(f"mercury-agent: {message}", file=sys.stderr, flush=True)


def _inside(path: str, root: str) -> bool:
    return path == root or os.path.commonpath([path, root]) == root


def _opened_path(fd: int) -> str | None:
    """Where an open file really is (Linux), so a link swapped in after the check is seen."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def read_memory(space_dir: Path, max_chars: int, *, max_bytes: int = MAX_READ_BYTES) -> SpaceMemory:
    """MEMORY.md of the space: its first `max_chars` + 1 characters and its length."""
    path = space_dir / MEMORY_FILE
    if not os.path.lexists(path):
        return SpaceMemory("missing")
    root = os.path.realpath(space_dir)
    real = os.path.realpath(path)
    if not _inside(real, root):
        return SpaceMemory("refused", reason="it is a link leading outside the space")
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        return SpaceMemory("refused", reason=f"it cannot be opened ({exc.strerror})")
    try:
        opened = _opened_path(fd)
        if opened is not None and not _inside(opened, root):
            return SpaceMemory("refused", reason="it is a link leading outside the space")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return SpaceMemory("refused", reason="it is not a regular file")
        return _decode(fd, max_chars, max_bytes)
    except OSError as exc:
        return SpaceMemory("refused", reason=f"it cannot be read ({exc.strerror})")
    finally:
        os.close(fd)


def _decode(fd: int, max_chars: int, max_bytes: int) -> SpaceMemory:
    """Count the file's characters (bad UTF-8 replaced), keeping only its start.

    At least enough bytes for `max_chars` + 1 characters are read, so a file cut short by
    `max_bytes` is always over the cap, never mistaken for one within it.
    """
    max_bytes = max(max_bytes, 4 * (max_chars + 2))  # + a BOM
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    keep = max_chars + 1
    head: list[str] = []
    kept = total = read = 0
    complete = True
    while True:
        if read >= max_bytes:
            complete = not os.read(fd, 1)
            break
        chunk = os.read(fd, min(_CHUNK, max_bytes - read))
        if not chunk:
            break
        read += len(chunk)
        text = decoder.decode(chunk)
        total += len(text)
        if kept < keep:
            head.append(text[: keep - kept])
            kept += len(head[-1])
    tail = decoder.decode(b"", final=True)
    total += len(tail)
    if kept < keep:
        head.append(tail[: keep - kept])
    return SpaceMemory("ok", head="".join(head), total_chars=total, complete=complete)


def cut_at_line(text: str, max_chars: int) -> str:
    """The start of `text` that fits `max_chars`, ending at a line's end where one is
    within reach (else cut mid-line: a single line longer than the cap)."""
    if len(text) <= max_chars:
        return text
    if text[max_chars] == "\n":
        return text[:max_chars]
    end = text.rfind("\n", 0, max_chars)
    return text[: end + 1] if end >= 0 else text[:max_chars]


def memory_section(memory: SpaceMemory, max_chars: int, space_dir: Path) -> str:
    """The system prompt's section about MEMORY.md: its text, or why there is none."""
    where = f"{space_dir}/{MEMORY_FILE}"
    keep_notes = (
        "You may keep notes there that later runs of this space will need (the memory skill "
        "says what belongs there)."
    )
    if memory.status == "missing":
        return f"{HEADING}\nThere is no {where} yet. {keep_notes}"
    if memory.status == "refused":
        _log(f"{where} not read: {memory.reason}")
        return (
            f"{HEADING}\n{where} was not read: {memory.reason}. If you keep notes there, "
            "replace it with a regular file in the space."
        )
    if not memory.head.strip():
        return f"{HEADING}\n{where} is empty. {keep_notes}"

    intro = (
        f"{where} holds what earlier runs noted about this space for later ones. Everyone in "
        "this chat shares it, so nothing private about one person goes there. Keep it current "
        "with your tools when something worth keeping comes up (the memory skill says what "
        "belongs there)."
    )
    over = memory.total_chars > max_chars or not memory.complete
    if not over:
        body = f"<<< {MEMORY_FILE}\n{memory.head.rstrip()}\n>>> end of {MEMORY_FILE}"
        return f"{HEADING}\n{intro}\n{body}"
    shown = cut_at_line(memory.head, max_chars)
    size = f"{memory.total_chars}" if memory.complete else f"more than {memory.total_chars}"
    note = (
        f"{MEMORY_FILE} is {size} characters, over the cap of {max_chars}: only its first "
        f"{len(shown)} characters are shown below, the rest is not shown. Condense it now: "
        f"read the whole file, then rewrite {where} shorter than {max_chars} characters, "
        "keeping what matters (merge duplicates, drop what is done or out of date; the "
        "memory skill says how)."
    )
    return (
        f"{HEADING}\n{intro}\n{note}\n<<< {MEMORY_FILE} (first {len(shown)} characters)\n"
        f"{shown.rstrip()}\n>>> not shown: the rest of {MEMORY_FILE}"
    )
