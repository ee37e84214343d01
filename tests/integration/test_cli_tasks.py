"""`mercury tasks ...` against a tmp site's real migrated SQLite.

The commands run in this process through click's own test runner (the real command code
and output, without a Python start per command); the last test runs them as real
`mercury` processes beside a running Mercury (Docker), which runs a task the CLI queued.
What each command did is read back through the storage functions, not only from what it
printed. The site's scheduler.timezone is Europe/Berlin, so plain-word times and cron
expressions are read on Berlin's clock.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from mercury.cli import main
from mercury.storage import (
    Database,
    JobStatus,
    default_sqlite_url,
    get_conversation,
    get_or_create_space,
    link_conversation,
    list_jobs,
    pause_until_resumed,
    utcnow,
)
from mercury.storage.spend import add_model_call
from mercury.storage.tasks import TaskRecord, get_task, list_tasks, note_task_outcome
from tests.fakes.model_server import FakeModelServer
from tests.integration.cli_logging import logging_as_it_was
from tests.integration.mercury_site import echo_responder, mercury

T = TypeVar("T")
# The site's own settings only: no MERCURY_* variable of the test's process applies.
# Wide enough that no cell wraps, whatever the time of day makes the next-run texts.
CLEAN_ENV = {"MERCURY_CONFIG": None, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


class Site:
    """A tmp site: mercury.yaml, a migrated SQLite database with spaces main and other."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.data = root / "data"
        (root / "mercury.yaml").write_text(json.dumps(config))

    def cli(self, *args: str) -> Any:
        """`mercury --config <site> tasks *args`, in this process; exit code and output."""
        with logging_as_it_was():
            result = CliRunner().invoke(
                main, ["--config", str(self.root / "mercury.yaml"), "tasks", *args], env=CLEAN_ENV
            )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return SimpleNamespace(
            returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr
        )

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        return str(r.stdout)

    def error(self, *args: str, code: int = 1) -> str:
        """The one `error: ...` line a failing command prints (nothing on stdout)."""
        r = self.cli(*args)
        assert r.returncode == code, (r.stdout, r.stderr)
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        return lines[0].removeprefix("error: ")

    def listed(self, *args: str) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("list", "--json", *args))["tasks"])

    def db(self, work: Callable[[Database], Awaitable[T]]) -> T:
        async def go() -> T:
            db = Database(default_sqlite_url(self.data))
            try:
                return await work(db)
            finally:
                await db.dispose()

        return asyncio.run(go())

    def tasks(self) -> list[TaskRecord]:
        return self.db(lambda db: list_tasks(db))

    def task(self, task_id: int) -> TaskRecord:
        found = self.db(lambda db: get_task(db, task_id))
        assert found is not None
        return found


