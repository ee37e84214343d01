"""What a fake platform applied to messages the bot had posted: one shape for all fakes,
so tests compare edits and deletions (with their monotonic time) the same way on each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Edit:
    """An edit the fake applied (a refused one is only in the fake's `calls`)."""

    method: str
    chat_id: str
    message_id: str
    text: str
    at: float = field(default_factory=time.monotonic)


@dataclass
class Deletion:
    """A deletion the fake applied."""

    method: str
    chat_id: str
    message_id: str
    at: float = field(default_factory=time.monotonic)
