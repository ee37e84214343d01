"""`mercury tasks ...`: the operator's scheduled prompts, from the command line.

add, list, pause, resume, run (now), rm, and a space's time zone. Every command only reads
and writes the database, so it works while `mercury run` is running: the running
scheduler sees a new, paused or removed task at its next tick, and a task queued by `run`
is picked up when the dispatcher next polls the queue (within about a second).

Times are read and shown in the space's time zone (`scheduler.timezone`, or the space's
own, set with `mercury tasks timezone`): `--at` takes plain words ("in 2h", "tomorrow
09:00", "mon 9am", ISO; core/when.py) and `--cron` is matched on the space's clock.

Failures are one line on stderr: exit 1 for what cannot be done (no such task, a time in
the past, a refused run), 2 for a config that does not load (common.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, TypeVar

import click

from mercury.cli.common import config_option, fail, load_or_exit, out
from mercury.cli.task_views import (
    TaskView,
    describe,
    print_table,
    space_zone,
    task_views,
    view_json,
)

if TYPE_CHECKING:  # imported where used: `mercury --help` need not load storage
    from mercury.config import Config
    from mercury.storage import Database, TaskRecord

T = TypeVar("T")


class TaskCommandError(Exception):
    """What a command cannot do, as the one line the operator reads."""


def _with_db(work: Callable[[Database, Config], Awaitable[T]]) -> T:
    """Load the config, open its database (cli/sitedb.py: a missing one or one at another
    schema revision is refused, saying what to run), run `work`; failures as one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from mercury.cli.sitedb import SiteDbError, site_database
    from mercury.logging import configure_logging_for, first_line
    from mercury.storage import StorageError, safe_url

    loaded = load_or_exit()
    # Warnings only, on stderr: stdout is the command's answer (and --json parses it).
    configure_logging_for(loaded, "warning")
    config = loaded.config

    async def go() -> T:
        async with site_database(config) as db:
            return await work(db, config)

    try:
        return asyncio.run(go())
    except (TaskCommandError, SiteDbError) as exc:
        fail(str(exc))
    except (StorageError, SQLAlchemyError, OSError) as exc:  # cannot connect, locked, ...
        where = safe_url(config.resolved_database_url())
        fail(f"database_url: cannot use {where}: {first_line(exc)}")


async def _space(db: Database, space_id: str) -> str:
    """The space's id when it exists; else an error listing a few that do."""
    from mercury.storage import get_space, list_spaces

    if await get_space(db, space_id) is not None:
        return space_id
    known = [s.id for s in await list_spaces(db)]
    hint = f" (spaces: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''})"
    raise TaskCommandError(
        f"no space {space_id!r}: a space is made by its first message"
        + (hint if known else "; there are none yet")
    )


async def _task(db: Database, task_id: int) -> TaskRecord:
    from mercury.storage.tasks import get_task

    task = await get_task(db, task_id)
    if task is None:
        raise TaskCommandError(f"no task {task_id} (`mercury tasks list` shows them)")
    return task


# --------------------------------------------------------------------------- the group


@click.group("tasks")
def tasks() -> None:
    """Scheduled prompts: add, list, pause, resume, run now, remove.

    Works while `mercury run` is running: it only changes the database. Times are in the
    space's time zone (scheduler.timezone, or the space's own: `mercury tasks timezone`).
    """


@tasks.command("add")
@click.argument("space")
@click.argument("prompt")
@click.option("--at", "at", metavar="WHEN", help='Once: "in 2h", "tomorrow 09:00", "mon 9am", ISO.')
@click.option("--every", metavar="DURATION", help="Repeatedly: 30m, 2h, 1d (at least 1m).")
@click.option("--cron", metavar="EXPR", help='On a cron schedule: "0 9 * * 1-5".')
@click.option("--silent", is_flag=True, help="Post nothing unless the run fails.")
@click.option(
    "--catch-up",
    "catch_up",
    type=click.Choice(["once", "skip"]),
    default="once",
    show_default=True,
    help="A run missed while Mercury was down: run it once at start, or skip it.",
)
@click.option("--chat", metavar="PLATFORM:CHAT_ID", help="Answer in this chat of the space.")
@config_option
def add(
    space: str,
    prompt: str,
    at: str | None,
    every: str | None,
    cron: str | None,
    silent: bool,
    catch_up: str,
    chat: str | None,
) -> None:
    """Schedule PROMPT in SPACE: exactly one of --at, --every, --cron."""
    given = [name for name, v in (("--at", at), ("--every", every), ("--cron", cron)) if v]
    if len(given) != 1:
        fail(
            "give exactly one schedule: --at WHEN, --every DURATION or --cron EXPR"
            + (f" (got {', '.join(given)})" if given else "")
        )
    prompt = prompt.strip()
    if not prompt:
        fail("the prompt is empty: write what the agent is asked when the task runs")

    async def work(db: Database, config: Config) -> str:
        from mercury.api.routes.tasks import MAX_PROMPT_CHARS
        from mercury.core.when import WhenError, format_both, zone_name
        from mercury.storage import utcnow
        from mercury.storage.tasks import add_task

        if len(prompt) > MAX_PROMPT_CHARS:
            raise TaskCommandError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
        space_id = await _space(db, space)
        conversation_id = await _chat(db, space_id, chat)
        zone = await space_zone(db, config, space_id)
        now = utcnow()
        try:
            plan = plan_schedule(at=at, every=every, cron=cron, now=now, zone=zone)
        except (ValueError, WhenError) as exc:
            raise TaskCommandError(str(exc)) from None
        task = await add_task(
            db,
            space_id,
            prompt,
            cron=plan.cron,
            interval_s=plan.interval_s,
            run_at=plan.run_at,
            next_run_at=plan.next_run_at,
            created_by="operator",
            conversation_id=conversation_id,
            silent=silent,
            catch_up=catch_up,
        )
        nxt = format_both(plan.next_run_at, zone)
        cron_zone = f" ({zone_name(zone)})" if plan.cron else ""
        return (
            f"task {task.id} added to space {space_id}: {describe(task)}{cron_zone}; next run {nxt}"
        )

    out.print(_with_db(work), soft_wrap=True, markup=False)