def site_config(root: Path) -> dict[str, Any]:
    return {
        "instance": "clitasks",
        "data_dir": str(root / "data"),
        "scheduler": {"timezone": "Europe/Berlin"},
        "budgets": {"task_run": "$0.50"},
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated by `mercury db upgrade`, with spaces main and other (each with
    its web chat), made once: each test gets a copy."""
    root = tmp_path_factory.mktemp("seeded")
    site = Site(root, site_config(root))
    r = mercury("db", "upgrade", cwd=root, timeout=60)
    assert r.returncode == 0, r.stderr

    async def seed(db: Database) -> None:
        for space in ("main", "other"):
            await get_or_create_space(db, space)
            await link_conversation(db, "web", space, space)

    site.db(seed)
    return site.data


@pytest.fixture
def tsite(tmp_path: Path, seeded: Path) -> Site:
    shutil.copytree(seeded, tmp_path / "data")
    return Site(tmp_path, site_config(tmp_path))


def test_add_list_pause_resume_run_rm(tsite: Site) -> None:
    before = utcnow()
    out = tsite.ok("add", "main", "Morning report", "--cron", "0 9 * * 1-5")
    assert out.startswith("task 1 added to space main: cron 0 9 * * 1-5 (Europe/Berlin); next run")
    cron = tsite.task(1)
    assert cron.created_by == "operator" and cron.conversation_id is None
    assert cron.next_run_at is not None and cron.next_run_at > before
    local = cron.next_run_at.astimezone(BERLIN)
    # 09:00 on Berlin's clock, a weekday, within the next few days.
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
    assert cron.next_run_at - before < timedelta(days=4)
    assert f"{local:%Y-%m-%d} 09:00 CE" in out

    tsite.ok("add", "main", "Ping the site", "--every", "30m", "--silent", "--catch-up", "skip")
    every = tsite.task(2)
    assert (every.interval_s, every.silent, every.catch_up) == (1800, True, "skip")

    out = tsite.ok(
        "add", "main", "Water the plants", "--at", "tomorrow 09:00", "--chat", "web:main"
    )
    once = tsite.task(3)
    assert once.run_at is not None and once.run_at == once.next_run_at
    wall = once.run_at.astimezone(BERLIN)
    assert (wall.date(), wall.hour, wall.minute) == (
        utcnow().astimezone(BERLIN).date() + timedelta(days=1),
        9,
        0,
    )
    conv = tsite.db(lambda db: get_conversation(db, "web", "main"))
    assert conv is not None and once.conversation_id == conv.id
    assert "task 3 added to space main: once; next run" in out

    # Two earlier runs of task 2 cost $0.01 and $0.03; the last one failed.
    async def history(db: Database) -> None:
        for run, usd, tokens in (("r1", 0.01, 100), ("r2", 0.03, 300)):
            await add_model_call(
                db, space_id="main", run_id=run, provider="anthropic", model="m",
                input_tokens=tokens, output_tokens=0, cost_usd=usd, status=200,
                incomplete=False, task_id=2,
            )  # fmt: skip
        await note_task_outcome(db, 2, "failed", "the model was down", utcnow())

    tsite.db(history)
    rows = {t["id"]: t for t in tsite.listed()}
    assert list(rows) == [1, 2, 3]
    assert rows[2]["avg_cost_usd"] == pytest.approx(0.02)
    assert rows[2]["avg_tokens"] == 200
    assert (rows[2]["last_outcome"], rows[2]["last_detail"]) == ("failed", "the model was down")
    assert rows[2]["silent"] is True and rows[2]["catch_up"] == "skip"
    assert rows[1]["avg_cost_usd"] is None and rows[1]["last_outcome"] is None
    for row in rows.values():
        assert row["space_id"] == "main" and row["timezone"] == "Europe/Berlin"
        assert row["task_run_cap"] == "$0.5" and row["task_run_cap_source"] == "config"
        assert row["state"] == "enabled"
    assert rows[1]["next_run_local"].endswith(("09:00 CET", "09:00 CEST"))

    text = tsite.ok("list")
    assert "every 30m" in text and "enabled, silent, catch-up skip" in text
    assert "$0.02, 200 tokens (cap $0.50)" in text
    assert "failed" in text and "the model was down" in text
    assert "never run" in text and "Water the plants" in text

    assert tsite.ok("pause", "2").strip() == "task 2 paused"
    assert tsite.task(2).enabled is False
    assert tsite.ok("pause", "2").strip() == "task 2 is already paused"
    assert [t["state"] for t in tsite.listed()] == ["enabled", "paused", "enabled"]
    out = tsite.ok("resume", "2")
    assert out.startswith("task 2 resumed; next run")
    assert tsite.task(2).enabled is True

    out = tsite.ok("run", "2")
    assert out.startswith("task 2 queued (job ")
    jobs = tsite.db(lambda db: list_jobs(db, status=JobStatus.QUEUED))
    assert [(j.space_id, j.payload["task_id"], j.payload["prompt"]) for j in jobs] == [
        ("main", 2, "Ping the site")
    ]

    assert tsite.ok("rm", "1").strip() == "task 1 removed"
    assert [t.id for t in tsite.tasks()] == [2, 3]
    assert tsite.error("rm", "1") == "no task 1 (`mercury tasks list` shows them)"
    assert [t["id"] for t in tsite.listed("main")] == [2, 3]
    assert tsite.listed("other") == []
    assert tsite.ok("list", "other").strip() == "no tasks in space other"


def test_run_of_a_task_in_a_paused_space_is_refused(tsite: Site) -> None:
    tsite.ok("add", "main", "Report", "--every", "1h")
    tsite.db(lambda db: pause_until_resumed(db, "main"))
    reason = tsite.error("run", "1")
    assert reason == "task 1 not run: space main is paused until it is resumed; resume it first"
    assert tsite.db(lambda db: list_jobs(db, status=JobStatus.QUEUED)) == []


def test_run_of_a_task_that_usually_costs_more_than_its_cap_is_refused(tsite: Site) -> None:
    # The site's budgets.task_run is $0.50; this task's runs cost $0.80 on average.
    tsite.ok("add", "main", "Expensive report", "--every", "1h")

    async def history(db: Database) -> None:
        for run, usd in (("r1", 0.7), ("r2", 0.9)):
            await add_model_call(
                db, space_id="main", run_id=run, provider="anthropic", model="m",
                input_tokens=10, output_tokens=0, cost_usd=usd, status=200,
                incomplete=False, task_id=1,
            )  # fmt: skip

    tsite.db(history)
    (row,) = tsite.listed()
    assert row["avg_cost_usd"] == pytest.approx(0.8)
    reason = tsite.error("run", "1")
    assert reason.startswith("task 1 ") and "$0.50" in reason, reason
    assert tsite.db(lambda db: list_jobs(db, status=JobStatus.QUEUED)) == []
    # With the space's own, higher per-run cap it runs.
    r = mercury("budget", "set", "main", "task_run", "$2", cwd=tsite.root, timeout=60)
    assert r.returncode == 0, r.stderr
    assert tsite.ok("run", "1").startswith("task 1 queued")
    assert tsite.listed()[0]["task_run_cap_source"] == "space"


def test_a_passed_one_shot_cannot_be_resumed(tsite: Site) -> None:
    tsite.ok("add", "main", "Soon", "--at", "in 2m")

    async def passed(db: Database) -> None:
        from mercury.storage.tasks import set_task_enabled, update_task

        gone = utcnow() - timedelta(minutes=5)
        await update_task(db, 1, prompt="Soon", run_at=gone, next_run_at=gone)
        await set_task_enabled(db, 1, False)

    tsite.db(passed)
    message = tsite.error("resume", "1")
    assert message.startswith("task 1 was due once at ") and "has passed" in message
    assert tsite.task(1).enabled is False


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["add", "main", "p"], "give exactly one schedule: --at WHEN, --every DURATION or --cron"),
        (["add", "main", "p", "--every", "1h", "--cron", "0 9 * * *"], "(got --every, --cron)"),
        (["add", "main", "  ", "--every", "1h"], "the prompt is empty"),
        (["add", "main", "p", "--at", "soon"], "cannot read 'soon' as a time: use e.g."),
        (["add", "main", "p", "--at", "2001-01-01T09:00"], "'2001-01-01T09:00' is in the past"),
        (["add", "main", "p", "--at", "tomorrow"], "needs a time of day too"),
        (["add", "ghost", "p", "--every", "1h"], "no space 'ghost'"),
        (["add", "main", "p", "--every", "10s"], "--every must be at least 60s"),
        (["add", "main", "p", "--cron", "61 * * * *"], "bad cron minute field"),
        (["add", "main", "p", "--every", "1h", "--chat", "web:other"], "belongs to space other"),
        (["add", "main", "p", "--every", "1h", "--chat", "web"], "expected PLATFORM:CHAT_ID"),
        (["add", "main", "p", "--every", "1h", "--chat", "slack:C1"], "no chat 'slack:C1'"),
        (["pause", "99"], "no task 99"),
        (["run", "99"], "no task 99"),
        (["list", "ghost"], "no space 'ghost'"),
        (["timezone", "main", "Mars/Base"], "unknown time zone 'Mars/Base': use an IANA name"),
    ],
)
def test_bad_input_is_one_line_naming_what_is_wrong(
    tsite: Site, args: list[str], expected: str
) -> None:
    assert expected in tsite.error(*args)
    assert tsite.tasks() == []


def test_usage_errors_are_clicks_own(tsite: Site) -> None:
    r = tsite.cli("add", "main", "p", "--every", "1h", "--catch-up", "never")
    assert r.returncode == 2 and "'never' is not one of 'once', 'skip'" in r.stderr
    r = tsite.cli("pause", "one")
    assert r.returncode == 2 and "'one' is not a valid integer" in r.stderr
    assert tsite.tasks() == []


def test_a_space_zone_of_its_own_moves_its_cron_tasks(tsite: Site) -> None:
    assert tsite.ok("timezone", "main").strip() == "space main: Europe/Berlin (scheduler.timezone)"
    tsite.ok("add", "main", "Report", "--cron", "0 9 * * *")
    tsite.ok("add", "main", "Once", "--at", "2099-06-01 12:00")
    once_before = tsite.task(2).run_at
    assert once_before == datetime(2099, 6, 1, 10, 0, tzinfo=UTC)  # CEST

    out = tsite.ok("timezone", "main", "America/New_York")
    assert out.strip() == (
        "space main now reads and shows times in America/New_York; 1 cron task(s) rescheduled"
    )
    nxt = tsite.task(1).next_run_at
    assert nxt is not None and (nxt.astimezone(NEW_YORK).hour, nxt.minute) == (9, 0)
    assert tsite.task(2).run_at == once_before  # an instant stays that instant
    assert tsite.ok("timezone", "main").strip() == "space main: America/New_York (the space's own)"
    assert {t["timezone"] for t in tsite.listed()} == {"America/New_York"}
    # New times are read on the space's new clock; other spaces keep the config's.
    tsite.ok("add", "main", "Later", "--at", "2099-06-01 12:00")
    assert tsite.task(3).run_at == datetime(2099, 6, 1, 16, 0, tzinfo=UTC)  # EDT
    tsite.ok("add", "other", "Elsewhere", "--at", "2099-06-01 12:00")
    assert tsite.task(4).run_at == datetime(2099, 6, 1, 10, 0, tzinfo=UTC)

    out = tsite.ok("timezone", "main", "default")
    assert "Europe/Berlin (scheduler.timezone)" in out
    nxt = tsite.task(1).next_run_at
    assert nxt is not None and nxt.astimezone(BERLIN).hour == 9


def test_a_database_this_mercury_cannot_use_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "mercury.yaml").write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    r = mercury("tasks", "list", cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert "no database at" in r.stderr and "mercury db upgrade" in r.stderr
    assert not (tmp_path / "data" / "mercury.db").exists()


def test_a_bad_configured_zone_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "mercury.yaml").write_text("scheduler: {timezone: Europe/Berln}\n")
    r = mercury("tasks", "list", cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "config: scheduler.timezone: unknown time zone 'Europe/Berln': use an IANA name like "
        "Europe/Berlin, America/New_York or UTC"
    )


# --------------------------------------------------------------------------- with mercury run


@pytest.mark.docker
def test_the_cli_steers_a_running_mercury(site: Any, fake: FakeModelServer) -> None:
    m = site(extra={"scheduler": {"timezone": "Europe/Berlin", "tick": 1}})
    m.start()
    fake.responder = echo_responder()
    m.post("alpha", "hello")
    m.wait_replies("alpha", 1)

    def cli(*args: str) -> str:
        r = mercury("tasks", *args, cwd=m.root, timeout=60)
        assert r.returncode == 0, r.stderr
        return str(r.stdout)

    cli("add", "alpha", "nightly digest", "--every", "1h")
    assert cli("run", "1").startswith("task 1 queued")
    replies = m.wait_replies("alpha", 2)
    assert replies[1]["text"].endswith("nightly digest")
    # The run's model calls are counted for the task: its average cost is listed.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (row,) = json.loads(cli("list", "--json"))["tasks"]
        if row["avg_tokens"]:
            break
        time.sleep(0.2)
    assert row["avg_tokens"] and row["avg_tokens"] > 0, row
    cli("pause", "1")
    cli("rm", "1")
    assert json.loads(cli("list", "--json"))["tasks"] == []
    assert m.stop() == 0
