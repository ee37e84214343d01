"""The scheduled task decisions (core/tasks.py), with fixed times: who a task acts for, the
order of the checks, what the chat is told and how often, retries, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercury.core.budget import BudgetVerdict, Cap, Scope, Spent
from mercury.core.permissions import MEMBER_PERMISSIONS
from mercury.core.ratelimit import RateVerdict
from mercury.core.tasks import (
    MISSED,
    Creator,
    FailureStep,
    RefusalKind,
    RetryRule,
    TaskFacts,
    admit,
    after_failure,
    creator_of,
    failed_detail,
    failure_report,
    missed_while_down,
    refusal_kind,
    refusal_notice,
    retry_delay,
    retrying_detail,
    should_announce,
    skips_missed,
    task_label,
)

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
OVER = BudgetVerdict(
    False,
    Scope.SPACE_DAY,
    Cap(usd=5.0),
    Spent(5.2, 1000),
    datetime(2026, 3, 11, tzinfo=UTC),
)
LIMITED = RateVerdict(False, "burst", 42.0, "Too many requests")


# --------------------------------------------------------------------------- creators


@pytest.mark.parametrize(
    ("stored", "creator"),
    [
        ("web:alice", Creator(user_key="web:alice")),
        ("telegram:42", Creator(user_key="telegram:42")),
        ("operator", Creator(operator=True)),
        ("dashboard:admin", Creator(operator=True)),  # stored by the dashboard
        ("run:abc123", Creator()),  # before creators were recorded
        (None, Creator()),
        ("", Creator()),
        ("mastodon:bob", Creator()),  # not a platform of Mercury's
        ("web:", Creator()),
    ],
)
def test_creator_of(stored: str | None, creator: Creator) -> None:
    assert creator_of(stored) == creator
    assert creator.known is (stored not in (None, "", "run:abc123", "mastodon:bob", "web:"))


# --------------------------------------------------------------------------- admission


def test_a_task_with_nothing_against_it_runs() -> None:
    assert admit(TaskFacts(), NOW) is None
    assert admit(TaskFacts(role="member", permissions=MEMBER_PERMISSIONS), NOW) is None


def test_checks_come_in_order_pause_mute_permission_budget_rate() -> None:
    everything = TaskFacts(
        paused=True,
        muted=True,
        role="guest",
        permissions=frozenset(),
        budget=OVER,
        rate=LIMITED,
    )
    order = []
    facts = everything
    for unset in ("paused", "muted", "permissions", "budget", "rate"):
        refusal = admit(facts, NOW)
        assert refusal is not None
        order.append(refusal.kind)
        facts = _without(facts, unset)
    assert admit(facts, NOW) is None
    assert order == [
        RefusalKind.PAUSED,
        RefusalKind.MUTED,
        RefusalKind.PERMISSION,
        RefusalKind.BUDGET,
        RefusalKind.RATE,
    ]


def _without(facts: TaskFacts, name: str) -> TaskFacts:
    from dataclasses import replace

    cleared = {
        "paused": {"paused": False},
        "muted": {"muted": False},
        "permissions": {"permissions": MEMBER_PERMISSIONS},
        "budget": {"budget": BudgetVerdict(True)},
        "rate": {"rate": RateVerdict(True)},
    }[name]
    return replace(facts, **cleared)  # type: ignore[arg-type]


def test_refusals_say_why_in_plain_words() -> None:
    paused = admit(TaskFacts(paused=True), NOW)
    assert paused is not None
    assert paused.detail == "the space is paused"
    assert paused.why == "this space is paused until an admin sends /resume"
    timed = admit(TaskFacts(paused=True, paused_until=NOW + timedelta(hours=2)), NOW)
    assert timed is not None and timed.why == "this space is paused until 14:30 UTC"

    denied = admit(TaskFacts(role="guest", permissions=frozenset()), NOW)
    assert denied is not None
    assert denied.detail == "no permission: the creator's role (guest) may not use the agent here"

    over = admit(TaskFacts(budget=OVER), NOW)
    assert over is not None
    assert over.detail == "spending cap: this space's daily spending cap ($5.00) is reached"
    assert over.why.endswith("is reached; it resets at 2026-03-11 00:00 UTC")

    rate = admit(TaskFacts(rate=LIMITED), NOW)
    assert rate is not None and rate.kind is RefusalKind.RATE
    assert rate.detail.startswith("rate limit: ") and "42 s" in rate.detail


def test_a_cap_the_tasks_usual_cost_would_pass_says_so() -> None:
    would = BudgetVerdict(False, Scope.TASK_RUN, Cap(usd=0.5), Spent(0.0, 0), None)
    refusal = admit(TaskFacts(budget=would, estimate=Spent(0.8, 4000)), NOW)
    assert refusal is not None
    assert refusal.detail == (
        "spending cap: this task's spending cap per run ($0.50) would be passed by the "
        "task's usual cost ($0.80)"
    )
    assert "resets" not in refusal.why  # a per-run cap has no calendar


# --------------------------------------------------------------------------- notices


def test_a_refusal_streak_is_told_once_per_kind() -> None:
    paused = admit(TaskFacts(paused=True), NOW)
    over = admit(TaskFacts(budget=OVER), NOW)
    assert paused is not None and over is not None
    assert should_announce(None, None, paused)  # never ran
    assert should_announce("ok", None, paused)
    assert should_announce("queued", None, paused)
    assert not should_announce("refused", paused.detail, paused)  # same streak
    assert should_announce("refused", paused.detail, over)  # a new reason is told
    assert not should_announce("refused", over.detail, over)
    assert should_announce("failed", "run failed: timeout", paused)
    assert refusal_kind(paused.detail) is RefusalKind.PAUSED
    assert refusal_kind("run failed: timeout") is None
    assert refusal_kind(None) is None


def test_notices_name_the_task_by_its_prompt() -> None:
    assert task_label(12, "daily   digest\nplease") == 'Scheduled task 12 ("daily digest please")'
    long = task_label(3, "x" * 100)
    assert long.endswith('…")') and len(long) < 70
    paused = admit(TaskFacts(paused=True), NOW)
    assert paused is not None
    assert refusal_notice(12, "daily digest", paused, one_shot=False) == (
        'Scheduled task 12 ("daily digest") did not run: this space is paused until an '
        "admin sends /resume."
    )
    assert refusal_notice(12, "daily digest", paused, one_shot=True).endswith(
        "It was due once, so it will not run again."
    )
    assert failure_report(7, "report", "Sorry — that took too long.", 4) == (
        'Scheduled task 7 ("report") failed after 4 tries. Sorry — that took too long.'
    )
    assert failure_report(7, "report", None, 1) == 'Scheduled task 7 ("report") failed after 1 try.'


# --------------------------------------------------------------------------- retries


def test_retry_backoff_doubles_and_is_bounded() -> None:
    rule = RetryRule(attempts=3, backoff_s=60)
    assert [retry_delay(rule, n) for n in (1, 2, 3)] == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
    ]
    assert retry_delay(RetryRule(attempts=20, backoff_s=3600), 20) == timedelta(days=1)


def test_after_failure_retries_then_gives_up() -> None:
    rule = RetryRule(attempts=2, backoff_s=30)
    first = after_failure(rule, 0, NOW)
    assert first == FailureStep(1, NOW + timedelta(seconds=30)) and not first.final
    second = after_failure(rule, 1, NOW)
    assert second == FailureStep(2, NOW + timedelta(seconds=60))
    third = after_failure(rule, 2, NOW)
    assert third.final and third.failures == 3  # three tries: the first and two retries
    assert after_failure(RetryRule(attempts=0), 0, NOW) == FailureStep(1, None)
    assert retrying_detail("timeout", first, rule, NOW) == (
        "run failed: timeout; retry 1 of 2 at 12:30 UTC"
    )
    assert failed_detail("error", 3) == "run failed: error (after 3 tries)"


# --------------------------------------------------------------------------- catch-up


def test_catch_up_skips_only_what_fell_due_before_the_start() -> None:
    started = NOW
    before = NOW - timedelta(hours=3)
    after = NOW + timedelta(seconds=1)
    assert missed_while_down(before, started)
    assert not missed_while_down(after, started)
    assert not missed_while_down(before, None)  # not started: nothing was missed
    assert skips_missed("skip", before, started)
    assert not skips_missed("once", before, started)  # run once at start
    assert not skips_missed("skip", after, started)  # came due while running: runs
    assert MISSED == "missed while Mercury was down"