async def _chat(db: Database, space_id: str, chat: str | None) -> int | None:
    """The conversation `--chat PLATFORM:CHAT_ID` names (it must be the space's), or None
    for "the space's latest", which must exist for the task to answer anywhere."""
    from mercury.storage import get_conversation, latest_conversation

    if chat is None:
        if await latest_conversation(db, space_id) is None:
            raise TaskCommandError(f"space {space_id} has no chat to answer in yet")
        return None
    platform, sep, chat_id = chat.partition(":")
    if not sep or not platform or not chat_id:
        raise TaskCommandError(
            f"--chat: expected PLATFORM:CHAT_ID like telegram:12345, got {chat!r}"
        )
    conv = await get_conversation(db, platform, chat_id)
    if conv is None:
        raise TaskCommandError(f"--chat: no chat {chat!r} is known (it needs a first message)")
    if conv.space_id != space_id:
        raise TaskCommandError(f"--chat: {chat} belongs to space {conv.space_id}, not {space_id}")
    return conv.id


@dataclass(frozen=True, slots=True)
class Plan:
    """A schedule as stored: exactly one of cron, interval_s, run_at, and the first run."""

    cron: str | None
    interval_s: int | None
    run_at: datetime | None
    next_run_at: datetime


def plan_schedule(
    *, at: str | None, every: str | None, cron: str | None, now: datetime, zone: tzinfo
) -> Plan:
    """One of --at/--every/--cron -> Plan, with the host API's parsers and limits (the
    zone: the space's). ValueError/WhenError with the line for the operator."""
    from mercury.api.routes.tasks import MIN_INTERVAL_S
    from mercury.api.routes.timespec import parse_duration, validate_cron
    from mercury.core.when import future_when, next_cron_in_zone

    if cron:
        expr = validate_cron(cron)
        return Plan(expr, None, None, next_cron_in_zone(expr, now, zone))
    if every:
        seconds = int(parse_duration(every).total_seconds())
        if seconds < MIN_INTERVAL_S:
            raise ValueError(f"--every must be at least {MIN_INTERVAL_S}s, got {every!r}")
        return Plan(None, seconds, None, now + timedelta(seconds=seconds))
    assert at is not None
    run_at = future_when(at, now, zone)
    return Plan(None, None, run_at, run_at)


# --------------------------------------------------------------------------- list


