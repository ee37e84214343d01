"""The Budgets pages: the spending caps in force, what is spent against them, and a
space's own caps, set from the dashboard.

GET  /budgets               the instance's daily cap and today's spend over every space;
                            each space that spent this month or has caps of its own, with
                            its caps in force, its spend today and this month, how much of
                            each cap is used, and which caps are reached
GET  /spaces/{id}/budget    one space: every cap (value, where it comes from, spent, reset),
                            who spent what today, and the form that changes its caps
POST /spaces/{id}/budget    set the space's caps, each to a value ("$5", "500k tokens"),
                            "off" (no cap) or "default" (follow mercury.yaml)

Why it reads what it reads: the spend shown is the running BudgetBook's (`pipeline.budget`,
the counters every check consults) when the dashboard runs inside `mercury run`, so the
page and the refusals agree; without one (a dashboard built with no pipeline) it is summed
from the `model_calls` table, as `mercury budget show` does. A save goes through
`pipeline.budget.write_override` - the store /budget and `mercury budget set` write too -
and then tells the running book to read the space's caps afresh, so the next check
applies them at once rather than after the book's cache expires. The form's values are
read by `core.budget_text.parse_setting`, so the dashboard, the chat and the CLI accept
the same words. instance_day bounds every space together: shown here, set in
mercury.yaml only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mercury.core.budget import (
    SCOPES,
    SPACE_SCOPES,
    WARN_AT,
    Cap,
    CapError,
    Caps,
    Scope,
    Spent,
    period_start,
    reached,
    resets_at,
    share,
)
from mercury.core.budget_text import BudgetSetting, parse_setting, spent_text
from mercury.dashboard.deps import DashboardDeps, deps
from mercury.dashboard.render import SESSION, page, render
from mercury.logging import get_logger
from mercury.pipeline.budget import (
    BUDGET_PREF,
    BudgetBook,
    CapStatus,
    overrides_from_prefs,
    read_overrides,
    write_override,
)
from mercury.pipeline.budget_status import budget_statuses
from mercury.storage import SpaceRecord, get_space, list_spaces, utcnow
from mercury.storage.preferences import preference_values
from mercury.storage.spend import spend_by_space, spend_by_user

__all__ = [
    "CapRow",
    "Cell",
    "cap_rows",
    "caps_card",
    "form_text",
    "planned_changes",
    "read_caps_form",
    "routes",
    "state",
    "used_text",
]

log = get_logger(__name__)

routes = web.RouteTableDef()

MAX_FIELD = 64  # a cap as typed: "$5 or 2m tokens" is 15 characters
PEOPLE_ROWS = 20  # the people listed on a space's page (the most spent first)
TABLE_ROWS = 200  # spaces listed on /budgets: reached caps first, then the most spent

LABELS: dict[Scope, str] = {
    Scope.INSTANCE_DAY: "All spaces, per day",
    Scope.SPACE_DAY: "This space, per day",
    Scope.SPACE_MONTH: "This space, per month",
    Scope.USER_DAY: "Each person, per day",
    Scope.TASK_RUN: "Each run of a scheduled task",
}
# The same caps as mercury.yaml sets them for every space (the /budgets page).
CONFIG_LABELS: dict[Scope, str] = {
    Scope.INSTANCE_DAY: "All spaces together, per day",
    Scope.SPACE_DAY: "Each space, per day",
    Scope.SPACE_MONTH: "Each space, per month",
    Scope.USER_DAY: "Each person in a space, per day",
    Scope.TASK_RUN: "Each run of a scheduled task",
}
DONE = {
    "saved": "Caps saved: the next message and the next model call follow them.",
    "unchanged": "Nothing changed: the caps were already so.",
}


# --------------------------------------------------------------------------- pure rules


def used_text(cap: Cap | None, spent: Spent) -> str:
    """The share of `cap` used, as a whole percent rounded down (so "100%" means reached);
    "" with no cap, "reached" for a zero cap (nothing may be spent)."""
    if cap is None:
        return ""
    used = share(cap, spent)
    if math.isinf(used):
        return "reached"
    return f"{math.floor(used * 100)}%"


def state(cap: Cap | None, spent: Spent) -> str:
    """ "reached" (nothing more may be spent), "near" (past the warning share) or ""."""
    if cap is None:
        return ""
    if reached(cap, spent):
        return "reached"
    return "near" if share(cap, spent) >= WARN_AT else ""


@dataclass(frozen=True, slots=True)
class CapRow:
    """One cap of a space as its page and card show it, every cell already in words."""

    scope: str
    label: str
    value: str  # "$5.00", "500,000 tokens" or "no cap"
    source: str  # "mercury.yaml" or "this space"
    spent: str  # "" for a task's per-run cap: nothing is spent ahead of a run
    used: str
    state: str
    resets_at: datetime | None


def cap_rows(statuses: Sequence[CapStatus]) -> list[CapRow]:
    """The caps of one space (pipeline.budget.cap_statuses) as rows.

    The user_day spend is nobody's in particular here (the page lists each person's
    below), so that row shows only the cap."""
    rows = []
    for s in statuses:
        counted = s.scope not in (Scope.TASK_RUN, Scope.USER_DAY)
        rows.append(
            CapRow(
                scope=s.scope.value,
                label=LABELS[s.scope],
                value=s.cap.describe() if s.cap is not None else "no cap",
                source="this space" if s.source == "space" else "mercury.yaml",
                spent=spent_text(s.cap, s.spent) if counted else "",
                used=used_text(s.cap, s.spent) if counted else "",
                state=state(s.cap, s.spent) if counted else "",
                resets_at=s.resets_at if counted and s.cap is not None else None,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class Cell:
    """One cap of one space in the list: its value and, for a calendar cap, what is used."""

    value: str
    own: bool  # set for this space (not mercury.yaml's)
    spent: str = ""
    used: str = ""
    state: str = ""


def _cell(cap: Cap | None, own: bool, spent: Spent | None = None) -> Cell:
    value = cap.describe() if cap is not None else "no cap"
    if spent is None:
        return Cell(value, own)
    return Cell(value, own, spent_text(cap, spent), used_text(cap, spent), state(cap, spent))


@dataclass(frozen=True, slots=True)
class SpaceLine:
    """A space in the list: its caps in force and its spend today and this month."""

    space_id: str
    name: str
    day: Cell
    month: Cell
    user_day: Cell
    task_run: Cell
    reached: bool


def space_line(
    space_id: str,
    name: str,
    base: Caps,
    overrides: Mapping[Scope, Cap | None],
    day: Spent,
    month: Spent,
) -> SpaceLine:
    caps = base.with_overrides(overrides)
    cells = {
        "day": _cell(caps.space_day, Scope.SPACE_DAY in overrides, day),
        "month": _cell(caps.space_month, Scope.SPACE_MONTH in overrides, month),
        "user_day": _cell(caps.user_day, Scope.USER_DAY in overrides),
        "task_run": _cell(caps.task_run, Scope.TASK_RUN in overrides),
    }
    hit = cells["day"].state == "reached" or cells["month"].state == "reached"
    return SpaceLine(space_id, name, reached=hit, **cells)


def form_text(overrides: Mapping[Scope, Cap | None], scope: Scope) -> str:
    """What the form shows for `scope`: the space's own value, "off", or "default"."""
    if scope not in overrides:
        return "default"
    cap = overrides[scope]
    return cap.to_text() if cap is not None else "off"


