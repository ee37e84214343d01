"""Remembering recently seen platform ids, within a bound.

Platforms deliver an event again (a Slack retry, a Discord gateway replay, a repeated
Telegram webhook update): an adapter drops what it already delivered. The pipeline dedups
by platform message id as well; this only keeps the cheap case off the database. The
same helper remembers ids of the bot's own messages (to spot replies to it) and the like.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Enough for minutes of traffic in a busy workspace; a redelivery comes within that.
DEFAULT_LIMIT = 2048


class SeenIds(Generic[K]):
    """An insertion-ordered set that forgets its oldest ids past `limit`."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._items: OrderedDict[K, None] = OrderedDict()
        self.limit = limit

    def add(self, key: K) -> bool:
        """Remember `key` as the newest; False when it was already remembered."""
        new = key not in self._items
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return new

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