@tasks.command("list")
@click.argument("space", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON.")
@config_option
def list_(space: str | None, as_json: bool) -> None:
    """Every task (of SPACE): schedule, next run, last result, average cost of recent runs."""

    async def work(db: Database, config: Config) -> list[TaskView]:
        if space is not None:
            await _space(db, space)
        return await task_views(db, config, space)

    views = _with_db(work)
    if as_json:
        click.echo(json.dumps({"tasks": [view_json(v) for v in views]}, indent=2))
        return
    if not views:
        out.print("no tasks" + (f" in space {space}" if space else ""), markup=False)
        return
    print_table(views)


# --------------------------------------------------------------------------- one task


@tasks.command("pause")
@click.argument("task_id", metavar="ID", type=int)
@config_option
def pause(task_id: int) -> None:
    """Stop task ID from running until `resume` (its schedule is kept)."""

    async def work(db: Database, config: Config) -> str:
        from mercury.storage.tasks import set_task_enabled

        task = await _task(db, task_id)
        if not task.enabled:
            return f"task {task_id} is already paused"
        await set_task_enabled(db, task_id, False)
        return f"task {task_id} paused"

    out.print(_with_db(work), markup=False)


@tasks.command("resume")
@click.argument("task_id", metavar="ID", type=int)
@config_option
def resume(task_id: int) -> None:
    """Run task ID on its schedule again (runs missed while paused are not made up)."""

    async def work(db: Database, config: Config) -> str:
        from mercury.core.when import format_both, format_local
        from mercury.pipeline.scheduler import resume_at
        from mercury.storage import utcnow
        from mercury.storage.tasks import set_task_enabled

        task = await _task(db, task_id)
        zone = await space_zone(db, config, task.space_id)
        if task.enabled:
            return f"task {task_id} is not paused"
        nxt = resume_at(task, utcnow(), zone)
        if nxt is None:
            when = f" at {format_local(task.run_at, zone)}" if task.run_at else ""
            raise TaskCommandError(
                f"task {task_id} was due once{when}, which has passed: add it again with "
                "a new --at (and `mercury tasks rm` this one)"
            )
        await set_task_enabled(db, task_id, True, next_run_at=nxt)
        return f"task {task_id} resumed; next run {format_both(nxt, zone)}"

    out.print(_with_db(work), markup=False, soft_wrap=True)


@tasks.command("run")
@click.argument("task_id", metavar="ID", type=int)
@config_option
def run(task_id: int) -> None:
    """Queue task ID now, whatever its schedule (the schedule does not move).

    Checked as a due task is (scheduler.admission): refused, with the reason, when its
    space is paused, its creator may not run it, or a spending cap (with what a run of the
    task usually costs) stops it."""

    async def work(db: Database, config: Config) -> str:
        from mercury.pipeline.scheduler import RunNowRefused, TaskGate, run_task_now

        await _task(db, task_id)
        try:
            job = await run_task_now(db, task_id, gate=TaskGate.from_config(config, db))
        except RunNowRefused as exc:
            why = str(exc)
            if not why.startswith(f"task {task_id} "):
                why = f"task {task_id} not run: {why}"
            raise TaskCommandError(why) from None
        return (
            f"task {task_id} queued (job {job.id}); a running Mercury starts it as soon as "
            "its space is free"
        )

    out.print(_with_db(work), markup=False, soft_wrap=True)


@tasks.command("rm")
@click.argument("task_id", metavar="ID", type=int)
@config_option
def rm(task_id: int) -> None:
    """Delete task ID (a run already queued still happens)."""

    async def work(db: Database, config: Config) -> str:
        from mercury.storage.tasks import cancel_task

        if not await cancel_task(db, task_id):
            raise TaskCommandError(f"no task {task_id} (`mercury tasks list` shows them)")
        return f"task {task_id} removed"

    out.print(_with_db(work), markup=False)


# --------------------------------------------------------------------------- time zone


@tasks.command("timezone")
@click.argument("space")
@click.argument("zone", required=False)
@config_option
def timezone(space: str, zone: str | None) -> None:
    """Show SPACE's time zone, or set it to ZONE (an IANA name like Europe/Berlin;
    `default` follows scheduler.timezone again). Its cron tasks are rescheduled."""

    async def work(db: Database, config: Config) -> str:
        from mercury.core.when import TIMEZONE_PREF, WhenError, zone_name, zone_named
        from mercury.storage import delete_preference, get_preferences, set_preference

        space_id = await _space(db, space)
        default = config.scheduler.timezone
        if zone is None:
            own = (await get_preferences(db, space_id)).get(TIMEZONE_PREF)
            current = await space_zone(db, config, space_id)
            source = "the space's own" if own else "scheduler.timezone"
            return f"space {space_id}: {zone_name(current)} ({source})"
        if zone.strip().lower() == "default":
            await delete_preference(db, space_id, TIMEZONE_PREF)
            chosen = f"{default} (scheduler.timezone)"
        else:
            try:
                name = zone_named(zone).key
            except WhenError as exc:
                raise TaskCommandError(str(exc)) from None
            await set_preference(db, space_id, TIMEZONE_PREF, name)
            chosen = name
        moved = await _reschedule_crons(db, space_id, await space_zone(db, config, space_id))
        again = f"; {moved} cron task(s) rescheduled" if moved else ""
        return f"space {space_id} now reads and shows times in {chosen}{again}"

    out.print(_with_db(work), markup=False, soft_wrap=True)


async def _reschedule_crons(db: Database, space_id: str, zone: tzinfo) -> int:
    """Recompute the next run of the space's enabled cron tasks on the new clock."""
    from mercury.core.when import next_cron_in_zone
    from mercury.storage import utcnow
    from mercury.storage.tasks import list_tasks, update_task

    now = utcnow()
    moved = 0
    for task in await list_tasks(db, space_id, enabled_only=True):
        if not task.cron:
            continue
        await update_task(
            db,
            task.id,
            prompt=task.prompt,
            cron=task.cron,
            next_run_at=next_cron_in_zone(task.cron, now, zone),
        )
        moved += 1
    return moved


__all__ = ["Plan", "plan_schedule", "tasks"]
