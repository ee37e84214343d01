"""Host API endpoints an agent uses to act on its own space (`mercury-ctl` calls these).

All routes live under `/spaces/{space_id}/...`, so the auth middleware already refused
tokens of another space; roles and mutes additionally need the run's caller to be an admin.
Handlers only validate input and translate to/from JSON: the storage functions do the work.

    GET    /spaces/{space_id}/preferences                  {"preferences": {k: v}}
    GET    /spaces/{space_id}/preferences/{key}            {"key", "value"}
    PUT    /spaces/{space_id}/preferences/{key}   {value}  {"key", "value"}
    DELETE /spaces/{space_id}/preferences/{key}            {"key", "deleted": true}
    GET    /spaces/{space_id}/tasks                        {"tasks": [task]}
    POST   /spaces/{space_id}/tasks  {prompt, cron | every | at}   201 {"task": task}
    DELETE /spaces/{space_id}/tasks/{task_id}              {"id", "cancelled": true}
    POST   /spaces/{space_id}/messages  {text}             {"sent": true, "remaining": n}
    GET    /spaces/{space_id}/roles                        admin: {"roles": [role]}
    GET    /spaces/{space_id}/roles/{platform}/{user_id}   admin: role
    PUT    /spaces/{space_id}/roles/{platform}/{user_id}  {role}   admin: role
    DELETE /spaces/{space_id}/roles/{platform}/{user_id}   admin: {..., "deleted": true}
    GET    /spaces/{space_id}/mutes                        admin: {"mutes": [mute]}
    GET    /spaces/{space_id}/mutes/{platform}/{user_id}   admin: mute
    PUT    /spaces/{space_id}/mutes/{platform}/{user_id}  {until?, reason?}   admin: mute
    DELETE /spaces/{space_id}/mutes/{platform}/{user_id}   admin: {..., "deleted": true}

Errors are `{"type": "error", "error": {"type", "message"}}` with 400 (bad input), 403,
404 (no such item in this space), 429 (interim message cap) or 502 (delivery failed).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from mercury.api.auth import grant_of, http_error, require_permission
from mercury.core import durations
from mercury.core.permissions import Permission
from mercury.logging import get_logger
from mercury.storage import (
    Database,
    MuteRecord,
    RoleRecord,
    TaskRecord,
    add_task,
    cancel_task,
    delete_preference,
    get_preferences,
    get_role,
    get_space,
    list_mutes,
    list_roles,
    list_tasks,
    mute,
    remove_role,
    set_preference,
    set_role,
    unmute,
    utcnow,
)

log = get_logger(__name__)

SendInterim = Callable[[str, str, str], Awaitable[None]]
"""send_interim(run_id, space_id, text): post an interim message to the run's conversation."""
NextCronRun = Callable[[str, datetime], datetime]
"""next_cron_run(expr, after): the first time after `after` that a cron expression matches."""

MAX_PROMPT_CHARS = 8_000
MAX_PREF_KEY_CHARS = 128  # the column's size
MAX_PREF_VALUE_CHARS = 4_000
MAX_MESSAGE_CHARS = 4_000
MAX_REASON_CHARS = 500
MAX_ID_CHARS = 255
MIN_INTERVAL_S = 60
MAX_TASKS_PER_SPACE = 100
DEFAULT_INTERIM_PER_RUN = 10
# Interim-message counters kept in memory; the oldest runs are forgotten beyond this.
_MAX_TRACKED_RUNS = 10_000

_PREF_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

INVALID = "invalid_request_error"
NOT_FOUND = "not_found_error"


# --------------------------------------------------------------------------- validation


def parse_duration(text: str) -> timedelta:
    """A duration in the one grammar (core/durations.py) -> timedelta; ValueError otherwise."""
    return timedelta(seconds=durations.parse_duration(text))


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive means UTC) or a duration from now -> aware UTC datetime."""
    now = now or utcnow()
    value = text.strip()
    if durations.is_duration(value):
        return now + parse_duration(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not an ISO time or duration: {text!r} (use e.g. 2030-01-31T09:00:00+00:00 or 2h)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {d: i for i, d in enumerate(_WEEKDAYS)}),  # 0 and 7 are Sunday
)


def validate_cron(expr: str) -> str:
    """Check a 5-field cron expression syntactically; returns it normalised (single spaces).

    Each field is a comma list of `*`, `N`, `N-M`, any of them with `/STEP`; months and
    weekdays may be names (jan, mon). Raises ValueError naming the bad field.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron needs 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}: {expr!r}"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            _check_cron_part(part.lower(), name, low, high, names)
    return " ".join(fields)


