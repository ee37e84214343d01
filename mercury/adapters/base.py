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

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, runtime_checkable

from aiohttp.web import AbstractRouteDef

from mercury.config import SECRET_ENV, Secrets
from mercury.core.messages import Attachment, ConversationRef, InboundMessage, Reply, SentMessage
from mercury.logging import first_line, scrub_text

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


class RateLimited(Exception):
    """The platform refused a call for its rate limit; retry after `retry_after` seconds.

    Raised by an adapter's send, send_status, edit and delete once the platform said 429
    (Telegram's flood control, Slack's `ratelimited`, Discord's "You are being rate
    limited") and its client library gave up retrying by itself. The caller decides what
    to do with the time: a streaming preview skips edits until it has passed, a final
    reply waits and sends again. `what` names the call ("edit", "send") for logs; the
    message never carries a token or a URL.
    """

    retry_after: float

    def __init__(self, retry_after: float, what: str = "") -> None:
        self.retry_after = max(0.0, float(retry_after))
        self.what = what
        call = f"{what}: " if what else ""
        super().__init__(f"{call}rate limited, retry after {self.retry_after:g}s")


@dataclass(frozen=True, slots=True)
class AdapterState:
    """What the dashboard's Overview and /metrics show of one adapter, at one instant.

    `connected` is the adapter's own belief (a successful start, the gateway or socket
    up as far as its library says); `last_error` is one short, scrubbed line, never a
    token or a URL carrying one.
    """

    connected: bool = False
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_event_at: datetime | None = None


class StateTracker:
    """The mutable side of AdapterState, kept by each adapter; `state` is its snapshot.

    One small object so that each adapter's change is a few calls at the points its
    library already reports (connected, dropped, an event handed over, a failure).
    """

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._state = AdapterState()

    @property
    def state(self) -> AdapterState:
        return self._state

    def connected(self) -> None:
        self._state = replace(self._state, connected=True)

    def disconnected(self, error: str | None = None) -> None:
        self._state = replace(self._state, connected=False)
        if error is not None:
            self.error(error)

    def event(self) -> None:
        """An inbound event was handed to the sink."""
        self._state = replace(self._state, last_event_at=self._clock())

    def error(self, text: str) -> None:
        """Record a failure as one short line, scrubbed of anything credential-shaped."""
        line = scrub_text(text.strip().splitlines()[0] if text.strip() else "error")[:300]
        self._state = replace(self._state, last_error=line, last_error_at=self._clock())

    def failed(self, what: str, exc: BaseException) -> None:
        """Record `exc` as "<what> failed: <Type>: <first line, scrubbed>"."""
        self.error(f"{what} failed: {type(exc).__name__}: {first_line(exc, 160)}")


P = ParamSpec("P")
T = TypeVar("T")


class _Tracked(Protocol):
    tracker: StateTracker


def records_failure(
    what: str,
) -> Callable[
    [Callable[Concatenate[Any, P], Awaitable[T]]], Callable[Concatenate[Any, P], Awaitable[T]]
]:
    """Decorate an adapter's async method so that an exception it raises is recorded in
    `self.tracker` (and re-raised): a failed send shows on the Overview without each
    method growing its own try/except."""

    def wrap(
        method: Callable[Concatenate[Any, P], Awaitable[T]],
    ) -> Callable[Concatenate[Any, P], Awaitable[T]]:
        @functools.wraps(method)
        async def tracked(self: _Tracked, *args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await method(self, *args, **kwargs)
            except Exception as exc:
                self.tracker.failed(what, exc)
                raise

        return tracked

    return wrap


def raises_rate_limited(
    what: str, retry_after: Callable[[Exception], float | None]
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an adapter's outbound method so that its library's rate-limit error comes
    out as RateLimited, the one type the pipeline knows.

    `retry_after(exc)` is the platform's half: the seconds to wait when `exc` is the
    library's final word on a 429, None for any other exception (raised as it was).
    """

    def wrap(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(method)
        async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await method(*args, **kwargs)
            except RateLimited:
                raise
            except Exception as exc:
                seconds = retry_after(exc)
                if seconds is None:
                    raise
                raise RateLimited(seconds, what) from exc

        return translated

    return wrap


@runtime_checkable
class Adapter(Protocol):
    platform: str

    @property
    def state(self) -> AdapterState:
        """Connected or not, the last error and the last inbound event (read-only)."""

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
        """Post a reply (split as needed) with its files.

        A refusal for the platform's rate limit, after whatever the client library itself
        retried, is raised as RateLimited."""

    async def send_status(self, conversation: ConversationRef, text: str) -> SentMessage:
        """Post a status update ("still working (30s)"), later edited and deleted.

        Its own kind of outbound event: an adapter that shows statuses apart from replies
        (the web chat) never has to guess from a message's text which one it is.

        A refusal for the platform's rate limit, after whatever the client library itself
        retried, is raised as RateLimited."""

    async def set_typing(self, conversation: ConversationRef) -> None:
        """Show that a run is going (typing indicator, reaction or nothing)."""

    async def edit(self, conversation: ConversationRef, message_id: str, text: str) -> None:
        """Replace the text of a message this adapter sent: a status from send_status, or
        a message from send (a streaming preview, edited as the answer grows).

        `text` is Markdown and may be cut mid-construct (an open code fence or `**`): it
        is shown as well as the platform allows, cut at the platform's limit, and never
        refused for its markup. Editing to the text the message already has is no error.

        A refusal for the platform's rate limit, after whatever the client library itself
        retried, is raised as RateLimited."""

    async def delete(self, conversation: ConversationRef, message_id: str) -> None:
        """Delete a message this adapter sent; one already gone is no error.

        A refusal for the platform's rate limit, after whatever the client library itself
        retried, is raised as RateLimited."""

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
