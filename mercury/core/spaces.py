"""Conversation -> space mapping: the default space id of a conversation.

A space is the unit of state (folder, queue, roles, pause). By default each conversation
(channel, DM, group, web session) is its own space; linking several conversations to one
space is a stored override the pipeline applies before calling this.
"""

from __future__ import annotations

import hashlib
import re

from mercury.core.messages import ConversationRef

# Space ids become folder names and container labels, so they are kept to a safe alphabet.
SPACE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_LEN = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HASH_LEN = 10
# A web session named like another platform's default id ("slack-C123") could land on that
# conversation's space; such names take the hashed form instead.
_PLATFORM_LIKE = re.compile(r"(?i)(slack|discord|telegram|web)-")


def is_safe_space_id(space_id: str) -> bool:
    """Whether `space_id` is usable as a folder name and label value."""
    return SPACE_ID_RE.fullmatch(space_id) is not None


def default_space_id(conv: ConversationRef) -> str:
    """The space a conversation maps to when nothing links it elsewhere.

    Threads share their channel's space (thread_id is ignored): the space is the
    conversation's memory, a thread is only where a reply goes. Web chat sessions are
    named by the user, so a safe name is used as is ("demo"); anything else becomes
    `<platform>-<chat_id>`, sanitised, plus a hash of the original when sanitising changed
    it or it was cut to length, so two conversations never share an id by accident.
    """
    if (
        conv.platform == "web"
        and is_safe_space_id(conv.chat_id)
        and not _PLATFORM_LIKE.match(conv.chat_id)
    ):
        return conv.chat_id
    raw = f"{conv.platform}-{conv.chat_id}"
    clean = _UNSAFE.sub("_", raw)
    if clean == raw and is_safe_space_id(clean) and conv.platform != "web":
        return clean
    # Hash the unambiguous pair, not `raw`: "a-b" + "c" and "a" + "b-c" must differ.
    digest = hashlib.sha256(f"{conv.platform}\0{conv.chat_id}".encode()).hexdigest()[:_HASH_LEN]
    head = clean[: MAX_LEN - _HASH_LEN - 1]
    if not head[:1].isalnum():
        head = "s" + head[: MAX_LEN - _HASH_LEN - 2]
    return f"{head}-{digest}"
