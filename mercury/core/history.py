"""History windows for a run's input.json: recent turns and ambient context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mercury.core.timefmt import as_utc

TRUNCATION_MARK = "…"


@dataclass(frozen=True)
class HistoryItem:
    """One stored message as the agent sees it."""

    id: str
    author_id: str
    author_name: str
    text: str
    ts: datetime
    is_bot: bool = False
    attachments: tuple[str, ...] = ()  # names or /space/inbox paths
    # Stored as ambient (seen, did not trigger a run); not part of input.json's item.
    ambient: bool = False

    def to_payload(self) -> dict[str, Any]:
        """The input.json `messages[]` entry."""
        return {
            "id": self.id,
            "author_id": self.author_id,
            "author_name": self.author_name,
            "text": self.text,
            "ts": as_utc(self.ts).isoformat(),
            "is_bot": self.is_bot,
            "attachments": list(self.attachments),
        }


def _after(items: Sequence[HistoryItem], since: datetime | None) -> list[HistoryItem]:
    ordered = sorted(items, key=lambda m: as_utc(m.ts))  # stable: equal times keep order
    if since is None:
        return ordered
    boundary = as_utc(since)
    return [m for m in ordered if as_utc(m.ts) > boundary]


def select_history(
    messages: Sequence[HistoryItem],
    *,
    turns: int,
    max_chars: int,
    since: datetime | None = None,
) -> list[HistoryItem]:
    """The most recent `turns` messages after the context boundary `since`, oldest first,
    then trimmed from the oldest until their total text length is <= `max_chars`.

    The newest message is always kept (cut to `max_chars` if it alone is over), so an
    over-long last message still gives the agent its start. `turns == 0` or
    `max_chars == 0` means no history at all (an operator's way to switch it off).
    """
    if turns <= 0 or max_chars <= 0:
        return []
    window = _after(messages, since)[-turns:]
    total = sum(len(m.text) for m in window)
    while len(window) > 1 and total > max_chars:
        total -= len(window.pop(0).text)
    if window and total > max_chars:
        last = window[-1]
        cut = last.text[: max(0, max_chars - len(TRUNCATION_MARK))] + TRUNCATION_MARK
        window[-1] = HistoryItem(
            last.id,
            last.author_id,
            last.author_name,
            cut[:max_chars],
            last.ts,
            last.is_bot,
            last.attachments,
            last.ambient,
        )
    return window
