"""A space's scheduled tasks: prompts the agent asks to be run later or on a schedule.

GET    /spaces/{space_id}/tasks                        {"tasks": [task], "timezone"}
POST   /spaces/{space_id}/tasks  {prompt, cron | every | at, [silent], [catch_up]}
                                                       201 {"task": task}
DELETE /spaces/{space_id}/tasks/{task_id}              {"id", "cancelled": true}

A task says when it runs next, what became of its last run (last_outcome: queued, ok,
failed, refused or skipped; last_detail: why, in plain words) and what its recent runs
cost on average (avg_cost_usd, avg_tokens; null before its first metered run). `at` takes
plain words or ISO ("in 2h", "tomorrow 09:00", "mon 9am"; core/when.py) and a cron
expression is matched, both in the space's time zone (its own, else scheduler.timezone).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from aiohttp import web

from mercury.api.auth import grant_of
from mercury.api.routes.common import (
    BASE,
    SpaceApi,
    bad,
    existing_space,
    iso,
    json_body,
    not_found,
    required_string,
    space_api,
)
from mercury.api.routes.timespec import parse_duration, parse_time, validate_cron
from mercury.core.budget import Spent
from mercury.core.when import format_local, next_cron_in_zone, space_timezone, zone_name
from mercury.logging import get_logger
from mercury.pipeline.task_gate import task_cost_estimate
from mercury.storage import (
    TaskRecord,
    add_task,
    cancel_task,
    get_preferences,
    list_tasks,
    utcnow,
)
from mercury.storage.tasks import CATCH_UPS, task_creator

log = get_logger(__name__)

MAX_PROMPT_CHARS = 8_000
MIN_INTERVAL_S = 60
MAX_TASKS_PER_SPACE = 100

routes = web.RouteTableDef()


def task_json(task: TaskRecord, cost: Spent | None = None) -> dict[str, Any]:
    """A task as the host API (and `mercury tasks list --json`) shows it; `cost`: the
    average of its recent runs (pipeline.task_gate.task_cost_estimate)."""
    return {
        "id": task.id,
        "prompt": task.prompt,
        "cron": task.cron,
        "every_s": task.interval_s,
        "at": iso(task.run_at),
        "enabled": task.enabled,
        "next_run_at": iso(task.next_run_at),
        "last_run_at": iso(task.last_run_at),
        "created_by": task.created_by,
        "created_at": iso(task.created_at),
        "silent": task.silent,
        "catch_up": task.catch_up,
        "last_outcome": task.last_outcome,
        "last_detail": task.last_detail,
        "last_outcome_at": iso(task.last_outcome_at),
        "retry_at": iso(task.retry_at),
        "avg_cost_usd": None if cost is None else round(cost.usd, 6),
        "avg_tokens": None if cost is None else cost.tokens,
    }


async def space_zone(api: SpaceApi, space_id: str) -> tzinfo:
    """The zone the space's task times are read in: its own, else scheduler.timezone."""
    return space_timezone(await get_preferences(api.db, space_id), api.timezone)


@routes.get(f"{BASE}/tasks")
async def get_tasks(request: web.Request) -> web.Response:
    api = space_api(request)
    space_id = grant_of(request).space_id
    tasks = await list_tasks(api.db, space_id)
    return web.json_response(
        {
            "tasks": [task_json(t, await task_cost_estimate(api.db, t.id)) for t in tasks],
            # The clock `at` and cron are read on (times here are UTC).
            "timezone": zone_name(await space_zone(api, space_id)),
        }
    )


@routes.post(f"{BASE}/tasks")
async def post_task(request: web.Request) -> web.Response:
    api = space_api(request)
    grant = grant_of(request)
    data = await json_body(request)
    unknown = set(data) - {"prompt", "cron", "every", "at", "silent", "catch_up"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    silent = data.get("silent", False)
    if not isinstance(silent, bool):
        raise bad("'silent' must be true or false")
    catch_up = data.get("catch_up", "once")
    if catch_up not in CATCH_UPS:
        raise bad(f"'catch_up' must be one of {', '.join(CATCH_UPS)}")
    prompt = required_string(data, "prompt", max_chars=MAX_PROMPT_CHARS)
    given = [k for k in ("cron", "every", "at") if data.get(k) is not None]
    if len(given) != 1:
        raise bad(
            "give exactly one schedule: 'cron' (5 fields), 'every' (a duration like 30m) "
            f"or 'at' (a time like \"tomorrow 09:00\" or ISO); got {', '.join(given) or 'none'}"
        )
    kind = given[0]
    raw = required_string(data, kind, max_chars=128)
    now = utcnow()
    space_id = await existing_space(api.db, grant.space_id)
    zone = await space_zone(api, space_id)
    cron: str | None = None
    interval_s: int | None = None
    run_at: datetime | None = None
    next_run_at: datetime | None = None
    try:
        if kind == "cron":
            cron = validate_cron(raw)
            next_run_at = next_cron_in_zone(cron, now, zone)
        elif kind == "every":
            interval_s = int(parse_duration(raw).total_seconds())
            if interval_s < MIN_INTERVAL_S:
                raise ValueError(f"'every' must be at least {MIN_INTERVAL_S}s, got {raw!r}")
        else:
            run_at = parse_time(raw, now=now, zone=zone)
            if run_at <= now:
                raise ValueError(f"'at' is in the past: {format_local(run_at, zone)}")
    except ValueError as exc:
        raise bad(str(exc)) from None
    if len(await list_tasks(api.db, space_id)) >= MAX_TASKS_PER_SPACE:
        raise bad(f"this space already has {MAX_TASKS_PER_SPACE} tasks; cancel some first")
    task = await add_task(
        api.db,
        space_id,
        prompt,
        cron=cron,
        interval_s=interval_s,
        run_at=run_at,
        next_run_at=next_run_at,
        silent=silent,
        catch_up=catch_up,
        # The run's sender (or its task's creator): the task is checked as theirs.
        created_by=await task_creator(api.db, grant.user_key, grant.task_id),
    )
    log.info("task scheduled by agent", space=space_id, task=task.id, run=grant.run_id)
    return web.json_response({"task": task_json(task)}, status=201)


@routes.delete(f"{BASE}/tasks/{{task_id}}")
async def delete_task(request: web.Request) -> web.Response:
    raw = request.match_info["task_id"]
    if not raw.isdigit() or not await cancel_task(
        space_api(request).db, int(raw), space_id=grant_of(request).space_id
    ):
        raise not_found(f"no task {raw[:40]!r} in this space")
    return web.json_response({"id": int(raw), "cancelled": True})
