"""What a cap setting means, the /budget command's forms, and the caps text (all pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from mercury.core.budget import Cap, CapError, Scope, Spent
from mercury.core.budget_text import (
    INSTANCE_REFUSAL,
    BudgetSetting,
    caps_text,
    parse_scope,
    parse_setting,
    setting_text,
    status_json,
)
from mercury.core.commands import HELP_TEXT, Command, CommandKind, parse_command
from mercury.core.permissions import Permission, command_permission

NOW = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 2, tzinfo=UTC)


@dataclass(frozen=True)
class Line:
    """The shape of pipeline.budget.CapStatus."""

    scope: Scope
    cap: Cap | None
    spent: Spent
    resets_at: datetime | None
    source: str = "config"


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("space_day", Scope.SPACE_DAY),
        ("space-day", Scope.SPACE_DAY),
        ("Day", Scope.SPACE_DAY),
        ("month", Scope.SPACE_MONTH),
        ("user_day", Scope.USER_DAY),
        ("user", Scope.USER_DAY),
        ("task", Scope.TASK_RUN),
        ("task_run", Scope.TASK_RUN),
    ],
)
def test_scope_words(text: str, scope: Scope) -> None:
    assert parse_scope(text) is scope


@pytest.mark.parametrize("text", ["instance_day", "instance"])
def test_the_instance_cap_is_refused_and_says_where_it_is_set(text: str) -> None:
    with pytest.raises(CapError) as info:
        parse_scope(text)
    assert str(info.value) == INSTANCE_REFUSAL
    assert "budgets.instance_day in mercury.yaml" in INSTANCE_REFUSAL


def test_an_unknown_scope_names_the_known_ones() -> None:
    with pytest.raises(CapError, match=r'unknown cap "weekly": expected space_day'):
        parse_scope("weekly")


@pytest.mark.parametrize(
    ("value", "setting"),
    [
        ("$5", BudgetSetting(Scope.SPACE_DAY, Cap(usd=5.0))),
        ("2.50", BudgetSetting(Scope.SPACE_DAY, Cap(usd=2.5))),
        (3, BudgetSetting(Scope.SPACE_DAY, Cap(usd=3.0))),
        ("500k tokens", BudgetSetting(Scope.SPACE_DAY, Cap(tokens=500_000))),
        ("$5 or 2m tokens", BudgetSetting(Scope.SPACE_DAY, Cap(usd=5.0, tokens=2_000_000))),
        ("off", BudgetSetting(Scope.SPACE_DAY, None)),
        (None, BudgetSetting(Scope.SPACE_DAY, None)),
        ("default", BudgetSetting(Scope.SPACE_DAY, reset=True)),
        (" Default ", BudgetSetting(Scope.SPACE_DAY, reset=True)),
    ],
)
def test_values(value: object, setting: BudgetSetting) -> None:
    assert parse_setting("day", value) == setting


@pytest.mark.parametrize("value", ["lots", "", "  ", "-5", True, [5], "$5 or $6"])
def test_a_bad_value_is_one_line_naming_the_scope(value: object) -> None:
    with pytest.raises(CapError) as info:
        parse_setting("space_day", value)
    assert str(info.value).startswith("space_day: ")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- /budget


def test_budget_alone_shows_and_anyone_who_may_run_may_see() -> None:
    assert parse_command("/budget") == Command(CommandKind.BUDGET)
    assert parse_command("/budget@mercury_bot") == Command(CommandKind.BUDGET)
    assert command_permission(CommandKind.BUDGET) is Permission.RUN


def test_budget_with_a_value_sets_and_needs_admin() -> None:
    cmd = parse_command("/budget user 200k tokens")
    assert cmd == Command(
        CommandKind.BUDGET_SET, budget=BudgetSetting(Scope.USER_DAY, Cap(tokens=200_000))
    )
    assert command_permission(cmd) is Permission.ADMIN
    assert parse_command("/budget day default") == Command(
        CommandKind.BUDGET_SET, budget=BudgetSetting(Scope.SPACE_DAY, reset=True)
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("/budget day", "Usage: /budget"),
        ("/budget day lots", "I couldn't set that: space_day: expected a dollar amount"),
        ("/budget instance_day $50", "set budgets.instance_day in mercury.yaml."),
        ("/budget weekly $5", 'unknown cap "weekly"'),
    ],
)
def test_budget_with_bad_arguments_carries_an_error(text: str, fragment: str) -> None:
    cmd = parse_command(text)
    assert cmd is not None and cmd.kind is CommandKind.BUDGET_SET and cmd.budget is None
    assert cmd.error is not None and fragment in cmd.error


def test_help_mentions_budget() -> None:
    assert "/budget" in HELP_TEXT


# --------------------------------------------------------------------------- text


def test_caps_text_shows_values_sources_spend_and_resets() -> None:
    text = caps_text(
        [
            Line(Scope.INSTANCE_DAY, Cap(usd=20), Spent(3.2, 9000), MIDNIGHT),
            Line(Scope.SPACE_MONTH, None, Spent(12.0, 50_000), datetime(2027, 1, 1, tzinfo=UTC)),
            Line(Scope.SPACE_DAY, Cap(usd=5), Spent(5.0, 1), MIDNIGHT, "space"),
            Line(Scope.USER_DAY, Cap(tokens=200_000), Spent(0.1, 1234), MIDNIGHT),
            Line(Scope.TASK_RUN, Cap(usd=0.5), Spent(), None),
        ],
        NOW,
    )
    assert text.splitlines() == [
        "Spending caps (days and months are UTC):",
        "• All spaces, per day: $20.00 — $3.20 used — resets 2026-12-02 00:00 UTC (in 6 h)",
        "• This space, per month: no cap — $12.00 and 50,000 tokens used",
        "• This space, per day: $5.00 (set for this space) — $5.00 used, REACHED"
        " — resets 2026-12-02 00:00 UTC (in 6 h)",
        "• Each person, per day: 200,000 tokens — you: 1,234 tokens used"
        " — resets 2026-12-02 00:00 UTC (in 6 h)",
        "• Each run of a scheduled task: $0.50",
        "An admin changes this space's caps with /budget <cap> <value>, e.g. /budget day $5, "
        "/budget user 200k tokens, /budget task off, /budget day default.",
    ]


def test_caps_text_for_nobody_in_particular_leaves_the_user_spend_out() -> None:
    text = caps_text(
        [Line(Scope.USER_DAY, Cap(usd=1), Spent(0.5, 10), MIDNIGHT)],
        NOW,
        user_known=False,
        how_to_set="mercury budget set s1",
    )
    assert "• Each person, per day: $1.00\n" in text
    assert "used" not in text
    assert text.endswith("Change a cap of this space with: mercury budget set s1 <cap> <value>.")


def test_setting_text() -> None:
    assert (
        setting_text(BudgetSetting(Scope.SPACE_DAY, Cap(usd=5)), Cap(usd=5))
        == "This space's daily cap is now $5.00."
    )
    assert (
        setting_text(BudgetSetting(Scope.TASK_RUN, None), None)
        == "The cap per run of a scheduled task here is now no cap."
    )
    assert (
        setting_text(BudgetSetting(Scope.USER_DAY, reset=True), Cap(usd=1))
        == "The daily cap per person in this space follows mercury.yaml again: $1.00."
    )


def test_status_json() -> None:
    line = Line(Scope.SPACE_DAY, Cap(usd=5, tokens=100), Spent(1.0, 80), MIDNIGHT, "space")
    assert status_json(line, NOW) == {
        "scope": "space_day",
        "cap": {"usd": 5, "tokens": 100, "text": "$5 or 100 tokens"},
        "source": "space",
        "spent": {"usd": 1.0, "tokens": 80},
        "used": 0.8,
        "reached": False,
        "resets_at": "2026-12-02T00:00:00+00:00",
    }
    task = status_json(Line(Scope.TASK_RUN, Cap(usd=1), Spent(), None), NOW)
    assert (task["spent"], task["used"], task["resets_at"]) == (None, None, None)
    user = status_json(Line(Scope.USER_DAY, Cap(usd=1), Spent(), MIDNIGHT), NOW, user_known=False)
    assert (user["spent"], user["reached"]) == (None, False)
