"""Exceptions raised by the storage layer."""

from __future__ import annotations


class StorageError(Exception):
    """A storage problem worth one clear line to the operator (never contains a password)."""


class DuplicateMessage(StorageError):
    """A platform message id was stored before: the platform redelivered an event."""

    def __init__(self, platform: str, platform_message_id: str) -> None:
        super().__init__(
            f"message {platform_message_id!r} from {platform} is already stored (redelivered)"
        )
        self.platform = platform
        self.platform_message_id = platform_message_id


class NotFound(StorageError):
    """A row the caller named does not exist."""