def _check_cron_part(part: str, name: str, low: int, high: int, names: dict[str, int]) -> None:
    def bad(why: str) -> ValueError:
        return ValueError(f"bad cron {name} field {part!r}: {why}")

    base, slash, step = part.partition("/")
    if slash and (not step.isdigit() or int(step) == 0):
        raise bad("the step after / must be a positive number")
    if base == "*":
        return

    def value(token: str) -> int:
        if token in names:
            return names[token]
        if not token.isdigit():
            raise bad(f"{token!r} is not a number")
        n = int(token)
        if not low <= n <= high:
            raise bad(f"{n} is outside {low}-{high}")
        return n

    start, dash, end = base.partition("-")
    first = value(start)
    if dash and value(end) < first:
        raise bad("a range must go from low to high")


# --------------------------------------------------------------------------- helpers


def _bad(message: str) -> web.HTTPException:
    return http_error(web.HTTPBadRequest, INVALID, message)


def _not_found(message: str) -> web.HTTPException:
    return http_error(web.HTTPNotFound, NOT_FOUND, message)


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (empty body -> {})."""
    raw = await request.text()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    return data


def _string(data: dict[str, Any], key: str, *, max_chars: int, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _bad(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise _bad(f"{key!r} must be a string")
    if required and not value.strip():
        raise _bad(f"{key!r} must not be empty")
    if len(value) > max_chars:
        raise _bad(f"{key!r} is too long ({len(value)} characters, at most {max_chars})")
    return value


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def _task_json(task: TaskRecord) -> dict[str, Any]:
    return {
        "id": task.id,
        "prompt": task.prompt,
        "cron": task.cron,
        "every_s": task.interval_s,
        "at": _iso(task.run_at),
        "enabled": task.enabled,
        "next_run_at": _iso(task.next_run_at),
        "last_run_at": _iso(task.last_run_at),
        "created_by": task.created_by,
        "created_at": _iso(task.created_at),
    }


def _role_json(role: RoleRecord) -> dict[str, Any]:
    return {"platform": role.platform, "user_id": role.user_id, "role": role.role}


def _mute_json(m: MuteRecord) -> dict[str, Any]:
    return {
        "platform": m.platform,
        "user_id": m.user_id,
        "until": _iso(m.until),
        "reason": m.reason,
        "created_at": _iso(m.created_at),
    }


def _user(request: web.Request) -> tuple[str, str]:
    platform = request.match_info["platform"]
    user_id = request.match_info["user_id"]
    for label, value in (("platform", platform), ("user id", user_id)):
        if not value.strip() or len(value) > MAX_ID_CHARS:
            raise _bad(f"bad {label}: {value[:40]!r}")
    return platform, user_id


# --------------------------------------------------------------------------- routes


def space_routes(
    db: Database,
    *,
    send_interim: SendInterim,
    next_cron_run: NextCronRun | None = None,
    interim_per_run: int = DEFAULT_INTERIM_PER_RUN,
) -> list[web.RouteDef]:
    """The space endpoints, for `HostApiServer.add_routes`.

    `send_interim(run_id, space_id, text)` delivers an interim message to the run's
    conversation (at most `interim_per_run` per run). `next_cron_run(expr, after)`, when
    given (by the scheduler), sets a new cron task's first `next_run_at`; otherwise a cron
    task is stored with next_run_at None for the scheduler to fill in.
    """
    interim_counts: OrderedDict[str, int] = OrderedDict()

    async def existing_space(space_id: str) -> str:
        # Writes need the space row (foreign keys); a run's space always has one.
        if await get_space(db, space_id) is None:
            raise _not_found(f"space {space_id!r} does not exist")
        return space_id

    # ---------------------------------------------------------------- preferences

    def pref_key(request: web.Request) -> str:
        key = request.match_info["key"]
        if len(key) > MAX_PREF_KEY_CHARS or not _PREF_KEY.match(key):
            raise _bad(
                f"bad preference key {key[:40]!r}: letters, digits and _ . : - "
                f"(at most {MAX_PREF_KEY_CHARS})"
            )
        return key

    async def list_prefs(request: web.Request) -> web.Response:
        prefs = await get_preferences(db, grant_of(request).space_id)
        return web.json_response({"preferences": prefs})

    async def get_pref(request: web.Request) -> web.Response:
        key = pref_key(request)
        prefs = await get_preferences(db, grant_of(request).space_id)
        if key not in prefs:
            raise _not_found(f"preference {key!r} is not set")
        return web.json_response({"key": key, "value": prefs[key]})

    async def put_pref(request: web.Request) -> web.Response:
        key = pref_key(request)
        data = await _body(request)
        value = _string(data, "value", max_chars=MAX_PREF_VALUE_CHARS, required=False)
        if value is None:
            raise _bad("'value' is required (a string)")
        space_id = await existing_space(grant_of(request).space_id)
        await set_preference(db, space_id, key, value)
        return web.json_response({"key": key, "value": value})

    async def delete_pref(request: web.Request) -> web.Response:
        key = pref_key(request)
        if not await delete_preference(db, grant_of(request).space_id, key):
            raise _not_found(f"preference {key!r} is not set")
        return web.json_response({"key": key, "deleted": True})

    # ---------------------------------------------------------------- tasks

    async def get_tasks(request: web.Request) -> web.Response:
        tasks = await list_tasks(db, grant_of(request).space_id)
        return web.json_response({"tasks": [_task_json(t) for t in tasks]})

    async def post_task(request: web.Request) -> web.Response:
        grant = grant_of(request)
        data = await _body(request)
        unknown = set(data) - {"prompt", "cron", "every", "at"}
        if unknown:
            raise _bad(f"unknown field(s): {', '.join(sorted(unknown))}")
        prompt = _string(data, "prompt", max_chars=MAX_PROMPT_CHARS)
        assert prompt is not None
        given = [k for k in ("cron", "every", "at") if data.get(k) is not None]
        if len(given) != 1:
            raise _bad(
                "give exactly one schedule: 'cron' (5 fields), 'every' (a duration like 30m) "
                f"or 'at' (an ISO time); got {', '.join(given) or 'none'}"
            )
        kind = given[0]
        raw = _string(data, kind, max_chars=128)
        assert raw is not None
        now = utcnow()
        cron: str | None = None
        interval_s: int | None = None
        run_at: datetime | None = None
        next_run_at: datetime | None = None
        try:
            if kind == "cron":
                cron = validate_cron(raw)
                if next_cron_run is not None:
                    next_run_at = next_cron_run(cron, now)
            elif kind == "every":
                interval_s = int(parse_duration(raw).total_seconds())
                if interval_s < MIN_INTERVAL_S:
                    raise ValueError(f"'every' must be at least {MIN_INTERVAL_S}s, got {raw!r}")
            else:
                run_at = parse_time(raw, now=now)
                if run_at <= now:
                    raise ValueError(f"'at' is in the past: {run_at.isoformat()}")
        except ValueError as exc:
            raise _bad(str(exc)) from None
        space_id = await existing_space(grant.space_id)
        if len(await list_tasks(db, space_id)) >= MAX_TASKS_PER_SPACE:
            raise _bad(f"this space already has {MAX_TASKS_PER_SPACE} tasks; cancel some first")
        task = await add_task(
            db,
            space_id,
            prompt,
            cron=cron,
            interval_s=interval_s,
            run_at=run_at,
            next_run_at=next_run_at,
            created_by=f"run:{grant.run_id}",
        )
        log.info("task scheduled by agent", space=space_id, task=task.id, run=grant.run_id)
        return web.json_response({"task": _task_json(task)}, status=201)

    async def delete_task(request: web.Request) -> web.Response:
        raw = request.match_info["task_id"]
        if not raw.isdigit() or not await cancel_task(
            db, int(raw), space_id=grant_of(request).space_id
        ):
            raise _not_found(f"no task {raw[:40]!r} in this space")
        return web.json_response({"id": int(raw), "cancelled": True})

    # ---------------------------------------------------------------- interim messages

    async def post_message(request: web.Request) -> web.Response:
        grant = grant_of(request)
        text = _string(await _body(request), "text", max_chars=MAX_MESSAGE_CHARS)
        assert text is not None
        used = interim_counts.get(grant.run_id, 0)
        if used >= interim_per_run:
            raise http_error(
                web.HTTPTooManyRequests,
                "rate_limit_error",
                f"at most {interim_per_run} interim messages per run; put the rest in the reply",
            )
        # Counted before sending, so concurrent calls cannot exceed the cap.
        interim_counts[grant.run_id] = used + 1
        interim_counts.move_to_end(grant.run_id)
        while len(interim_counts) > _MAX_TRACKED_RUNS:
            interim_counts.popitem(last=False)
        try:
            await send_interim(grant.run_id, grant.space_id, text)
        except Exception as exc:
            log.warning("interim message failed", run=grant.run_id, error=str(exc))
            raise http_error(
                web.HTTPBadGateway, "api_error", "the message could not be delivered"
            ) from None
        return web.json_response({"sent": True, "remaining": interim_per_run - used - 1})

    # ---------------------------------------------------------------- roles (admin)

    async def get_roles(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        roles = await list_roles(db, grant.space_id)
        return web.json_response({"roles": [_role_json(r) for r in roles]})

    async def get_user_role(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        platform, user_id = _user(request)
        role = await get_role(db, grant.space_id, platform, user_id)
        if role is None:
            raise _not_found(f"{platform}/{user_id} has no stored role in this space")
        return web.json_response({"platform": platform, "user_id": user_id, "role": role})

    async def put_role(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        platform, user_id = _user(request)
        role = _string(await _body(request), "role", max_chars=32)
        assert role is not None
        if not _ROLE_NAME.match(role):
            raise _bad(f"bad role name {role!r}: lowercase letters, digits, _ and -")
        space_id = await existing_space(grant.space_id)
        await set_role(db, space_id, platform, user_id, role)
        log.info("role set by agent", space=space_id, run=grant.run_id, role=role)
        return web.json_response({"platform": platform, "user_id": user_id, "role": role})

    async def delete_role(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        platform, user_id = _user(request)
        if not await remove_role(db, grant.space_id, platform, user_id):
            raise _not_found(f"{platform}/{user_id} has no stored role in this space")
        return web.json_response({"platform": platform, "user_id": user_id, "deleted": True})

    # ---------------------------------------------------------------- mutes (admin)

    async def get_mutes(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        mutes = await list_mutes(db, grant.space_id)
        return web.json_response({"mutes": [_mute_json(m) for m in mutes]})

    async def get_user_mute(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        platform, user_id = _user(request)
        for m in await list_mutes(db, grant.space_id):
            if (m.platform, m.user_id) == (platform, user_id):
                return web.json_response(_mute_json(m))
        raise _not_found(f"{platform}/{user_id} is not muted in this space")

    async def put_mute(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        platform, user_id = _user(request)
        data = await _body(request)
        unknown = set(data) - {"until", "reason"}
        if unknown:
            raise _bad(f"unknown field(s): {', '.join(sorted(unknown))}")
        raw_until = _string(data, "until", max_chars=64, required=False)
        reason = _string(data, "reason", max_chars=MAX_REASON_CHARS, required=False)
        until: datetime | None = None
        if raw_until is not None and raw_until.strip():
            now = utcnow()
            try:
                until = parse_time(raw_until, now=now)
            except ValueError as exc:
                raise _bad(f"'until': {exc}") from None
            if until <= now:
                raise _bad(f"'until' is in the past: {until.isoformat()}")
        space_id = await existing_space(grant.space_id)
        await mute(db, space_id, platform, user_id, until=until, reason=reason or None)
        log.info("user muted by agent", space=space_id, run=grant.run_id)
        return web.json_response(
            {"platform": platform, "user_id": user_id, "until": _iso(until), "reason": reason}
        )

    async def delete_mute(request: web.Request) -> web.Response:
        grant = require_permission(request, Permission.ADMIN)
        platform, user_id = _user(request)
        if not await unmute(db, grant.space_id, platform, user_id):
            raise _not_found(f"{platform}/{user_id} is not muted in this space")
        return web.json_response({"platform": platform, "user_id": user_id, "deleted": True})

    base = "/spaces/{space_id}"
    user = "/{platform}/{user_id}"
    return [
        web.get(f"{base}/preferences", list_prefs),
        web.get(f"{base}/preferences/{{key}}", get_pref),
        web.put(f"{base}/preferences/{{key}}", put_pref),
        web.delete(f"{base}/preferences/{{key}}", delete_pref),
        web.get(f"{base}/tasks", get_tasks),
        web.post(f"{base}/tasks", post_task),
        web.delete(f"{base}/tasks/{{task_id}}", delete_task),
        web.post(f"{base}/messages", post_message),
        web.get(f"{base}/roles", get_roles),
        web.get(f"{base}/roles{user}", get_user_role),
        web.put(f"{base}/roles{user}", put_role),
        web.delete(f"{base}/roles{user}", delete_role),
        web.get(f"{base}/mutes", get_mutes),
        web.get(f"{base}/mutes{user}", get_user_mute),
        web.put(f"{base}/mutes{user}", put_mute),
        web.delete(f"{base}/mutes{user}", delete_mute),
    ]
