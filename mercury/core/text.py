"""Splitting long replies for platforms with a message length limit (pure)."""

from __future__ import annotations

FENCE = "```"


def split_message(text: str, limit: int) -> list[str]:
    """Split `text` into chunks of at most `limit` characters, losing none.

    Cuts prefer a paragraph break, then a line break, then a space; a code fence open at
    a cut is closed at the end of the chunk and reopened (with its language) at the start
    of the next, so each chunk renders on its own. Joining the chunks with the fence
    markers removed gives back the original text.
    """
    if limit < 20:
        raise ValueError("limit must be at least 20 characters")
    if len(text) <= limit:
        return [text]
    chunks: list[str] = []
    rest = text
    reopen = ""  # fence line to put in front of the next chunk
    while rest:
        budget = limit - len(reopen)
        if len(rest) <= budget:
            chunks.append(reopen + rest)
            break
        # leave room to close a fence we may be inside of
        cut = _cut_point(rest, budget - len(FENCE) - 1)
        piece = rest[:cut]
        rest = rest[cut:]
        fence = _open_fence(reopen + piece)
        if fence is not None:
            chunks.append(reopen + piece + ("" if piece.endswith("\n") else "\n") + FENCE)
            reopen = fence + "\n"
        else:
            chunks.append(reopen + piece)
            reopen = ""
    return chunks


def _cut_point(text: str, budget: int) -> int:
    """Where to cut: the last paragraph break, else line break, sentence end or space.

    A better kind of break wins only if it keeps at least half of what fits: a paragraph
    break a third of the way in would send a short message and push the rest on.
    """
    window = text[:budget]
    for sep in ("\n\n", "\n", ". ", " "):
        at = window.rfind(sep)
        if at >= budget // 2:
            return at + len(sep)
    return budget


def _open_fence(text: str) -> str | None:
    """The opening fence line (e.g. "```python") if `text` ends inside a code block."""
    opener: str | None = None
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            opener = None if opener is not None else stripped
    return opener


def close_open_fence(text: str) -> str:
    """`text` with a code block it ends inside closed: a half-written answer renders as
    it will once finished, instead of turning everything after it into code."""
    if _open_fence(text) is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + FENCE
