"""The queue payload: what is stored with a job so that it can run after a restart.

One typed record for every writer (the inbound handler, the scheduler) and the one reader
(the run executor). It is stored as JSON in the job's row, so `from_dict` must read what
the previous version stored (no `user_key`, no `task_id`) and must say what is wrong with a
row it cannot read, rather than fail later with a bare KeyError deep in a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mercury.core.messages import ConversationRef


class PayloadError(ValueError):
    """A stored job payload that cannot be read; the message names the field."""


@dataclass(frozen=True)
class JobPayload:
    """Enough to run a job and deliver its answer, with no other lookup than the space."""

    platform: str
    chat_id: str
    thread_id: str | None
    reply_to: str | None  # the platform message id the answer replies to
    message_id: int | None  # the stored message this job answers; None for a task
    prompt: str
    author_id: str
    author_name: str
    role: str
    attachments: tuple[str, ...] = ()  # paths relative to /space
    # "platform:user_id" of the sender, counted against the rate limit; None for a task.
    user_key: str | None = None
    task_id: int | None = None  # the scheduled task that queued the job

    @property
    def conversation(self) -> ConversationRef:
        return ConversationRef(self.platform, self.chat_id, self.thread_id)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored in the job's row."""
        return {
            "platform": self.platform,
            "chat_id": self.chat_id,
            "thread_id": self.thread_id,
            "reply_to": self.reply_to,
            "message_id": self.message_id,
            "prompt": self.prompt,
            "author_id": self.author_id,
            "author_name": self.author_name,
            "role": self.role,
            "attachments": list(self.attachments),
            "user_key": self.user_key,
            "task_id": self.task_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobPayload:
        """Read a stored payload; raises PayloadError naming the first bad field.

        Only `platform` and `chat_id` are required (without them there is nowhere to
        answer); the rest default as the previous version did. Unknown keys are ignored.
        """
        if not isinstance(d, Mapping):
            raise PayloadError(f"job payload must be an object, got {type(d).__name__}")
        return cls(
            platform=_text(d, "platform", required=True),
            chat_id=_text(d, "chat_id", required=True),
            thread_id=_optional_text(d, "thread_id"),
            reply_to=_optional_text(d, "reply_to"),
            message_id=_optional_int(d, "message_id"),
            prompt=_text(d, "prompt"),
            author_id=_text(d, "author_id"),
            author_name=_text(d, "author_name"),
            role=_text(d, "role", default="member"),
            attachments=_texts(d, "attachments"),
            user_key=_optional_text(d, "user_key"),
            task_id=_optional_int(d, "task_id"),
        )


def _text(d: Mapping[str, Any], key: str, *, required: bool = False, default: str = "") -> str:
    if key not in d or d[key] is None:
        if required:
            raise PayloadError(f"job payload has no {key!r}")
        return default
    value = d[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a numeric platform id, as an older writer may have stored it
    if not isinstance(value, str):
        raise PayloadError(f"job payload {key!r} must be a string, got {type(value).__name__}")
    return value


def _optional_text(d: Mapping[str, Any], key: str) -> str | None:
    return _text(d, key) if d.get(key) is not None else None


def _optional_int(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"job payload {key!r} must be an integer, got {type(value).__name__}")
    return value


def _texts(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key)
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PayloadError(f"job payload {key!r} must be a list of strings")
    return tuple(value)


__all__ = ["JobPayload", "PayloadError"]
