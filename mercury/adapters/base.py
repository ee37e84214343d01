"""The adapter contract: a few methods, in the spirit of opsdroid's connectors.

An adapter turns platform events into InboundMessage and hands them to the sink; it sends
Replies back. It never touches the database and makes no routing decisions. The sink
raises only InboundUnavailable, when it could not record a message.

Each platform is a package `mercury/adapters/<platform>/` whose `__init__` exports
`from_config(config, secrets) -> Adapter`, `check_credentials(config, secrets)` (its live
check for `mercury doctor`), `required_secrets(section)` (the Secrets it needs, which its
constructor checks with `require_secrets` and doctor lists) and `SETUP_DOC`;
`mercury.adapters.registry` lists the packages. The
App mounts every adapter's `routes()` on the main HTTP server in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from aiohttp.web import AbstractRouteDef

from mercury.config import SECRET_ENV, Secrets
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, Reply, SentMessage

InboundSink = Callable[[InboundMessage], Awaitable[None]]


class InboundUnavailable(Exception):
    """Raised by the sink when a message could not be recorded (the database is locked or
    unreachable, the disk is full): it is not queued, and the sender must be told to try
    again instead of the message being lost without a word. The web chat answers 503 with
    `reason`; a webhook answers 5xx so that the platform delivers the event again.

    Delivering the same platform message id again is safe: what was stored of it is
    recognised as a duplicate. Any other failure of one message is the sink's to log; it
    never reaches the adapter. `reason` is short and safe to show: no paths, no secrets.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class Adapter(Protocol):
    platform: str

    @property
    def bot_handles(self) -> tuple[str, ...]:
        """The literal ways the bot is addressed here ("<@U0BOT>", "@mercury_bot"), for
        `trigger.match: mention`; () when the platform has none (or before start())."""

    def routes(self) -> list[AbstractRouteDef]:
        """The HTTP routes this adapter serves on Mercury's main public server (webhooks,
        the web chat's pages and API); [] when none. Mounted by the App before it listens."""

    async def start(self, sink: InboundSink) -> None:
        """Connect and begin delivering inbound messages to `sink`."""

    async def stop(self) -> None:
        """Disconnect; no message is delivered to the sink afterwards."""

    async def send(self, reply: Reply) -> SentMessage:
        """Post a reply (split as needed) with its files."""

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """Post a status update ("still working (30s)"), later edited and deleted.

        Its own kind of outbound event: an adapter that shows statuses apart from replies
        (the web chat) never has to guess from a message's text which one it is."""

    async def set_typing(self, conversation: ConversationRef) -> None:
        """Show that a run is going (typing indicator, reaction or nothing)."""

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        """Edit a message this adapter sent (the "still working" status)."""

    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        """Delete a message this adapter sent."""

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """Fetch an inbound attachment's bytes; raise ValueError past `max_bytes`."""


def require_secrets(platform: str, names: Sequence[str], secrets: Secrets, why: str = "") -> None:
    """ValueError naming every variable of `names` (a package's `required_secrets`) that is
    unset, as one line: what the App says at start and the adapter's constructor refuses."""
    missing = [
        SECRET_ENV[n]
        for n in names
        if (value := getattr(secrets, n)) is None or not value.get_secret_value().strip()
    ]
    if missing:
        raise ValueError(f"{platform}: {', '.join(missing)} is not set{why}")
