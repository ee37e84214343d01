"""The Tasks page over real HTTP: a real App's server on 127.0.0.1 and a real SQLite file.

Logged in through /login like an operator; every write is a form POST carrying the CSRF
token, and its effect is read back from the database. The page's HTML is read with the
standard library's HTML parser. The schedule rules (pure) and the scheduler's run-now
path (a real Dispatcher) are tested here too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from mercury.core.when import TIMEZONE_PREF, next_cron_in_zone
from mercury.dashboard.pages.tasks import (
    PAGE_SIZE,
    duration_text,
    parse_schedule,
    resume_next_run,
    schedule_fields,
)
from mercury.dashboard.schedule_words import describe_cron, describe_schedule
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.scheduler import RunNowRefused, Scheduler, next_cron_run
from mercury.storage import (
    Database,
    JobRecord,
    JobStatus,
    RunReason,
    enqueue_job,
    get_or_create_space,
    link_conversation,
    list_jobs,
    pause_until_resumed,
    record_run,
    set_preference,
    utcnow,
)
from mercury.storage.migrate import upgrade
from mercury.storage.tasks import TaskRecord, add_task, get_task, list_tasks
from tests.integration.dashboard_site import Node, csrf_token, login, parse, running

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


# ------------------------------------------------------------------ reading the HTML


def task_rows(doc: Node) -> dict[int, Node]:
    return {
        int(n.attrs["id"].removeprefix("task-")): n
        for n in doc.find_all("tr")
        if n.attrs.get("id", "").startswith("task-")
    }


# ------------------------------------------------------------------ pure rules


def _task(**kw: object) -> TaskRecord:
    base: dict[str, object] = {
        "id": 1,
        "space_id": "s",
        "conversation_id": None,
        "prompt": "p",
        "cron": None,
        "interval_s": None,
        "run_at": None,
        "created_by": None,
        "enabled": True,
        "next_run_at": None,
        "last_run_at": None,
        "created_at": NOW,
    }
    return TaskRecord(**(base | kw))  # type: ignore[arg-type]


def test_parse_schedule_reads_each_kind_with_the_host_api_rules() -> None:
    every = parse_schedule("every", " 1h30m ", NOW)
    assert (every.interval_s, every.next_run_at) == (5400, NOW + timedelta(minutes=90))
    cron = parse_schedule("cron", "0  9 * * 1-5", NOW)
    assert cron.cron == "0 9 * * 1-5"
    assert cron.next_run_at == next_cron_run("0 9 * * 1-5", NOW)
    at = parse_schedule("at", "2026-03-11T08:00", NOW)
    assert at.run_at == at.next_run_at == datetime(2026, 3, 11, 8, 0, tzinfo=UTC)
    assert parse_schedule("at", "2h", NOW).run_at == NOW + timedelta(hours=2)
    for kind, text, message in [
        ("every", "30s", "at least 60s"),
        ("every", "soon", "not a duration"),
        ("cron", "0 9 * *", "5 fields"),
        ("cron", "0 25 * * *", "outside 0-23"),
        ("at", "2026-03-10T12:00", "in the past"),
        ("at", "tomorrow", "needs a time of day"),
        ("every", "  ", "give a schedule"),
        ("every", "1" * 200, "longer than"),
        ("weekly", "1d", "cron, every or at"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_schedule(kind, text, NOW)


def test_resume_next_run() -> None:
    ahead = NOW + timedelta(minutes=5)
    assert resume_next_run(_task(interval_s=600, next_run_at=ahead), NOW) == ahead
    # Runs missed while paused are not made up: the next slot from now.
    missed = NOW - timedelta(hours=3)
    assert resume_next_run(_task(interval_s=600, next_run_at=missed), NOW) == NOW + timedelta(
        minutes=10
    )
    assert resume_next_run(_task(cron="0 9 * * *", next_run_at=None), NOW) == datetime(
        2026, 3, 11, 9, 0, tzinfo=UTC
    )
    # A one-shot that already ran was disabled with no next run; its time is past.
    with pytest.raises(ValueError, match="has passed"):
        resume_next_run(_task(run_at=missed, next_run_at=None), NOW)
    assert resume_next_run(_task(run_at=ahead, next_run_at=None), NOW) == ahead


def test_schedule_fields_round_trip_through_parse_schedule() -> None:
    for task in (
        _task(interval_s=5400),
        _task(interval_s=90),
        _task(interval_s=8 * 86400 + 1),
        _task(cron="*/15 * * * *"),
        _task(run_at=NOW + timedelta(days=2)),
    ):
        kind, text = schedule_fields(task)
        parsed = parse_schedule(kind, text, NOW)
        assert (parsed.cron, parsed.interval_s, parsed.run_at) == (
            task.cron,
            task.interval_s,
            task.run_at,
        )
    assert duration_text(5400) == "1h30m"
    assert duration_text(604800 + 61) == "1w1m1s"


def test_schedules_read_as_words() -> None:
    assert describe_schedule(_task(interval_s=5400)) == "every 1 h 30 min"
    assert describe_schedule(_task(run_at=NOW)) == "once at 2026-03-10 12:30 UTC"
    assert (
        describe_schedule(_task(cron="0 9 * * 1-5")) == "weekdays at 09:00 UTC (cron 0 9 * * 1-5)"
    )
    assert describe_schedule(_task(cron="0 0 1 * *")) == "cron 0 0 1 * *"
    assert describe_cron("30 7 * * *") == "every day at 07:30 UTC"
    assert describe_cron("0 18 * * mon,3") == "Mondays and Wednesdays at 18:00 UTC"
    assert describe_cron("*/10 * * * *") == "every 10 min"
    assert describe_cron("5 * * * *") == "hourly at :05"
    assert describe_cron("0 9-17 * * *") is None


# ------------------------------------------------------------------ run now (scheduler)


async def _db(tmp_path: Path) -> Database:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    return Database(url)


async def test_run_now_queues_like_a_due_task_and_keeps_the_schedule(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    try:
        await get_or_create_space(db, "s1")
        await link_conversation(db, "telegram", "42", "s1")
        later = utcnow().replace(microsecond=0) + timedelta(hours=5)
        task = await add_task(db, "s1", "digest", interval_s=3600, next_run_at=later)
        woken: list[int] = []

        async def handler(job: JobRecord) -> JobStatus:
            return JobStatus.DONE

        dispatcher = Dispatcher(db, handler, max_concurrency=1)
        dispatcher.wake = lambda: woken.append(1)  # type: ignore[method-assign]
        scheduler = Scheduler(db, dispatcher, tick=30)
        job = await scheduler.run_now(task.id)
        assert woken == [1]

        # The same payload a due task gets from tick().
        due = await add_task(db, "s1", "digest", interval_s=3600, next_run_at=utcnow())
        assert await scheduler.tick(utcnow() + timedelta(seconds=1)) == 1
        jobs = await list_jobs(db, space_id="s1")
        assert jobs[0].id == job.id
        ticked = jobs[1].payload
        assert job.payload == ticked | {
            "task_id": task.id,
            "author_name": f"scheduled task {task.id}",
        }
        assert ticked["task_id"] == due.id
        assert job.payload["platform"] == "telegram" and job.payload["chat_id"] == "42"

        stored = await get_task(db, task.id)
        assert stored is not None
        assert stored.next_run_at == later and stored.enabled  # the schedule did not move
        assert stored.last_run_at is not None
    finally:
        await db.dispose()


async def test_run_now_refuses_a_paused_space_a_missing_chat_or_task(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    try:
        await get_or_create_space(db, "s1")
        await link_conversation(db, "telegram", "42", "s1")
        await get_or_create_space(db, "lonely")
        paused_task = await add_task(db, "s1", "p", interval_s=3600)
        lonely_task = await add_task(db, "lonely", "p", interval_s=3600)
        await pause_until_resumed(db, "s1")
        from mercury.pipeline.scheduler import run_task_now

        with pytest.raises(RunNowRefused, match="paused until it is resumed"):
            await run_task_now(db, paused_task.id)
        with pytest.raises(RunNowRefused, match="no conversation"):
            await run_task_now(db, lonely_task.id)
        with pytest.raises(RunNowRefused, match="no task 999"):
            await run_task_now(db, 999)
        assert await list_jobs(db) == []
        assert (await get_task(db, paused_task.id)).last_run_at is None  # type: ignore[union-attr]
    finally:
        await db.dispose()


# ------------------------------------------------------------------ the page over HTTP


async def _page(http: aiohttp.ClientSession, path: str = "/tasks") -> tuple[int, Node]:
    async with http.get(path, allow_redirects=False) as resp:
        return resp.status, parse(await resp.text())


async def _post(
    http: aiohttp.ClientSession,
    path: str,
    form: dict[str, str],
    *,
    htmx: bool = False,
) -> tuple[int, str, str]:
    headers = {"HX-Request": "true"} if htmx else {}
    async with http.post(path, data=form, headers=headers, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def _seed(db: Database) -> None:
    await get_or_create_space(db, "team")
    await link_conversation(db, "web", "room-1", "team")
    await get_or_create_space(db, "quiet")  # no conversation: nowhere to answer


async def test_list_shows_schedule_next_run_state_and_last_result(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        now = utcnow()
        cron = await add_task(db, "team", "standup <b>notes</b>", cron="0 9 * * 1-5",
                              next_run_at=now + timedelta(hours=3))  # fmt: skip
        every = await add_task(db, "team", "digest", interval_s=5400)
        once = await add_task(db, "team", "remind", run_at=now + timedelta(days=1))
        job = await enqueue_job(db, "team", payload={"prompt": "digest", "task_id": every.id})
        run = await record_run(
            db, space_id="team", reason=RunReason.TIMEOUT, job_id=job.id,
            started_at=now - timedelta(minutes=20), finished_at=now - timedelta(minutes=19),
        )  # fmt: skip
        await enqueue_job(db, "team", payload={"prompt": "remind", "task_id": once.id})
        async with site.client() as http:
            status, _ = await _page(http)
            assert status == 303  # not logged in: to /login
            await login(http)
            status, doc = await _page(http)
        assert status == 200
        rows = task_rows(doc)
        assert list(rows) == [cron.id, every.id, once.id]
        text = rows[cron.id].text
        assert "standup <b>notes</b>" in text  # escaped, shown as text
        assert not rows[cron.id].find_all("b")
        assert "weekdays at 09:00 UTC (cron 0 9 * * 1-5)" in text
        assert "in 2 h" in text and "enabled" in text and "never ran" in text
        assert "every 1 h 30 min" in rows[every.id].text
        last = rows[every.id].find("td", class_="last-result")
        assert "timeout" in last.text and "19 min ago" in last.text
        assert last.find("a", href=f"/runs/{run.id}")
        assert "queued" in rows[once.id].find("td", class_="last-result").text
        assert "once at" in rows[once.id].text
        # Each row's actions are CSRF-carrying POST forms, htmx-enhanced.
        forms = rows[every.id].find_all("form")
        actions = {f.attrs["action"] for f in forms}
        assert actions == {f"/tasks/{every.id}/{a}" for a in ("pause", "run", "delete")}
        assert all(f.attrs["method"] == "post" and f.attrs.get("hx-post") for f in forms)
        for form in forms:
            assert form.find("input", name="csrf").attrs["value"]


async def test_create_a_task(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            form = {"csrf": token, "space": "team", "prompt": "weekly report", "kind": "cron",
                    "when": "0 8 * * mon"}  # fmt: skip
            status, location, _ = await _post(http, "/tasks", form)
            assert status == 303 and location.startswith("/tasks?done=created#task-")
            [task] = await list_tasks(db)
            assert (task.space_id, task.prompt, task.cron) == (
                "team",
                "weekly report",
                "0 8 * * mon",
            )
            assert task.next_run_at == next_cron_run("0 8 * * mon", task.created_at)
            assert task.enabled and task.created_by == "dashboard:admin"
            assert task.conversation_id is None  # answers in the space's latest conversation
            status, doc = await _page(http, location)
            assert "Task created." in doc.text and task.id in task_rows(doc)

            status, _, _ = await _post(http, "/tasks", form | {"kind": "every", "when": "2h"})
            assert status == 303
            every = (await list_tasks(db))[-1]
            assert every.interval_s == 7200 and every.cron is None


async def test_a_task_is_read_and_shown_on_its_spaces_clock(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        await set_preference(db, "team", TIMEZONE_PREF, "Europe/Berlin")
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            form = {"csrf": token, "space": "team", "prompt": "standup", "kind": "cron",
                    "when": "0 9 * * *"}  # fmt: skip
            status, _, _ = await _post(http, "/tasks", form)
            assert status == 303
            [task] = await list_tasks(db)
            berlin = ZoneInfo("Europe/Berlin")
            assert task.next_run_at == next_cron_in_zone("0 9 * * *", task.created_at, berlin)
            assert task.next_run_at.astimezone(berlin).hour == 9
            status, doc = await _page(http, "/tasks")
            row = task_rows(doc)[task.id]
            assert "every day at 09:00 Europe/Berlin" in row.text
            # The next run is shown on the space's clock, with UTC beside it.
            assert "UTC)" in row.text and ("CET" in row.text or "CEST" in row.text)


async def test_create_refuses_bad_input_and_keeps_the_form(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            good = {"csrf": token, "space": "team", "prompt": "hi", "kind": "every", "when": "1h"}
            for change, message in [
                ({"when": "10s"}, "at least 60s"),
                ({"kind": "cron", "when": "61 * * * *"}, "outside 0-59"),
                ({"kind": "at", "when": "2001-01-01T00:00"}, "in the past"),
                ({"prompt": "  "}, "write the prompt"),
                ({"prompt": "x" * 8001}, "longer than 8000"),
                ({"space": "nope"}, "choose an existing space"),
                ({"space": "quiet"}, "no conversation to answer in"),
            ]:
                status, _, html = await _post(http, "/tasks", good | change)
                assert status == 400, change
                doc = parse(html)
                alert = doc.find_all("p", role="alert")
                assert alert and message in alert[0].text, (change, alert and alert[0].text)
                prompt = doc.by_id("task-prompt")
                assert prompt.text == change.get("prompt", "hi").strip()
            assert await list_tasks(db) == []
            # Without the CSRF token: refused, nothing stored.
            status, _, _ = await _post(
                http, "/tasks", {k: v for k, v in good.items() if k != "csrf"}
            )
            assert status == 403
            status, _, _ = await _post(http, "/tasks", good | {"csrf": "forged"})
            assert status == 403
            assert await list_tasks(db) == []


async def test_create_caps_tasks_per_space(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        for i in range(100):
            await add_task(db, "team", f"t{i}", interval_s=3600)
        async with site.client() as http:
            await login(http)
            form = {"csrf": await csrf_token(http), "space": "team", "prompt": "one more",
                    "kind": "every", "when": "1h"}  # fmt: skip
            status, _, html = await _post(http, "/tasks", form)
        assert status == 400 and "already has 100 tasks" in html
        assert len(await list_tasks(db, "team")) == 100


async def test_edit_a_task(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        task = await add_task(db, "team", "old prompt", interval_s=5400)
        async with site.client() as http:
            await login(http)
            status, doc = await _page(http, f"/tasks/{task.id}/edit")
            assert status == 200
            assert doc.by_id("task-prompt").text == "old prompt"
            assert doc.by_id("task-when").attrs["value"] == "1h30m"
            selected = [o for o in doc.find_all("option") if "selected" in o.attrs]
            assert [o.attrs["value"] for o in selected] == ["every"]
            token = await csrf_token(http)
            path = f"/tasks/{task.id}"

            bad = {"csrf": token, "prompt": "new", "kind": "cron", "when": "0 99 * * *"}
            status, _, html = await _post(http, path, bad)
            assert status == 400 and "outside 0-23" in html
            assert (await get_task(db, task.id)) == task  # unchanged

            form = {"csrf": token, "prompt": "new prompt", "kind": "at", "when": "3h"}
            status, location, _ = await _post(http, path, form)
            assert status == 303 and location == f"/tasks?done=saved#task-{task.id}"
            saved = await get_task(db, task.id)
            assert saved is not None
            assert (saved.prompt, saved.interval_s, saved.cron) == ("new prompt", None, None)
            assert saved.run_at is not None and saved.next_run_at == saved.run_at
            assert timedelta(hours=2, minutes=59) < saved.run_at - utcnow() <= timedelta(hours=3)

            status, _, _ = await _post(http, path, {"prompt": "no token", "kind": "every",
                                                    "when": "1h"})  # fmt: skip
            assert status == 403
            assert (await get_task(db, task.id)) == saved
            status, _ = await _page(http, "/tasks/999/edit")
            assert status == 404
            status, _, _ = await _post(http, "/tasks/999", form)
            assert status == 404


async def test_pause_and_resume(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        task = await add_task(db, "team", "digest", interval_s=3600)
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            # Through htmx: the row comes back, re-rendered, with a Resume button.
            status, _, html = await _post(
                http, f"/tasks/{task.id}/pause", {"csrf": token}, htmx=True
            )
            assert status == 200
            row = task_rows(parse(html))[task.id]
            assert "paused" in row.text and "Task paused." in row.text
            assert row.find("form", action=f"/tasks/{task.id}/resume")
            assert "<html" not in html  # a fragment, not a page
            paused = await get_task(db, task.id)
            assert paused is not None and paused.enabled is False
            assert paused.next_run_at == task.next_run_at

            # Without JavaScript: a redirect back to the list.
            status, location, _ = await _post(http, f"/tasks/{task.id}/resume", {"csrf": token})
            assert status == 303 and location == f"/tasks?done=resumed#task-{task.id}"
            resumed = await get_task(db, task.id)
            assert resumed is not None and resumed.enabled
            assert resumed.next_run_at == task.next_run_at  # still ahead: kept

            status, _, _ = await _post(http, f"/tasks/{task.id}/pause", {})
            assert status == 403
            assert (await get_task(db, task.id)).enabled  # type: ignore[union-attr]


async def test_resume_a_spent_one_shot_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        task = await add_task(db, "team", "once", run_at=utcnow() - timedelta(hours=1))
        from mercury.storage.tasks import mark_task_ran

        await mark_task_ran(db, task.id, ran_at=utcnow(), next_run_at=None)  # ran: disabled
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            status, _, html = await _post(http, f"/tasks/{task.id}/resume", {"csrf": token})
            assert status == 409 and "time has passed" in html
            status, _, html = await _post(
                http, f"/tasks/{task.id}/resume", {"csrf": token}, htmx=True
            )
            assert status == 200 and "time has passed" in html
        assert (await get_task(db, task.id)).enabled is False  # type: ignore[union-attr]


async def test_run_now(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        task = await add_task(db, "team", "digest", interval_s=3600)
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            status, _, html = await _post(http, f"/tasks/{task.id}/run", {"csrf": token}, htmx=True)
            assert status == 200
            row = task_rows(parse(html))[task.id]
            assert "Task queued to run now." in row.text
            assert "queued" in row.find("td", class_="last-result").text
            [job] = await list_jobs(db, space_id="team")
            assert job.status == JobStatus.QUEUED
            assert job.payload["task_id"] == task.id and job.payload["prompt"] == "digest"
            assert (job.payload["platform"], job.payload["chat_id"]) == ("web", "room-1")
            after = await get_task(db, task.id)
            assert after is not None and after.next_run_at == task.next_run_at

            # A paused space still applies: refused, nothing queued.
            await pause_until_resumed(db, "team")
            status, _, html = await _post(http, f"/tasks/{task.id}/run", {"csrf": token})
            assert status == 409 and "paused until it is resumed" in html
            assert len(await list_jobs(db, space_id="team")) == 1

            status, _, _ = await _post(http, f"/tasks/{task.id}/run", {})
            assert status == 403
            status, _, _ = await _post(http, "/tasks/999/run", {"csrf": token})
            assert status == 404
        assert len(await list_jobs(db, space_id="team")) == 1


async def test_delete(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        one = await add_task(db, "team", "one", interval_s=3600)
        two = await add_task(db, "team", "two", interval_s=3600)
        async with site.client() as http:
            await login(http)
            token = await csrf_token(http)
            status, _, _ = await _post(http, f"/tasks/{one.id}/delete", {})
            assert status == 403
            assert len(await list_tasks(db)) == 2
            status, _, html = await _post(
                http, f"/tasks/{one.id}/delete", {"csrf": token}, htmx=True
            )
            assert status == 200 and f"Task {one.id} deleted." in html
            status, location, _ = await _post(http, f"/tasks/{two.id}/delete", {"csrf": token})
            assert status == 303 and location == "/tasks?done=deleted"
            assert await list_tasks(db) == []
            status, _, _ = await _post(http, f"/tasks/{two.id}/delete", {"csrf": token})
            assert status == 404


async def test_the_list_is_paged_and_filtered_by_space(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        db = site.app.db
        await _seed(db)
        await get_or_create_space(db, "other")
        ids = [
            (await add_task(db, "team", f"t{i}", interval_s=3600)).id for i in range(PAGE_SIZE + 7)
        ]
        mine = await add_task(db, "other", "elsewhere", interval_s=3600)
        async with site.client() as http:
            await login(http)
            _, first = await _page(http)
            _, second = await _page(http, "/tasks?page=2")
            _, filtered = await _page(http, "/tasks?space=other")
            _, bogus = await _page(http, "/tasks?page=x")
        assert list(task_rows(first)) == ids[:PAGE_SIZE]
        assert list(task_rows(second)) == [*ids[PAGE_SIZE:], mine.id]
        assert "page 2 of 2" in second.text and second.find("a", class_="button secondary small")
        assert list(task_rows(filtered)) == [mine.id]
        assert list(task_rows(bogus)) == ids[:PAGE_SIZE]
