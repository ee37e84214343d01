"""The decision for one inbound message, and the short texts users see about it.

`route` is pure: the pipeline looks up everything it needs first (the space's rule, pause,
mute, role, rate counts) and acts on the Decision afterwards (store, enqueue, reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from mercury.core.commands import Command, parse_command
from mercury.core.messages import InboundMessage
from mercury.core.permissions import Permission, command_permission
from mercury.core.ratelimit import RateRule, RateVerdict, check_rate
from mercury.core.timefmt import as_utc, format_clock, format_wait
from mercury.core.triggers import TriggerRule, should_trigger


class Action(StrEnum):
    IGNORE = "ignore"  # drop: not stored, nothing said
    AMBIENT = "ambient"  # store as context, no run
    COMMAND = "command"  # the pipeline executes `command`
    RUN = "run"  # enqueue a run with `prompt`
    REFUSE = "refuse"  # tell the user `notice`, no run


StoreAs = Literal["user", "ambient"]


@dataclass(frozen=True)
class RouteContext:
    """What the pipeline looked up for this message's space and author."""

    rule: TriggerRule
    role: str
    permissions: frozenset[str]
    rate_rule: RateRule = field(default_factory=RateRule)
    # Accepted triggering requests of this author in this space, and their runs today.
    recent: Sequence[datetime] = ()
    used_today: int = 0
    # paused with paused_until None = until /resume; a pause past its time is over.
    paused: bool = False
    paused_until: datetime | None = None
    muted: bool = False
    # Same platform + message id already stored: a redelivered event.
    duplicate: bool = False
    # Set when a spending cap of the space, the author or the instance is reached: what to
    # tell the author (core.budget.budget_notice).
    budget_notice: str | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    store_as: StoreAs | None
    prompt: str = ""
    command: Command | None = None
    notice: str | None = None  # what to tell the user, if anything
    reason: str = ""  # for logs
    rate: RateVerdict | None = None


def is_paused(paused: bool, paused_until: datetime | None, now: datetime) -> bool:
    """A timed pause ends by itself; the pipeline need not race to clear it."""
    if not paused:
        return False
    return paused_until is None or as_utc(paused_until) > as_utc(now)


_DENIED: dict[str, str] = {
    Permission.STOP: "stop runs",
    Permission.PAUSE: "pause or resume me",
    Permission.MODEL: "switch the model",
    Permission.CLEAR: "clear the conversation",
    Permission.ADMIN: "change this space's admin settings (roles, mutes, spending caps, "
    "other people's memory)",
    Permission.RUN: "use me",
}


def denied_notice(permission: str) -> str:
    """The refusal for a missing permission (names the action, not the permission)."""
    what = _DENIED.get(permission, permission)
    return f"Sorry — you don't have permission to {what} here."