def read_caps_form(
    form: Mapping[str, Any],
) -> tuple[dict[Scope, BudgetSetting], dict[str, str], dict[str, str]]:
    """The posted caps: (settings, the values as typed, errors by field).

    An empty field means "default" (follow mercury.yaml), never "no cap": clearing a field
    should not lift a limit. A field not posted is left as it is."""
    settings: dict[Scope, BudgetSetting] = {}
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    for scope in SPACE_SCOPES:
        raw = form.get(scope.value)
        if raw is None:
            continue
        text = raw.strip() if isinstance(raw, str) else ""
        values[scope.value] = text
        if len(text) > MAX_FIELD or any(ord(c) < 0x20 for c in text):
            errors[scope.value] = f"{scope.value}: too long or holds control characters"
            continue
        try:
            settings[scope] = parse_setting(scope.value, text or "default")
        except CapError as exc:
            errors[scope.value] = str(exc)
    return settings, values, errors


def planned_changes(
    current: Mapping[Scope, Cap | None], settings: Mapping[Scope, BudgetSetting]
) -> list[BudgetSetting]:
    """The settings that change something, in SPACE_SCOPES order (the rest are not
    written, so a save of an untouched form writes nothing)."""
    changes = []
    for scope in SPACE_SCOPES:
        setting = settings.get(scope)
        if setting is None:
            continue
        if setting.reset:
            if scope in current:
                changes.append(setting)
        elif scope not in current or current[scope] != setting.cap:
            changes.append(setting)
    return changes


