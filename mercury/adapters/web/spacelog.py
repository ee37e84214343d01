"""The web chat's memory: a bounded log per space, with cursors and live subscribers.

Every entry (a message, a status, a tombstone for a withdrawn message) gets a cursor from
one counter, so a client asking for `after=<cursor>` sees every change since, and a live
stream (SSE) gets the same entries as events. Cursors start at the wall clock in ms so
that after a restart they keep growing and a browser holding an old cursor still sees
new messages. A subscriber that stops reading is cut off instead of growing memory.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
QUEUE_LIMIT = 1000  # events buffered per SSE client before it is dropped as too slow

Entry = dict[str, Any]


def valid_space(space: Any) -> bool:
    return isinstance(space, str) and SPACE_RE.fullmatch(space) is not None


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Event:
    kind: str  # message | edit | delete | typing
    data: dict[str, Any]
    cursor: int | None = None

    def encode(self) -> bytes:
        """The event as one server-sent event (its cursor as the SSE id)."""
        head = f"id: {self.cursor}\n" if self.cursor is not None else ""
        data = json.dumps(self.data, ensure_ascii=False)
        return f"{head}event: {self.kind}\ndata: {data}\n\n".encode()


Subscriber = asyncio.Queue[Event | None]  # None: the stream ends


@dataclass
class _Space:
    entries: deque[Entry]
    subscribers: set[Subscriber] = field(default_factory=set)


class SpaceLogs:
    """The in-memory logs of every web space (each at most `max_log` entries)."""

    def __init__(self, max_log: int) -> None:
        self.max_log = max_log
        self._spaces: dict[str, _Space] = {}
        self._cursor = itertools.count(int(time.time() * 1000))

    def _space(self, space: str) -> _Space:
        found = self._spaces.get(space)
        if found is None:
            found = self._spaces[space] = _Space(deque(maxlen=self.max_log))
        return found

    def new_entry(
        self, space: str, msg_id: str, role: str, author: str, text: str, files: list[Any]
    ) -> Entry:
        return {
            "cursor": next(self._cursor),
            "id": msg_id,
            "space": space,
            "role": role,
            "author": author,
            "text": text,
            "files": files,
            "ts": now_iso(),
        }

    def find_live(self, space: str, message_id: str) -> Entry | None:
        """The entry of a message still shown (not a tombstone of a withdrawn one)."""
        entries = self._space(space).entries
        return next((e for e in entries if e["id"] == message_id and not e.get("deleted")), None)

    def append(self, space: str, entry: Entry) -> None:
        self._space(space).entries.append(entry)
        self.push(space, Event("message", dict(entry), entry["cursor"]))

    def edit(self, space: str, message_id: str, text: str) -> None:
        """Change a message's text (a status, or a streamed answer's preview growing),
        keeping its role; a fresh cursor, at the end of the log, lets pollers pick it up."""
        entry = self.find_live(space, message_id)
        if entry is None:
            return  # withdrawn already, or never here: nothing to show
        log_ = self._space(space)
        log_.entries.remove(entry)
        entry.update(text=text, cursor=next(self._cursor))
        log_.entries.append(entry)
        self.push(space, Event("edit", dict(entry), entry["cursor"]))

    def delete(self, space: str, message_id: str) -> None:
        """Withdraw a message, leaving a tombstone at a new cursor for pollers."""
        log_ = self._space(space)
        # The live entry: a message withdrawn before (a failed post) may have a tombstone.
        entry = self.find_live(space, message_id)
        if entry is None:
            return
        log_.entries.remove(entry)
        # A tombstone at a new cursor tells pollers (after=...) to drop the message.
        tomb = {**entry, "cursor": next(self._cursor), "text": "", "files": [], "deleted": True}
        log_.entries.append(tomb)
        self.push(space, Event("delete", {"id": message_id, "space": space}, tomb["cursor"]))

    def after(self, space: str, after: int | None) -> list[Entry]:
        """Copies of the entries past `after`; all live ones for a fresh view (None)."""
        found = self._spaces.get(space)
        if found is None:
            return []
        if after is None:  # a fresh view: tombstones mean nothing to it
            return [dict(e) for e in found.entries if not e.get("deleted")]
        return [dict(e) for e in found.entries if e["cursor"] > after]

    def current_cursor(self, space: str) -> int:
        found = self._spaces.get(space)
        return max((e["cursor"] for e in found.entries), default=0) if found else 0

    # --------------------------------------------------------------- subscribers

    def subscribe(self, space: str) -> Subscriber:
        queue: Subscriber = asyncio.Queue()
        self._space(space).subscribers.add(queue)
        return queue

    def unsubscribe(self, space: str, queue: Subscriber) -> None:
        self._space(space).subscribers.discard(queue)

    def subscriber_count(self, space: str) -> int:
        found = self._spaces.get(space)
        return len(found.subscribers) if found else 0

    def push(self, space: str, event: Event) -> None:
        found = self._spaces.get(space)
        if found is None:
            return
        for queue in list(found.subscribers):
            if queue.qsize() >= QUEUE_LIMIT:
                # A client that does not read is cut off rather than growing memory.
                found.subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

    def close_streams(self) -> None:
        """End every live stream, so the HTTP server can shut down without waiting."""
        for space in self._spaces.values():
            for queue in list(space.subscribers):
                queue.put_nowait(None)
            space.subscribers.clear()
