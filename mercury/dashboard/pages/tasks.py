"""The Tasks page: every scheduled prompt, when it runs next, how it last went; steer them.

/tasks lists the tasks (a page at a time, optionally of one space) with their readable
schedule, next run, whether they are enabled and their last result (the newest job the
task queued and that job's run). The operator creates, edits, pauses, resumes, runs now
and deletes tasks. Every write is a form POST (CSRF-checked by `page`): without
JavaScript it redirects back to the list (Post/Redirect/Get); through htmx
(`HX-Request`) it answers the task's row, re-rendered, so only that row changes.

Schedules are read exactly as the host API reads them (mercury.api.routes.timespec: the
one duration grammar, ISO times, 5-field cron), with its limits; a new task answers in its
space's latest conversation, as an agent-created one does. Run now goes through the
scheduler's own enqueue path (mercury.pipeline.scheduler.run_task_now), so a paused space
refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from aiohttp import web

from mercury.api.routes.tasks import MAX_PROMPT_CHARS, MAX_TASKS_PER_SPACE, MIN_INTERVAL_S
from mercury.api.routes.timespec import parse_duration, parse_time, validate_cron
from mercury.core.budget import Spent
from mercury.core.when import (
    TIMEZONE_PREF,
    format_both,
    next_cron_in_zone,
    space_timezone,
)
from mercury.dashboard.deps import deps
from mercury.dashboard.render import SESSION, fragment, page, render
from mercury.dashboard.schedule_words import describe_schedule
from mercury.logging import get_logger
from mercury.pipeline.scheduler import (
    RunNowRefused,
    resume_at,
    run_task_now,
    task_cost_estimate,
)
from mercury.storage import Database, get_space, latest_conversation, list_spaces, utcnow
from mercury.storage.preferences import preference_values
from mercury.storage.tasks import (
    TaskRecord,
    TaskRow,
    add_task,
    cancel_task,
    count_tasks,
    get_task,
    last_task_results,
    set_task_enabled,
    task_page,
    update_task,
)

log = get_logger(__name__)

__all__ = [
    "Schedule",
    "describe_schedule",
    "duration_text",
    "parse_schedule",
    "resume_next_run",
    "routes",
    "schedule_fields",
]

routes = web.RouteTableDef()

PAGE_SIZE = 50
MAX_WHEN_CHARS = 128
Kind = Literal["cron", "every", "at"]
KINDS: tuple[Kind, ...] = ("cron", "every", "at")
# What a redirect after a plain (no-JavaScript) form post says; codes, never free text.
DONE = {
    "created": "Task created.",
    "saved": "Task saved.",
    "paused": "Task paused.",
    "resumed": "Task resumed.",
    "queued": "Task queued to run now.",
    "deleted": "Task deleted.",
}


# ------------------------------------------------------------------ pure rules


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: exactly one of cron, interval_s, run_at, and the first run."""

    cron: str | None
    interval_s: int | None
    run_at: datetime | None
    next_run_at: datetime


def parse_schedule(kind: str, text: str, now: datetime, zone: tzinfo = UTC) -> Schedule:
    """A form's schedule -> Schedule, with the host API's parsers and limits.

    `cron`: 5 fields, matched on the space's clock (`zone`); `every`: a duration of at
    least a minute; `at`: a time in plain words or ISO, read in `zone`, in the future.
    ValueError with a message for the operator.
    """
    value = text.strip()
    if not value:
        raise ValueError("give a schedule: a cron expression, a duration or a time")
    if len(value) > MAX_WHEN_CHARS:
        raise ValueError(f"the schedule is longer than {MAX_WHEN_CHARS} characters")
    if kind == "cron":
        cron = validate_cron(value)
        return Schedule(cron, None, None, next_cron_in_zone(cron, now, zone))
    if kind == "every":
        interval_s = int(parse_duration(value).total_seconds())
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(f"'every' must be at least {MIN_INTERVAL_S}s, got {value!r}")
        return Schedule(None, interval_s, None, now + timedelta(seconds=interval_s))
    if kind == "at":
        run_at = parse_time(value, now=now, zone=zone)
        if run_at <= now:
            raise ValueError(f"that time is in the past: {format_both(run_at, zone)}")
        return Schedule(None, None, run_at, run_at)
    raise ValueError("choose how the task repeats: cron, every or at")


def resume_next_run(task: TaskRecord, now: datetime, zone: tzinfo = UTC) -> datetime:
    """When a resumed task runs next: its pending slot if still ahead, else the next one.

    Runs missed while paused are not made up. A one-time task whose time has passed has no
    next run: ValueError, so the operator gives it a new time instead.
    """
    following = resume_at(task, now, zone)
    if following is None:
        raise ValueError("this one-time task's time has passed: edit it to give it a new time")
    return following


