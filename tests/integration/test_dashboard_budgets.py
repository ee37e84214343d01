"""The Budgets pages over real HTTP: a real App's server on 127.0.0.1, a real SQLite file,
and - where the live counters matter - a real Pipeline with its BudgetBook (built as
`mercury run` builds it, not started: no container runs here), on a fixed clock.

Logged in through /login like an operator; every write is a form POST carrying the CSRF
token. Spend is seeded as the model proxy stores it (storage.spend.add_model_call); the
effect of a saved cap is read back from the database and from BudgetBook.check, the
question every spending path asks. The form rules (pure) are tested here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from mercury.api.runhost import RunHost
from mercury.app import App
from mercury.config import Config, LoadedConfig, Secrets
from mercury.core.budget import Cap, Scope, Spent, parse_cap
from mercury.core.budget_text import BudgetSetting
from mercury.dashboard.pages.budgets import (
    form_text,
    planned_changes,
    read_caps_form,
    state,
    used_text,
)
from mercury.pipeline.budget import BUDGET_PREF, BudgetBook, read_overrides, write_override
from mercury.pipeline.service import Pipeline
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState
from mercury.storage import Database, get_or_create_space, get_preferences, utcnow
from mercury.storage.migrate import upgrade
from mercury.storage.spend import add_model_call
from mercury.storage.tasks import REFUSED, add_task, note_task_outcome
from tests.integration.dashboard_site import (
    PASSWORD,
    Node,
    Running,
    csrf_token,
    free_port,
    get_page,
    login,
    parse,
    running,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------ helpers


async def spend(
    db: Database,
    space_id: str,
    at: datetime,
    usd: float | None,
    tokens: int = 100,
    *,
    user_key: str | None = None,
    task_id: int | None = None,
    run_id: str = "run-1",
) -> None:
    """One metered model call, stored as the host's model proxy stores it."""
    await add_model_call(
        db,
        space_id=space_id,
        run_id=run_id,
        provider="anthropic",
        model="claude-test",
        input_tokens=tokens,
        output_tokens=0,
        cost_usd=usd,
        status=200,
        incomplete=False,
        user_key=user_key,
        task_id=task_id,
        at=at,
    )


