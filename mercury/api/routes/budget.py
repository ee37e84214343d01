"""A space's spending caps: what is in force and used (any run), and its own caps (admins).

GET /spaces/{space_id}/budget                      {"space_id", "caps": [cap]}
PUT /spaces/{space_id}/budget  {scope: value, ...}  the same, after the change   admin

A cap: {"scope", "cap": {"usd", "tokens", "text"} | null, "source": "config"|"space",
"spent": {"usd", "tokens"} | null, "used": share | null, "reached", "resets_at"}. The
user_day spend is that of the run's user (null for a task's run); task_run has none.

PUT values: a cap as /budget takes it ("$5", 2.5, "500k tokens", "$5 or 2m tokens"),
"off" or null for no cap, "default" to follow mercury.yaml again. instance_day is the
operator's (mercury.yaml only). Every entry is checked before any is stored, so a bad
one changes nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mercury.api.auth import grant_of, require_permission
from mercury.api.routes.common import BASE, bad, existing_space, json_body, space_api
from mercury.core.budget import CapError, Caps
from mercury.core.budget_text import SCOPE_HELP, BudgetSetting, parse_setting, status_json
from mercury.core.permissions import Permission
from mercury.logging import get_logger
from mercury.pipeline.budget import write_override
from mercury.pipeline.budget_status import budget_statuses
from mercury.storage import utcnow

log = get_logger(__name__)

routes = web.RouteTableDef()

MAX_SETTINGS = 8  # more keys than there are scopes is a confused client


async def _caps_json(request: web.Request, space_id: str, user_key: str | None) -> dict[str, Any]:
    api = space_api(request)
    book = api.budget
    now = book.clock() if book is not None else utcnow()
    base = book.base if book is not None else Caps()  # no book: no config caps known
    statuses = await budget_statuses(api.db, base, space_id, user_key, now, book=book)
    return {
        "space_id": space_id,
        "caps": [status_json(s, now, user_known=user_key is not None) for s in statuses],
    }


@routes.get(f"{BASE}/budget")
async def get_budget(request: web.Request) -> web.Response:
    grant = grant_of(request)
    return web.json_response(await _caps_json(request, grant.space_id, grant.user_key))


@routes.put(f"{BASE}/budget")
async def put_budget(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    data = await json_body(request)
    if not data:
        raise bad('expected {"<cap>": <value>, ...}, e.g. {"space_day": "$5"}')
    if len(data) > MAX_SETTINGS:
        raise bad(f"too many entries ({len(data)}): the caps are {SCOPE_HELP}")
    settings: list[BudgetSetting] = []
    for key, value in data.items():
        try:
            setting = parse_setting(key, value)
        except CapError as exc:
            raise bad(str(exc)) from None
        if any(s.scope is setting.scope for s in settings):
            raise bad(f"{setting.scope.value} is given twice")
        settings.append(setting)
    api = space_api(request)
    space_id = await existing_space(api.db, grant.space_id)
    for s in settings:
        await write_override(api.db, space_id, s.scope, s.cap, reset=s.reset)
    if api.budget is not None:
        api.budget.forget_overrides(space_id)
    log.info(
        "space caps set by agent",
        space=space_id,
        run=grant.run_id,
        caps={
            s.scope.value: "default" if s.reset else (s.cap.to_text() if s.cap else "off")
            for s in settings
        },
    )
    return web.json_response(await _caps_json(request, space_id, grant.user_key))
