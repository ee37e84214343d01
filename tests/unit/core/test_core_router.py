from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mercury.core.commands import CommandKind
from mercury.core.messages import Attachment, ConversationRef, InboundMessage
from mercury.core.permissions import permissions_of
from mercury.core.ratelimit import RateRule
from mercury.core.router import (
    Action,
    RouteContext,
    failure_notice,
    is_paused,
    route,
    status_text,
)
from mercury.core.triggers import TriggerMode, TriggerRule

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def msg(text: str = "<@B> hello", **kw: object) -> InboundMessage:
    fields: dict[str, object] = {"mentions_bot": True}
    fields.update(kw)
    return InboundMessage(
        platform="slack",
        platform_message_id="m1",
        conversation=ConversationRef("slack", "C1"),
        author_id="U1",
        author_name="Ann",
        text=text,
        ts=NOW,
        **fields,  # type: ignore[arg-type]
    )


def ctx(role: str = "member", **kw: object) -> RouteContext:
    base = RouteContext(
        rule=TriggerRule(),
        role=role,
        permissions=permissions_of(role),
        rate_rule=RateRule(burst=2, burst_window_s=60, daily={"admin": None, "member": 10}),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_run() -> None:
    d = route(msg(), ctx(), NOW)
    assert d.action is Action.RUN and d.store_as == "user" and d.prompt == "hello"
    assert d.notice is None and d.reason


def test_bot_messages_are_ambient() -> None:
    d = route(msg(from_bot=True, is_dm=True), ctx(), NOW)
    assert d.action is Action.AMBIENT and d.store_as == "ambient"


def test_not_triggered_is_ambient() -> None:
    d = route(msg("just chatting", mentions_bot=False), ctx(), NOW)
    assert d.action is Action.AMBIENT and d.store_as == "ambient"
    # An unaddressed "stop" is conversation, not a command.
    assert route(msg("stop", mentions_bot=False), ctx(), NOW).action is Action.AMBIENT


def test_muted_and_duplicates_are_dropped() -> None:
    for c in (ctx(muted=True), ctx(duplicate=True), ctx("admin", muted=True)):
        d = route(msg("<@B> stop"), c, NOW)
        assert d.action is Action.IGNORE and d.store_as is None and d.notice is None


def test_commands() -> None:
    d = route(msg("<@B> stop"), ctx(), NOW)
    assert d.action is Action.COMMAND and d.command is not None
    assert d.command.kind is CommandKind.STOP
    d = route(msg("/status", mentions_bot=False, is_dm=True), ctx(), NOW)
    assert d.action is Action.COMMAND


@pytest.mark.parametrize("text", ["<@B> /pause 1h", "<@B> /resume", "<@B> /model switch 2"])
def test_admin_commands_refused_for_members(text: str) -> None:
    d = route(msg(text), ctx(), NOW)
    assert d.action is Action.REFUSE and d.notice and "permission" in d.notice
    assert route(msg(text), ctx("admin"), NOW).action is Action.COMMAND


def test_bad_command_arguments() -> None:
    d = route(msg("<@B> /pause forever-ish"), ctx("admin"), NOW)
    assert d.action is Action.REFUSE and d.notice and "duration" in d.notice
    # Permission is checked first: no hints about syntax for those who may not use it.
    d = route(msg("<@B> /pause forever-ish"), ctx(), NOW)
    assert d.notice and "permission" in d.notice


def test_paused() -> None:
    until = NOW + timedelta(minutes=25)
    d = route(msg(), ctx(paused=True, paused_until=until), NOW)
    assert d.action is Action.REFUSE and d.store_as == "user"
    assert d.notice == "I'm paused here until 12:25 UTC (in 25 m)."
    d = route(msg(), ctx(paused=True), NOW)
    assert d.notice and "/resume" in d.notice
    # Commands still work while paused.
    d = route(msg("<@B> /resume"), ctx("admin", paused=True), NOW)
    assert d.action is Action.COMMAND
    # An expired pause is over.
    assert route(msg(), ctx(paused=True, paused_until=NOW), NOW).action is Action.RUN


def test_always_mode_refusals_are_silent() -> None:
    always = TriggerRule(match=TriggerMode.ALWAYS)
    chatter = msg("nice weather", mentions_bot=False)
    d = route(chatter, ctx(rule=always, paused=True), NOW)
    assert d.action is Action.AMBIENT and d.notice is None
    d = route(chatter, ctx("guest", rule=always), NOW)
    assert d.action is Action.AMBIENT and d.notice is None
    # Addressed explicitly, the refusal is said.
    assert route(msg(), ctx(rule=always, paused=True), NOW).action is Action.REFUSE


def test_no_run_permission() -> None:
    d = route(msg(), ctx("guest"), NOW)
    assert d.action is Action.REFUSE and d.notice and "permission" in d.notice
    # Read-only commands remain available.
    assert route(msg("<@B> /help"), ctx("guest"), NOW).action is Action.COMMAND


def test_rate_limited() -> None:
    recent = [NOW - timedelta(seconds=5), NOW - timedelta(seconds=20)]
    d = route(msg(), ctx(recent=recent), NOW)
    assert d.action is Action.REFUSE and d.rate is not None and d.rate.limit == "burst"
    assert d.notice == d.rate.message and "try again in 40 s" in d.notice
    d = route(msg(), ctx(used_today=10), NOW)
    assert d.action is Action.REFUSE and d.rate is not None and d.rate.limit == "daily"
    assert route(msg(), ctx("admin", used_today=10_000), NOW).action is Action.RUN
    # Commands are never rate-limited.
    assert route(msg("<@B> stop"), ctx(recent=recent), NOW).action is Action.COMMAND


def test_empty_prompt() -> None:
    assert route(msg("<@B>"), ctx(), NOW).action is Action.AMBIENT
    with_file = msg("<@B>", attachments=(Attachment("a.png"),))
    assert route(with_file, ctx(), NOW).action is Action.RUN


def test_is_paused() -> None:
    assert not is_paused(False, None, NOW)
    assert is_paused(True, None, NOW)
    assert is_paused(True, NOW + timedelta(seconds=1), NOW)
    assert not is_paused(True, NOW - timedelta(seconds=1), NOW)


def test_failure_notices_are_short_and_plain() -> None:
    assert (
        failure_notice("timeout", 600)
        == "Sorry — that took too long (over 10 min) and was stopped."
    )
    assert "took too long" in failure_notice("timeout")
    for reason in ("oom", "crashed", "error", "aborted", "rate_limited"):
        text = failure_notice(reason, "Traceback: KeyError 'x'")  # type: ignore[arg-type]
        assert text and len(text) < 120 and "Traceback" not in text
    assert "42 s" in failure_notice("rate_limited", 41.5)
    later = datetime(2024, 5, 3, 9, 0, tzinfo=UTC)
    assert "2024-05-03 09:00 UTC" in failure_notice("paused", later, now=NOW)


def test_status_text() -> None:
    idle = status_text(running=False, queue_length=0, model=None, now=NOW)
    assert "Idle." in idle and "Nothing waiting." in idle and "default" in idle
    busy = status_text(
        running=True,
        running_for_s=75,
        queue_length=2,
        model="claude-sonnet",
        paused=True,
        paused_until=NOW + timedelta(hours=2),
        now=NOW,
    )
    assert "for 1 m 15 s" in busy and "2 requests waiting" in busy
    assert "paused" in busy and "claude-sonnet" in busy
    assert "1 request waiting" in status_text(running=False, queue_length=1, model="m", now=NOW)


def test_error_notices_say_what_happened_and_who_must_act() -> None:
    auth = failure_notice("error", "auth")
    assert "API key" in auth and "operator must" in auth and "try again" not in auth.lower()
    assert "(5 min)" in failure_notice("error", "budget", limit=300)
    assert "(40)" in failure_notice("error", "max_turns", limit=40)
    assert "operator" in failure_notice("error", "model")
    assert "operator must" in failure_notice("error", "bad_input")
    # An error class the host does not know gets the generic notice, never its own text.
    assert failure_notice("error", "weird<b>") == failure_notice("error")
    for cls in ("auth", "budget", "max_turns", "model", "bad_input", "internal", "agent_cli"):
        assert len(failure_notice("error", cls, limit=60)) < 220