def duration_text(seconds: int) -> str:
    """Seconds in the duration grammar, compact and exact: 5400 -> `1h30m`, 90 -> `1m30s`."""
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def schedule_fields(task: TaskRecord) -> tuple[Kind, str]:
    """The (kind, text) an edit form starts from; parsing it gives the same schedule."""
    if task.cron is not None:
        return "cron", task.cron
    if task.interval_s is not None:
        return "every", duration_text(task.interval_s)
    assert task.run_at is not None  # the table's check: exactly one schedule
    return "at", task.run_at.isoformat()


# ------------------------------------------------------------------ handlers


def _page_number(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


def _task_id(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    if not raw.isdigit():
        raise web.HTTPNotFound(text="no such task")
    return int(raw)


def _text(value: object) -> str:
    """A form field as text ("" for a missing field or a file)."""
    return value if isinstance(value, str) else ""


def _is_htmx(request: web.Request) -> bool:
    return "HX-Request" in request.headers


async def _costs(db: Database, task_ids: list[int]) -> dict[int, Spent]:
    """What a run of each task cost on average, over its recent runs (absent: none yet)."""
    found = {i: await task_cost_estimate(db, i) for i in task_ids}
    return {i: cost for i, cost in found.items() if cost is not None}


class Zones:
    """The time zone of each space on a page (its own, else scheduler.timezone): times are
    read and shown on the space's clock, as in chat and the CLI."""

    def __init__(self, default: str, own: dict[str, str]) -> None:
        self.default = default
        self.own = own

    @classmethod
    async def of(cls, request: web.Request, space_ids: list[str]) -> Zones:
        d = deps(request)
        own = await preference_values(d.db, TIMEZONE_PREF, space_ids) if space_ids else {}
        return cls(d.config.scheduler.timezone, own)

    def zone(self, space_id: str) -> tzinfo:
        own = self.own.get(space_id)
        return space_timezone({TIMEZONE_PREF: own} if own else {}, self.default)

    def describe(self, task: TaskRecord) -> str:
        return describe_schedule(task, self.zone(task.space_id))

    def at(self, task: TaskRecord, when: datetime) -> str:
        return format_both(when, self.zone(task.space_id))


async def _list_page(
    request: web.Request,
    *,
    status: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    db = deps(request).db
    number = _page_number(request)
    space = request.query.get("space") or None
    total = await count_tasks(db, space)
    rows = await task_page(db, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, space_id=space)
    zones = await Zones.of(request, sorted({r.task.space_id for r in rows}))
    return render(
        request,
        "tasks.html",
        status=status,
        rows=rows,
        total=total,
        page_number=number,
        pages=max(1, -(-total // PAGE_SIZE)),
        space_filter=space or "",
        spaces=[s.id for s in await list_spaces(db)],
        kinds=KINDS,
        form=form or {"space": space or "", "prompt": "", "kind": "every", "when": ""},
        error=error,
        notice=DONE.get(request.query.get("done", "")),
        now=utcnow(),
        describe=zones.describe,
        at=zones.at,
        costs=await _costs(db, [r.task.id for r in rows]),
    )


async def _row(
    request: web.Request, task_id: int, *, notice: str | None = None, error: str | None = None
) -> web.Response:
    """One task's row (htmx swaps it in place of the old one)."""
    db = deps(request).db
    task = await get_task(db, task_id)
    if task is None:
        return fragment(request, "_tasks_gone.html", task_id=task_id)
    last = (await last_task_results(db, [task_id])).get(task_id)
    zones = await Zones.of(request, [task.space_id])
    return fragment(
        request,
        "_tasks_row.html",
        row=TaskRow(task=task, last=last),
        now=utcnow(),
        describe=zones.describe,
        at=zones.at,
        row_notice=notice,
        row_error=error,
        costs=await _costs(db, [task_id]),
    )


async def _done(
    request: web.Request, task_id: int, code: str, *, error: str | None = None
) -> web.Response:
    """After an action: the row for htmx; a redirect (or the page with the error) otherwise."""
    if _is_htmx(request):
        return await _row(request, task_id, notice=None if error else DONE[code], error=error)
    if error is not None:
        return await _list_page(request, status=409, error=f"Task {task_id}: {error}")
    raise web.HTTPSeeOther(f"/tasks?done={code}#task-{task_id}")


async def _existing(request: web.Request) -> TaskRecord:
    task = await get_task(deps(request).db, _task_id(request))
    if task is None:
        raise web.HTTPNotFound(text="no such task")
    return task


@routes.get("/tasks")
@page
async def tasks_list(request: web.Request) -> web.Response:
    return await _list_page(request)


@routes.post("/tasks")
@page
async def tasks_create(request: web.Request) -> web.Response:
    db = deps(request).db
    data = await request.post()
    form = {k: _text(data.get(k)).strip() for k in ("space", "prompt", "kind", "when")}
    now = utcnow()
    try:
        if not form["prompt"]:
            raise ValueError("write the prompt the task sends")
        if len(form["prompt"]) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
        space = await get_space(db, form["space"]) if form["space"] else None
        if space is None:
            raise ValueError("choose an existing space")
        zone = (await Zones.of(request, [space.id])).zone(space.id)
        schedule = parse_schedule(form["kind"], form["when"], now, zone)
        if await latest_conversation(db, space.id) is None:
            raise ValueError(f"space {space.id} has no conversation to answer in yet")
        if await count_tasks(db, space.id) >= MAX_TASKS_PER_SPACE:
            raise ValueError(f"space {space.id} already has {MAX_TASKS_PER_SPACE} tasks")
    except ValueError as exc:
        return await _list_page(request, status=400, error=str(exc), form=form)
    task = await add_task(
        db,
        space.id,
        form["prompt"],
        cron=schedule.cron,
        interval_s=schedule.interval_s,
        run_at=schedule.run_at,
        next_run_at=schedule.next_run_at,
        created_by=f"dashboard:{request[SESSION].username}",
    )
    log.info("task created on the dashboard", task_id=task.id, space=space.id)
    raise web.HTTPSeeOther(f"/tasks?done=created#task-{task.id}")


def _edit_page(
    request: web.Request,
    task: TaskRecord,
    form: dict[str, str],
    *,
    status: int = 200,
    error: str | None = None,
) -> web.Response:
    return render(
        request, "tasks_edit.html", status=status, task=task, form=form, kinds=KINDS, error=error
    )


@routes.get("/tasks/{task_id}/edit")
@page
async def tasks_edit_form(request: web.Request) -> web.Response:
    task = await _existing(request)
    kind, when = schedule_fields(task)
    return _edit_page(request, task, {"prompt": task.prompt, "kind": kind, "when": when})


@routes.post("/tasks/{task_id}")
@page
async def tasks_save(request: web.Request) -> web.Response:
    task = await _existing(request)
    data = await request.post()
    form = {k: _text(data.get(k)).strip() for k in ("prompt", "kind", "when")}
    try:
        if not form["prompt"]:
            raise ValueError("write the prompt the task sends")
        if len(form["prompt"]) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
        zone = (await Zones.of(request, [task.space_id])).zone(task.space_id)
        schedule = parse_schedule(form["kind"], form["when"], utcnow(), zone)
    except ValueError as exc:
        return _edit_page(request, task, form, status=400, error=str(exc))
    await update_task(
        deps(request).db,
        task.id,
        prompt=form["prompt"],
        cron=schedule.cron,
        interval_s=schedule.interval_s,
        run_at=schedule.run_at,
        next_run_at=schedule.next_run_at,
    )
    log.info("task edited on the dashboard", task_id=task.id)
    raise web.HTTPSeeOther(f"/tasks?done=saved#task-{task.id}")


@routes.post("/tasks/{task_id}/pause")
@page
async def tasks_pause(request: web.Request) -> web.Response:
    task = await _existing(request)
    await set_task_enabled(deps(request).db, task.id, False)
    return await _done(request, task.id, "paused")


@routes.post("/tasks/{task_id}/resume")
@page
async def tasks_resume(request: web.Request) -> web.Response:
    task = await _existing(request)
    try:
        zone = (await Zones.of(request, [task.space_id])).zone(task.space_id)
        following = resume_next_run(task, utcnow(), zone)
    except ValueError as exc:
        return await _done(request, task.id, "resumed", error=str(exc))
    await set_task_enabled(deps(request).db, task.id, True, next_run_at=following)
    return await _done(request, task.id, "resumed")


@routes.post("/tasks/{task_id}/run")
@page
async def tasks_run_now(request: web.Request) -> web.Response:
    """Queue the task's job now, through the scheduler's path (refused while paused)."""
    d = deps(request)
    task_id = _task_id(request)
    try:
        if d.scheduler is not None:
            await d.scheduler.run_now(task_id)
        else:
            await run_task_now(d.db, task_id)
            if d.pipeline is not None:
                d.pipeline.dispatcher.wake()
    except RunNowRefused as exc:
        if await get_task(d.db, task_id) is None:
            raise web.HTTPNotFound(text="no such task") from None
        return await _done(request, task_id, "queued", error=str(exc))
    return await _done(request, task_id, "queued")


@routes.post("/tasks/{task_id}/delete")
@page
async def tasks_delete(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    if not await cancel_task(deps(request).db, task_id):
        raise web.HTTPNotFound(text="no such task")
    log.info("task deleted on the dashboard", task_id=task_id)
    if _is_htmx(request):
        return fragment(request, "_tasks_gone.html", task_id=task_id)
    raise web.HTTPSeeOther("/tasks?done=deleted")