def route(msg: InboundMessage, ctx: RouteContext, now: datetime) -> Decision:
    """Decide what to do with one inbound message.

    Order matters: duplicates and mutes first (nothing else may leak through), bots before
    triggers (bots never start runs), commands before pause (so /resume works while paused,
    and /budget while over budget) and before rate limits (controls are never
    rate-limited); a spending cap before the rate limit (a refused message uses no quota).

    Muted authors are dropped entirely, not kept as ambient: a mute exists to keep that
    person's text away from the agent, and ambient context goes into its prompt.
    When a message triggered only because the space is in `always` mode, pause and
    permission refusals are silent (stored as ambient): a notice for every line of
    chatter would be noise. Rate-limit refusals always say when to retry.
    """
    if ctx.duplicate:
        return Decision(Action.IGNORE, None, reason="duplicate delivery")
    if ctx.muted:
        return Decision(Action.IGNORE, None, reason="author is muted")
    if msg.from_bot:
        return Decision(Action.AMBIENT, "ambient", reason="message from a bot")
    trig = should_trigger(msg, ctx.rule)
    if not trig.triggered:
        return Decision(Action.AMBIENT, "ambient", reason=f"not triggered: {trig.why}")
    explicit = trig.why != "always"

    command = parse_command(trig.prompt)
    if command is not None:
        needed = command_permission(command)
        if needed is not None and needed not in ctx.permissions:
            return Decision(
                Action.REFUSE,
                "user",
                trig.prompt,
                command,
                denied_notice(needed),
                f"command {command.kind.value} needs {needed.value} (role {ctx.role})",
            )
        if command.error:
            return Decision(
                Action.REFUSE,
                "user",
                trig.prompt,
                command,
                command.error,
                f"bad arguments for {command.kind.value}",
            )
        return Decision(
            Action.COMMAND, "user", trig.prompt, command, None, f"command {command.kind.value}"
        )

    if is_paused(ctx.paused, ctx.paused_until, now):
        if not explicit:
            return Decision(Action.AMBIENT, "ambient", reason="paused (always mode, silent)")
        return Decision(
            Action.REFUSE,
            "user",
            trig.prompt,
            notice=failure_notice("paused", ctx.paused_until, now=now),
            reason="space is paused",
        )
    if Permission.RUN not in ctx.permissions:
        if not explicit:
            return Decision(Action.AMBIENT, "ambient", reason="no run permission (always mode)")
        return Decision(
            Action.REFUSE,
            "user",
            trig.prompt,
            notice=denied_notice(Permission.RUN),
            reason=f"role {ctx.role} lacks run",
        )
    if not trig.prompt and not msg.attachments:
        # A bare mention: nothing to do, and not worth a run or a rate-limit slot.
        return Decision(Action.AMBIENT, "ambient", reason="empty prompt")
    if ctx.budget_notice is not None:
        if not explicit:
            return Decision(Action.AMBIENT, "ambient", reason="over budget (always mode, silent)")
        return Decision(
            Action.REFUSE, "user", trig.prompt, notice=ctx.budget_notice, reason="over budget"
        )
    verdict = check_rate(ctx.recent, ctx.used_today, ctx.role, ctx.rate_rule, now)
    if not verdict.allowed:
        return Decision(
            Action.REFUSE,
            "user",
            trig.prompt,
            notice=verdict.message,
            reason=f"rate limited ({verdict.limit})",
            rate=verdict,
        )
    return Decision(Action.RUN, "user", trig.prompt, reason=f"triggered ({trig.why})", rate=verdict)


FailureReason = Literal[
    "timeout", "oom", "crashed", "error", "aborted", "rate_limited", "paused", "disk"
]

# Said when a message is accepted but no run may start: the host is short of disk.
DISK_WAIT_NOTICE = (
    "The server is low on disk space, so I can't start on this yet. Your message is saved "
    "and will be answered once the operator frees some space."
)

# Why a message was given up without a run, when only the operator can fix the cause: the
# Docker engine stayed down past container.engine_outage_limit, or the agent image is gone
# and rebuilding it failed. (Short outages and rebuilds are waited out in silence.)
Unavailable = Literal["engine", "image"]
_UNAVAILABLE: dict[str, str] = {
    "engine": (
        "Sorry — I can't work on this: the server's container engine (Docker) has been down "
        "for too long. The operator must get it running again; then please send your "
        "message again."
    ),
    "image": (
        "Sorry — I can't work on this: my agent image is missing and rebuilding it failed. "
        "The operator must fix it (mercury image build); then please send your message again."
    ),
}


def unavailable_notice(what: Unavailable) -> str:
    """The plain notice for a message given up because runs cannot work (see Unavailable)."""
    return _UNAVAILABLE[what]


