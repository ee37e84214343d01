"""Spending caps, the pure part: reading caps, which one stops, when it resets, the words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mercury.core.budget import (
    ALLOWED,
    Cap,
    CapError,
    Caps,
    Scope,
    Spent,
    budget_notice,
    check,
    crossed_warning,
    parse_cap,
    period_start,
    reached,
    resets_at,
    share,
    warning_notice,
)
from mercury.core.messages import ConversationRef, InboundMessage
from mercury.core.router import Action, RouteContext, route
from mercury.core.triggers import TriggerRule

NOW = datetime(2026, 12, 31, 21, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "cap"),
    [
        (5, Cap(usd=5.0)),
        (2.5, Cap(usd=2.5)),
        ("$5", Cap(usd=5.0)),
        ("$ 0.50", Cap(usd=0.5)),
        ("5 usd", Cap(usd=5.0)),
        ("12 dollars", Cap(usd=12.0)),
        ("500k tokens", Cap(tokens=500_000)),
        ("2m tokens", Cap(tokens=2_000_000)),
        ("1500 tokens", Cap(tokens=1500)),
        ("$5 or 2m tokens", Cap(usd=5.0, tokens=2_000_000)),
        ("0", Cap(usd=0.0)),
    ],
)
def test_caps_are_read_in_dollars_or_tokens(text: object, cap: Cap) -> None:
    assert parse_cap(text) == cap
    assert parse_cap(cap.to_text()) == cap  # what a space stores reads back the same


@pytest.mark.parametrize("text", [None, "", "off", "none", "unlimited"])
def test_no_cap_has_several_spellings(text: object) -> None:
    assert parse_cap(text) is None


@pytest.mark.parametrize("text", ["five", "-3", -3, True, "5 euros", "$5 or $6", "tokens", [5]])
def test_an_unreadable_cap_says_what_is_expected(text: object) -> None:
    with pytest.raises(CapError, match="dollar amount"):
        parse_cap(text)


def test_a_cap_is_reached_by_either_limit() -> None:
    both = Cap(usd=1.0, tokens=1000)
    assert not reached(both, Spent(0.99, 999))
    assert reached(both, Spent(1.0, 0))
    assert reached(both, Spent(0.0, 1000))
    assert share(both, Spent(0.5, 900)) == pytest.approx(0.9)
    # A zero cap stops everything, even before anything was spent.
    assert reached(Cap(usd=0.0), Spent())


def test_a_dollar_cap_does_not_count_tokens_and_a_token_cap_not_dollars() -> None:
    assert not reached(Cap(usd=1.0), Spent(0.0, 10**9))
    assert not reached(Cap(tokens=10), Spent(99.0, 0))


def test_periods_are_utc_days_and_months() -> None:
    assert period_start(Scope.SPACE_DAY, NOW) == datetime(2026, 12, 31, tzinfo=UTC)
    assert period_start(Scope.SPACE_MONTH, NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    assert resets_at(Scope.USER_DAY, NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert resets_at(Scope.SPACE_MONTH, NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert resets_at(Scope.SPACE_MONTH, datetime(2026, 3, 9, tzinfo=UTC)) == datetime(
        2026, 4, 1, tzinfo=UTC
    )
    assert period_start(Scope.TASK_RUN, NOW) is None
    assert resets_at(Scope.TASK_RUN, NOW) is None


def test_the_widest_reached_cap_is_the_one_named() -> None:
    caps = Caps(instance_day=Cap(usd=10), space_day=Cap(usd=1), user_day=Cap(usd=0.5))
    spent = {Scope.INSTANCE_DAY: Spent(10.0, 0), Scope.SPACE_DAY: Spent(2.0, 0)}
    verdict = check(caps, spent, NOW)
    assert not verdict.allowed
    assert verdict.scope is Scope.INSTANCE_DAY
    assert verdict.resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    # Below the instance's cap, the space's is next.
    spent[Scope.INSTANCE_DAY] = Spent(2.0, 0)
    assert check(caps, spent, NOW).scope is Scope.SPACE_DAY
    # Nothing spent: allowed; no caps at all: allowed.
    assert check(caps, {}, NOW) == ALLOWED
    assert check(Caps(), spent, NOW) == ALLOWED


def test_an_estimate_that_would_pass_a_cap_stops_a_run_before_it_starts() -> None:
    caps = Caps(task_run=Cap(usd=0.5), space_day=Cap(usd=5))
    assert check(caps, {}, NOW, estimate=Spent(0.4, 100)).allowed
    verdict = check(caps, {}, NOW, estimate=Spent(0.6, 100))
    assert (verdict.allowed, verdict.scope) == (False, Scope.TASK_RUN)
    # ...and one that would take the space past its day.
    verdict = check(caps, {Scope.SPACE_DAY: Spent(4.8, 0)}, NOW, estimate=Spent(0.3, 0))
    assert verdict.scope is Scope.SPACE_DAY


def test_a_space_override_replaces_a_cap_and_none_removes_it() -> None:
    base = Caps(instance_day=Cap(usd=20), space_day=Cap(usd=5), user_day=Cap(usd=1))
    mine = base.with_overrides({Scope.SPACE_DAY: Cap(usd=8), Scope.USER_DAY: None})
    assert mine.space_day == Cap(usd=8)
    assert mine.user_day is None
    # The instance's cap is the operator's: a space cannot override it.
    assert base.with_overrides({Scope.INSTANCE_DAY: None}).instance_day == Cap(usd=20)


def test_the_notice_says_what_when_and_who_in_one_line() -> None:
    caps = Caps(space_day=Cap(usd=5))
    verdict = check(caps, {Scope.SPACE_DAY: Spent(5.2, 0)}, NOW)
    text = budget_notice(verdict, NOW)
    assert "\n" not in text
    assert "this space's daily spending cap ($5.00)" in text
    assert "It resets at 00:00 UTC" in text or "2027-01-01 00:00 UTC" in text
    assert "(in 2 h 30 m)" in text
    assert "An admin of this space can raise it with /budget." in text

    inst = check(Caps(instance_day=Cap(tokens=1000)), {Scope.INSTANCE_DAY: Spent(0, 1000)}, NOW)
    text = budget_notice(inst, NOW)
    assert "Mercury's daily spending cap for all spaces (1,000 tokens)" in text
    assert "The operator can raise it (budgets.instance_day in mercury.yaml)." in text

    task = check(Caps(task_run=Cap(usd=0.5)), {Scope.TASK_RUN: Spent(0.6, 0)}, NOW)
    assert "It applies to each run of the task." in budget_notice(task, NOW)


def test_admins_are_warned_at_80_percent_of_calendar_caps_only() -> None:
    caps = Caps(space_day=Cap(usd=5), user_day=Cap(usd=1), task_run=Cap(usd=1))
    spent = {
        Scope.SPACE_DAY: Spent(3.9, 0),
        Scope.USER_DAY: Spent(0.8, 0),
        Scope.TASK_RUN: Spent(0.95, 0),
    }
    assert crossed_warning(caps, spent) == [Scope.USER_DAY]
    spent[Scope.SPACE_DAY] = Spent(4.0, 0)
    assert crossed_warning(caps, spent) == [Scope.SPACE_DAY, Scope.USER_DAY]
    text = warning_notice(Scope.USER_DAY, Cap(usd=1), Spent(0.8, 0), NOW, who="Ada")
    assert text.startswith("Heads-up for admins: 80% of the daily spending cap of Ada")
    assert "($1.00) is used ($0.80)" in text


def _message(text: str) -> InboundMessage:
    return InboundMessage(
        platform="slack",
        conversation=ConversationRef("slack", "C1"),
        author_id="U1",
        author_name="Ada",
        text=text,
        platform_message_id="m1",
        ts=NOW,
        is_dm=True,
    )


def test_the_router_refuses_a_run_over_budget_but_lets_commands_through() -> None:
    ctx = RouteContext(
        rule=TriggerRule(),
        role="member",
        permissions=frozenset({"run", "stop"}),
        budget_notice="Sorry — this space's daily spending cap ($5.00) is reached.",
    )
    refused = route(_message("summarise the thread"), ctx, NOW)
    assert refused.action is Action.REFUSE
    assert refused.notice == ctx.budget_notice
    assert refused.rate is None  # refused before the rate limit: no quota used
    assert route(_message("stop"), ctx, NOW).action is Action.COMMAND
