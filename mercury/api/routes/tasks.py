"""A space's scheduled tasks: prompts the agent asks to be run later or on a schedule.

GET    /spaces/{space_id}/tasks                        {"tasks": [task]}
POST   /spaces/{space_id}/tasks  {prompt, cron | every | at}   201 {"task": task}
DELETE /spaces/{space_id}/tasks/{task_id}              {"id", "cancelled": true}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from mercury.api.auth import grant_of
from mercury.api.routes.common import (
    BASE,
    bad,
    existing_space,
    iso,
    json_body,
    not_found,
    required_string,
    space_api,
)
from mercury.api.routes.timespec import parse_duration, parse_time, validate_cron
from mercury.logging import get_logger
from mercury.storage import TaskRecord, add_task, cancel_task, list_tasks, utcnow

log = get_logger(__name__)

MAX_PROMPT_CHARS = 8_000
MIN_INTERVAL_S = 60
MAX_TASKS_PER_SPACE = 100

routes = web.RouteTableDef()


def task_json(task: TaskRecord) -> dict[str, Any]:
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
    }


@routes.get(f"{BASE}/tasks")
async def get_tasks(request: web.Request) -> web.Response:
    tasks = await list_tasks(space_api(request).db, grant_of(request).space_id)
    return web.json_response({"tasks": [task_json(t) for t in tasks]})


@routes.post(f"{BASE}/tasks")
async def post_task(request: web.Request) -> web.Response:
    api = space_api(request)
    grant = grant_of(request)
    data = await json_body(request)
    unknown = set(data) - {"prompt", "cron", "every", "at"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    prompt = required_string(data, "prompt", max_chars=MAX_PROMPT_CHARS)
    given = [k for k in ("cron", "every", "at") if data.get(k) is not None]
    if len(given) != 1:
        raise bad(
            "give exactly one schedule: 'cron' (5 fields), 'every' (a duration like 30m) "
            f"or 'at' (an ISO time); got {', '.join(given) or 'none'}"
        )
    kind = given[0]
    raw = required_string(data, kind, max_chars=128)
    now = utcnow()
    cron: str | None = None
    interval_s: int | None = None
    run_at: datetime | None = None
    next_run_at: datetime | None = None
    try:
        if kind == "cron":
            cron = validate_cron(raw)
            if api.next_cron_run is not None:
                next_run_at = api.next_cron_run(cron, now)
        elif kind == "every":
            interval_s = int(parse_duration(raw).total_seconds())
            if interval_s < MIN_INTERVAL_S:
                raise ValueError(f"'every' must be at least {MIN_INTERVAL_S}s, got {raw!r}")
        else:
            run_at = parse_time(raw, now=now)
            if run_at <= now:
                raise ValueError(f"'at' is in the past: {run_at.isoformat()}")
    except ValueError as exc:
        raise bad(str(exc)) from None
    space_id = await existing_space(api.db, grant.space_id)
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
        created_by=f"run:{grant.run_id}",
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