def _duration_words(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return format_wait(seconds)


# What the agent's result.json `error_class` means for the user, in plain words; where the
# user cannot fix the cause, the notice says that the operator must.
_ERROR_NOTICES: dict[str, str] = {
    "auth": (
        "Sorry — the AI model provider refused Mercury's API key, so I can't answer. "
        "Trying again won't help: the operator must fix the key (mercury doctor checks it)."
    ),
    "model": (
        "Sorry — the AI model couldn't be reached (every configured model failed). Please try "
        "again in a few minutes; if it keeps happening, the operator should check the model "
        "settings."
    ),
    "bad_input": (
        "Sorry — something went wrong on my side before I could start. Trying again won't "
        "help: the operator must look at Mercury's log."
    ),
    "internal": (
        "Sorry — something went wrong on my side while I was working on that. Please try "
        "again; if it keeps happening, the operator must look at Mercury's log."
    ),
    "agent_cli": (
        "Sorry — the agent program failed while working on that. Please try again; if it "
        "keeps happening, the operator must look at Mercury's log."
    ),
}


def _error_notice(error_class: object, limit: float | None) -> str:
    if error_class == "budget":
        within = f" within its time budget ({_duration_words(limit)})" if limit else " in time"
        return f"Sorry — the model didn't finish{within}, so I stopped. Try a smaller request."
    if error_class == "max_turns":
        steps = f" ({int(limit)})" if limit else ""
        return (
            f"Sorry — that needed more steps than I'm allowed{steps}. Try splitting it into "
            "smaller requests."
        )
    if isinstance(error_class, str) and error_class in _ERROR_NOTICES:
        return _ERROR_NOTICES[error_class]
    return "Sorry — I couldn't finish that. Please try again in a moment."


def failure_notice(
    reason: FailureReason,
    detail: float | datetime | str | None = None,
    *,
    now: datetime | None = None,
    limit: float | None = None,
) -> str:
    """A short, plain message for the user; internals stay in the log and the run record.

    `detail`: timeout -> the limit in seconds; error -> result.json's error_class (with
    `limit`: the model's time budget for "budget", model.max_turns for "max_turns");
    rate_limited -> seconds until a retry makes sense; paused -> the pause's end (None =
    until /resume; pass `now` for "in 25 m").
    Other reasons ignore it on purpose: error details are not for chat.
    """
    if reason == "timeout":
        limit = f" (over {_duration_words(detail)})" if isinstance(detail, int | float) else ""
        return f"Sorry — that took too long{limit} and was stopped."
    if reason == "oom":
        return "Sorry — that needed more memory than I have and was stopped. Try something smaller."
    if reason == "crashed":
        return "Sorry — something went wrong while I was working on that. Please try again."
    if reason == "error":
        return _error_notice(detail, limit)
    if reason == "aborted":
        return "Stopped."
    if reason == "disk":
        if detail == "space":
            return (
                "Sorry — I had to stop: the files in this conversation grew past their size "
                "limit. Ask me to delete some, then try again."
            )
        return "Sorry — I had to stop: the server ran low on disk space. Please try again later."
    if reason == "rate_limited":
        if isinstance(detail, int | float):
            wait = format_wait(detail)
            return f"Sorry — I'm getting too many requests right now. Try again in {wait}."
        return "Sorry — I'm getting too many requests right now. Please try again in a few minutes."
    if reason == "paused":
        if isinstance(detail, datetime):
            when = format_clock(detail, now or detail)
            if now is not None:
                when += f" (in {format_wait((as_utc(detail) - as_utc(now)).total_seconds())})"
            return f"I'm paused here until {when}."
        return "I'm paused here until an admin sends /resume."
    return "Sorry — that didn't work. Please try again."


def status_text(
    *,
    running: bool,
    queue_length: int,
    model: str | None,
    paused: bool = False,
    paused_until: datetime | None = None,
    running_for_s: float | None = None,
    now: datetime,
) -> str:
    """The /status reply: run state, queue, pause and model, one fact per line."""
    lines = []
    if running:
        since = f" (for {format_wait(running_for_s)})" if running_for_s is not None else ""
        lines.append(f"Working on a request{since}.")
    else:
        lines.append("Idle.")
    if queue_length:
        lines.append(f"{queue_length} request{'s' if queue_length != 1 else ''} waiting.")
    else:
        lines.append("Nothing waiting.")
    if is_paused(paused, paused_until, now):
        lines.append(failure_notice("paused", paused_until, now=now))
    lines.append(f"Model: {model or 'default'}.")
    return "\n".join(lines)