def _change_text(setting: BudgetSetting) -> str:
    """A change as the log records it: the scope's new value (no secret can be in it)."""
    if setting.reset:
        return "default"
    return setting.cap.to_text() if setting.cap is not None else "off"


# --------------------------------------------------------------------------- gathering


def running_book(d: DashboardDeps) -> BudgetBook | None:
    """The running Mercury's spending book, when the dashboard has a pipeline."""
    return d.pipeline.budget if d.pipeline is not None else None


def _base(d: DashboardDeps, book: BudgetBook | None) -> Caps:
    return book.base if book is not None else d.config.budgets.caps()


def _now(book: BudgetBook | None) -> datetime:
    return book.clock() if book is not None else utcnow()


async def spaces_with_own_caps(
    d: DashboardDeps, spaces: Sequence[SpaceRecord]
) -> dict[str, dict[Scope, Cap | None]]:
    """Each of `spaces` that has caps of its own (one query for all of them)."""
    stored = await preference_values(d.db, BUDGET_PREF, [space.id for space in spaces])
    found = {}
    for space_id, value in stored.items():
        overrides = overrides_from_prefs({BUDGET_PREF: value})
        if overrides:
            found[space_id] = overrides
    return found


async def caps_card(d: DashboardDeps, space_id: str) -> list[CapRow]:
    """A space's caps in force and what is used (its page's Spending caps card)."""
    book = running_book(d)
    now = _now(book)
    return cap_rows(await budget_statuses(d.db, _base(d, book), space_id, None, now, book=book))


async def _overview(d: DashboardDeps) -> dict[str, object]:
    """The /budgets page's figures."""
    book = running_book(d)
    now = _now(book)
    base = _base(d, book)
    day_start = period_start(Scope.SPACE_DAY, now)
    month_start = period_start(Scope.SPACE_MONTH, now)
    assert day_start is not None and month_start is not None
    month_rows = {
        r.space_id: Spent(r.usd, r.tokens) for r in await spend_by_space(d.db, month_start)
    }
    day_rows: dict[str, Spent] = {}
    if book is None:  # else the book's counters say it
        day_rows = {
            r.space_id: Spent(r.usd, r.tokens) for r in await spend_by_space(d.db, day_start)
        }
    spaces = await list_spaces(d.db)
    names = {s.id: s.name for s in spaces}
    own = await spaces_with_own_caps(d, spaces)
    ranked: list[tuple[Spent, SpaceLine]] = []
    for space_id in set(month_rows) | set(own):
        if book is not None:
            spent = book.spent(space_id)
            day, month = spent[Scope.SPACE_DAY], spent[Scope.SPACE_MONTH]
        else:
            day, month = day_rows.get(space_id, Spent()), month_rows.get(space_id, Spent())
        line = space_line(
            space_id, names.get(space_id, space_id), base, own.get(space_id, {}), day, month
        )
        ranked.append((month, line))
    # Reached caps first, then the most spent this month.
    ranked.sort(key=lambda r: (not r[1].reached, -r[0].usd, -r[0].tokens, r[1].space_id))
    if book is not None:
        instance = book.spent("")[Scope.INSTANCE_DAY]  # the instance's, whichever space
    else:
        instance = sum(day_rows.values(), Spent())
    return {
        "now": now,
        "live": book is not None,
        "instance": _cell(base.instance_day, False, instance),
        "instance_resets": resets_at(Scope.INSTANCE_DAY, now),
        "defaults": [(CONFIG_LABELS[s], s.value, base.get(s)) for s in SCOPES],
        "spaces": [line for _, line in ranked[:TABLE_ROWS]],
        "more_spaces": max(0, len(ranked) - TABLE_ROWS),
    }