async def post(
    http: aiohttp.ClientSession, path: str, token: str, **form: str
) -> tuple[int, str, str]:
    """A form post as the page's form makes it: (status, Location, body)."""
    async with http.post(path, data={"csrf": token, **form}, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


@asynccontextmanager
async def live_site(tmp_path: Path, **settings: Any) -> AsyncIterator[Running]:
    """A real App's HTTP side whose dashboard has a real (unstarted) Pipeline, so its pages
    read and steer the Pipeline's BudgetBook, which runs on the fixed clock NOW."""
    config = Config.model_validate(
        {"data_dir": str(tmp_path), **settings, "server": {"port": free_port()}}
    )
    secrets = Secrets(dashboard_password=SecretStr(PASSWORD))
    app = App(LoadedConfig(config, secrets, None))
    url = config.resolved_database_url()
    await upgrade(url)
    app.db = Database(url)
    runner = ContainerRunner(config, ImageBuildState(config.container.image))
    app.runner = runner
    app._build_adapters()
    app.pipeline = Pipeline(config, secrets, app.db, runner, RunHost(config, secrets), app.adapters)
    app.pipeline.budget.clock = lambda: NOW
    app._build_dashboard()
    await app.http.start()
    try:
        yield Running(app)
    finally:
        await app.http.stop()
        await runner.aclose()
        await app.db.dispose()


def book_of(site: Running) -> BudgetBook:
    book: BudgetBook = site.app.pipeline.budget
    return book


def cap_row(doc: Node, scope: str) -> Node:
    return doc.find("table", class_="budget-caps").find("tr", **{"data-scope": scope})


def space_row(doc: Node, space_id: str) -> Node:
    return doc.find("table", id="budget-spaces").find("tr", **{"data-space": space_id})


# ------------------------------------------------------------------ pure rules


def test_used_and_state_read_a_cap_against_its_spend() -> None:
    five = Cap(usd=5.0)
    assert used_text(None, Spent(3.0)) == "" and state(None, Spent(3.0)) == ""
    assert used_text(five, Spent(1.0)) == "20%" and state(five, Spent(1.0)) == ""
    assert state(five, Spent(4.0)) == "near"  # 80 %: the admins' heads-up share
    # Rounded down: 100 % only once reached.
    assert used_text(five, Spent(4.999)) == "99%" and state(five, Spent(4.999)) == "near"
    assert used_text(five, Spent(6.0)) == "120%" and state(five, Spent(6.0)) == "reached"
    both = Cap(usd=5.0, tokens=1000)
    assert used_text(both, Spent(1.0, 900)) == "90%"  # the larger share counts
    assert used_text(Cap(usd=0.0), Spent()) == "reached"
    assert state(Cap(usd=0.0), Spent()) == "reached"


def test_the_form_reads_values_off_and_default() -> None:
    overrides = {Scope.SPACE_DAY: Cap(usd=5.0), Scope.TASK_RUN: None}
    assert form_text(overrides, Scope.SPACE_DAY) == "$5"
    assert form_text(overrides, Scope.TASK_RUN) == "off"
    assert form_text(overrides, Scope.SPACE_MONTH) == "default"

    settings, values, errors = read_caps_form(
        {"space_day": " $2 ", "space_month": "500k tokens", "user_day": "off", "task_run": ""}
    )
    assert errors == {}
    assert values["space_day"] == "$2"
    assert settings[Scope.SPACE_DAY] == BudgetSetting(Scope.SPACE_DAY, Cap(usd=2.0))
    assert settings[Scope.SPACE_MONTH].cap == Cap(tokens=500_000)
    assert settings[Scope.USER_DAY] == BudgetSetting(Scope.USER_DAY, None)  # no cap
    # Empty is "follow mercury.yaml", never "no cap".
    assert settings[Scope.TASK_RUN] == BudgetSetting(Scope.TASK_RUN, reset=True)

    settings, _, errors = read_caps_form(
        {"space_day": "$five", "user_day": "x" * 65, "instance_day": "$1", "task_run": "$1"}
    )
    assert errors["space_day"].startswith("space_day: expected a dollar amount like $5")
    assert '"$five"' in errors["space_day"]
    assert "too long" in errors["user_day"]
    assert set(settings) == {Scope.TASK_RUN}  # instance_day is no form field


def test_only_changed_caps_are_written() -> None:
    current = {Scope.SPACE_DAY: Cap(usd=5.0), Scope.TASK_RUN: None}
    same = {
        Scope.SPACE_DAY: BudgetSetting(Scope.SPACE_DAY, Cap(usd=5.0)),
        Scope.SPACE_MONTH: BudgetSetting(Scope.SPACE_MONTH, reset=True),
        Scope.TASK_RUN: BudgetSetting(Scope.TASK_RUN, None),
    }
    assert planned_changes(current, same) == []
    changed = same | {
        Scope.SPACE_DAY: BudgetSetting(Scope.SPACE_DAY, reset=True),
        Scope.USER_DAY: BudgetSetting(Scope.USER_DAY, None),
    }
    assert [s.scope for s in planned_changes(current, changed)] == [
        Scope.SPACE_DAY,
        Scope.USER_DAY,
    ]


# ------------------------------------------------------------------ the pages


async def test_budgets_page_lists_the_instance_and_each_space_with_spend_or_own_caps(
    tmp_path: Path,
) -> None:
    budgets = {"instance_day": "$10", "space_day": "$1", "space_month": "$20"}
    async with running(tmp_path, budgets=budgets) as site:
        db = site.app.db
        now = utcnow()
        month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
        for sid, name in [("web:a", "Alpha <team>"), ("web:b", "Beta"), ("web:c", "C"),
                          ("web:d", "D")]:  # fmt: skip
            await get_or_create_space(db, sid, name=name)
        await spend(db, "web:a", now, 1.5, tokens=3000)  # past its daily cap
        await write_override(db, "web:b", Scope.SPACE_DAY, Cap(usd=4.0))  # caps, no spend
        await write_override(db, "web:b", Scope.TASK_RUN, None)
        await spend(db, "web:c", month_start - timedelta(days=1), 9.0)  # last month only
        async with site.client() as http:
            await login(http)
            doc = await get_page(http, "/budgets")
        assert doc.find("nav", class_="nav").find("a", href="/budgets").attrs["aria-current"]
        assert doc.by_id("instance-spent").text == "$1.50"
        assert doc.by_id("instance-cap").text == "$10.00"
        assert "15% used" in doc.by_id("instance").text
        assert "Alpha <team>" in doc.text  # escaped in the HTML, the name as text

        table = doc.find("table", id="budget-spaces")
        listed = [tr.attrs["data-space"] for tr in table.find("tbody").find_all("tr")]
        assert listed == ["web:a", "web:b"]  # the reached one first; C and D not at all
        a = space_row(doc, "web:a")
        assert a.has_class("over")
        assert a.find("td", class_="cap-day").text == "$1.00"
        assert a.find("td", class_="spent-day").text == "$1.50 (150%) reached"
        assert a.find("td", class_="spent-month").text == "$1.50 (7%)"
        assert a.find("a", href="/spaces/web%3Aa/budget")
        b = space_row(doc, "web:b")
        assert not b.has_class("over")
        assert b.find("td", class_="cap-day").text == "$4.00 space"  # its own cap, marked
        assert b.find("td", class_="spent-day").text == "$0.00 (0%)"
        assert b.find("td", class_="cap-task").text == "no cap space"
        assert b.find("td", class_="cap-user").text == "no cap"  # mercury.yaml's: none


async def test_setting_caps_through_the_form_changes_what_the_book_allows(
    tmp_path: Path,
) -> None:
    async with live_site(tmp_path, budgets={"space_month": "$2"}) as site:
        db = site.app.db
        await get_or_create_space(db, "web:a", name="Alpha")
        await spend(db, "web:a", NOW - timedelta(hours=3), 0.6, tokens=1000, user_key="web:ann")
        await spend(db, "web:a", datetime(2026, 3, 2, tzinfo=UTC), 3.0)  # this month
        await spend(db, "web:a", datetime(2026, 2, 20, tzinfo=UTC), 100.0)  # last month
        book = book_of(site)
        await book.load()
        # The monthly cap from mercury.yaml ($2) is passed: the space is refused.
        verdict = await book.check("web:a")
        assert not verdict.allowed and verdict.scope is Scope.SPACE_MONTH

        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            doc = await get_page(http, "/spaces/web:a/budget")
            month = cap_row(doc, "space_month")
            assert [td.text for td in month.find_all("td")][1:5] == [
                "$2.00", "mercury.yaml", "$3.60", "180% reached"
            ]  # fmt: skip
            day = cap_row(doc, "space_day")
            assert day.find("td", class_="cap-value").text == "no cap"
            assert "$0.60 and 1,000 tokens" in day.text  # no cap: both measures
            instance = cap_row(doc, "instance_day")
            assert instance.find("td", class_="cap-source").text == "mercury.yaml"
            people = doc.find("table", id="budget-people")
            assert "web:ann $0.60" in people.text and "no cap" in people.text
            assert doc.find("input", id="cap-space_month").attrs["value"] == "default"
            assert doc.maybe("input", id="cap-instance_day") is None  # mercury.yaml only

            # No cap per month, $0.50 per day: the daily cap now refuses, at once.
            status, location, _ = await post(
                http, "/spaces/web:a/budget", token,
                space_day="$0.50", space_month="off", user_day="default", task_run="",
            )  # fmt: skip
            assert status == 303 and location.endswith("/budget?done=saved")
            assert await read_overrides(db, "web:a") == {
                Scope.SPACE_DAY: Cap(usd=0.5),
                Scope.SPACE_MONTH: None,
            }
            verdict = await book.check("web:a")
            assert not verdict.allowed and verdict.scope is Scope.SPACE_DAY
            doc = await get_page(http, location)
            assert "Caps saved" in doc.find("p", class_="alert ok").text
            day = cap_row(doc, "space_day")
            assert day.find("td", class_="cap-value").text == "$0.50"
            assert day.find("td", class_="cap-source").text == "this space"
            assert day.has_class("cap-reached")
            assert doc.find("input", id="cap-space_day").attrs["value"] == "$0.5"
            assert doc.find("input", id="cap-space_month").attrs["value"] == "off"

            # A bad value: the error in the form, the typed values kept, nothing stored
            # (not even the good value beside it).
            status, _, body = await post(
                http, "/spaces/web:a/budget", token,
                space_day="$five", space_month="$1", user_day="default", task_run="",
            )  # fmt: skip
            assert status == 400
            doc = parse(body)
            assert "Nothing was saved" in doc.find("p", class_="alert error").text
            error = doc.by_id("error-space_day").text
            assert error.startswith("space_day: expected a dollar amount") and "$five" in error
            assert doc.find("input", id="cap-space_day").attrs["value"] == "$five"
            assert doc.find("input", id="cap-space_month").attrs["value"] == "$1"
            assert await read_overrides(db, "web:a") == {
                Scope.SPACE_DAY: Cap(usd=0.5),
                Scope.SPACE_MONTH: None,
            }
            assert not (await book.check("web:a")).allowed

            # "default" removes the space's own caps: mercury.yaml's apply again.
            status, location, _ = await post(
                http, "/spaces/web:a/budget", token,
                space_day="default", space_month="default", user_day="", task_run="",
            )  # fmt: skip
            assert status == 303
            assert await read_overrides(db, "web:a") == {}
            assert BUDGET_PREF not in await get_preferences(db, "web:a")
            assert (await book.check("web:a")).scope is Scope.SPACE_MONTH
            # The same form again changes nothing, and says so.
            status, location, _ = await post(
                http, "/spaces/web:a/budget", token,
                space_day="default", space_month="default", user_day="", task_run="",
            )  # fmt: skip
            assert location.endswith("done=unchanged")

            # The list reads the live counters: today's $0.60, this month's $3.60.
            doc = await get_page(http, "/budgets")
            row = space_row(doc, "web:a")
            assert row.find("td", class_="spent-day").text == "$0.60 and 1,000 tokens"
            assert row.find("td", class_="spent-month").text == "$3.60 (180%) reached"
            assert doc.by_id("instance-spent").text == "$0.60 and 1,000 tokens"


async def test_the_space_page_shows_its_caps_and_links_to_change_them(tmp_path: Path) -> None:
    async with running(tmp_path, budgets={"user_day": "200k tokens"}) as site:
        db = site.app.db
        await get_or_create_space(db, "web:a")
        await write_override(db, "web:a", Scope.SPACE_DAY, parse_cap("$3"))
        async with site.client() as http:
            await login(http)
            doc = await get_page(http, "/spaces/web:a")
            card = doc.by_id("budget")
            assert card.find("a", href="/spaces/web%3Aa/budget")
            day = card.find("li", **{"data-scope": "space_day"})
            assert day.text == "This space, per day: $3.00 this space · $0.00 used (0%)"
            user = card.find("li", **{"data-scope": "user_day"})
            assert user.text == "Each person, per day: 200,000 tokens"
            assert card.find("li", **{"data-scope": "instance_day"}).text.startswith(
                "All spaces, per day: no cap · $0.00 and 0 tokens used"
            )
            await get_page(http, "/spaces/web:nobody/budget", status=404)
            # A write without the CSRF token changes nothing.
            async with http.post(
                "/spaces/web:a/budget", data={"space_day": "off"}, allow_redirects=False
            ) as resp:
                assert resp.status == 403
            assert await read_overrides(db, "web:a") == {Scope.SPACE_DAY: Cap(usd=3.0)}


async def test_tasks_show_their_last_outcome_and_average_cost(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await get_or_create_space(db, "web:a")
        costly = await add_task(db, "web:a", "digest", interval_s=3600)
        fresh = await add_task(db, "web:a", "never ran", interval_s=3600)
        now = utcnow()
        await note_task_outcome(db, costly.id, REFUSED, "the space is paused", now)
        await spend(db, "web:a", now, 0.01, tokens=1000, task_id=costly.id, run_id="r1")
        await spend(db, "web:a", now, 0.02, tokens=3000, task_id=costly.id, run_id="r2")
        async with site.client() as http:
            await login(http)
            doc = await get_page(http, "/tasks")
            row = doc.by_id(f"task-{costly.id}")
            outcome = row.find("div", class_="task-outcome")
            assert outcome.text.startswith("refused: the space is paused")
            assert outcome.find("span", class_="badge warn").text == "refused"
            assert row.find("td", class_="num task-cost").text == "$0.0150 2,000 tokens"
            other = doc.by_id(f"task-{fresh.id}")
            assert other.maybe("div", class_="task-outcome") is None
            assert other.find("td", class_="num task-cost").text == "—"
            # The row htmx swaps in after an action carries them too.
            token = await csrf_token(http)
            async with http.post(
                f"/tasks/{costly.id}/pause",
                data={"csrf": token},
                headers={"HX-Request": "true"},
            ) as resp:
                row = parse(await resp.text()).by_id(f"task-{costly.id}")
            assert row.find("td", class_="num task-cost").text == "$0.0150 2,000 tokens"