# --------------------------------------------------------------------------- pages


@routes.get("/budgets")
@page
async def budgets_page(request: web.Request) -> web.Response:
    return render(request, "budgets.html", **await _overview(deps(request)))


async def _space_or_404(request: web.Request) -> SpaceRecord:
    space = await get_space(deps(request).db, request.match_info["space_id"])
    if space is None:
        raise web.HTTPNotFound(text="no such space")
    return space


async def _people(
    d: DashboardDeps, space_id: str, cap: Cap | None, now: datetime
) -> list[tuple[str, Cell]]:
    """Who spent what in the space today (stored calls), the most first, against user_day."""
    day_start = period_start(Scope.USER_DAY, now)
    assert day_start is not None
    rows = [
        r
        for r in await spend_by_user(d.db, day_start)
        if r.space_id == space_id and r.user_key is not None
    ]
    rows.sort(key=lambda r: (-r.usd, -r.tokens, r.user_key or ""))
    return [
        (r.user_key or "", _cell(cap, False, Spent(r.usd, r.tokens))) for r in rows[:PEOPLE_ROWS]
    ]


async def _space_page(
    request: web.Request,
    space: SpaceRecord,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    d = deps(request)
    book = running_book(d)
    now = _now(book)
    base = _base(d, book)
    overrides = await read_overrides(d.db, space.id)
    statuses = await budget_statuses(d.db, base, space.id, None, now, book=book)
    shown = {s.value: form_text(overrides, s) for s in SPACE_SCOPES} | dict(values or {})
    return render(
        request,
        "budget_space.html",
        status=status,
        space=space,
        now=now,
        live=book is not None,
        rows=cap_rows(statuses),
        people=await _people(d, space.id, base.with_overrides(overrides).user_day, now),
        fields=[(s.value, LABELS[s], shown.get(s.value, "")) for s in SPACE_SCOPES],
        errors=dict(errors or {}),
        notice=DONE.get(request.query.get("done", "")),
    )


@routes.get("/spaces/{space_id}/budget")
@page
async def space_budget(request: web.Request) -> web.Response:
    return await _space_page(request, await _space_or_404(request))


@routes.post("/spaces/{space_id}/budget")
@page
async def space_budget_save(request: web.Request) -> web.Response:
    """Store the space's caps that changed, or show the form's problems and store nothing."""
    d = deps(request)
    space = await _space_or_404(request)
    settings, values, errors = read_caps_form(await request.post())
    if errors:
        return await _space_page(request, space, values=values, errors=errors, status=400)
    changes = planned_changes(await read_overrides(d.db, space.id), settings)
    for setting in changes:
        await write_override(d.db, space.id, setting.scope, setting.cap, reset=setting.reset)
    book = running_book(d)
    if book is not None:
        book.forget_overrides(space.id)
    if changes:
        log.info(
            "space spending caps changed on the dashboard",
            space_id=space.id,
            by=request[SESSION].username,
            changes={s.scope.value: _change_text(s) for s in changes},
        )
    done = "saved" if changes else "unchanged"
    raise web.HTTPSeeOther(
        f"/spaces/{quote(space.id, safe='')}/budget?done={done}",
        headers={"Cache-Control": "no-store"},
    )
