"""Muted users of a space (admin only: the run's caller needs Permission.ADMIN).

GET    /spaces/{space_id}/mutes                        {"mutes": [mute]}
GET    /spaces/{space_id}/mutes/{platform}/{user_id}   mute
PUT    /spaces/{space_id}/mutes/{platform}/{user_id}  {until?, reason?}   mute
DELETE /spaces/{space_id}/mutes/{platform}/{user_id}   {..., "deleted": true}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from mercury.api.auth import require_permission
from mercury.api.routes.common import (
    BASE,
    USER,
    bad,
    existing_space,
    iso,
    json_body,
    not_found,
    space_api,
    string_field,
    user_of,
)
from mercury.api.routes.timespec import parse_time
from mercury.core.permissions import Permission
from mercury.logging import get_logger
from mercury.storage import MuteRecord, list_mutes, mute, unmute, utcnow

log = get_logger(__name__)

MAX_REASON_CHARS = 500

routes = web.RouteTableDef()


def mute_json(m: MuteRecord) -> dict[str, Any]:
    return {
        "platform": m.platform,
        "user_id": m.user_id,
        "until": iso(m.until),
        "reason": m.reason,
        "created_at": iso(m.created_at),
    }


@routes.get(f"{BASE}/mutes")
async def get_mutes(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    mutes = await list_mutes(space_api(request).db, grant.space_id)
    return web.json_response({"mutes": [mute_json(m) for m in mutes]})


@routes.get(f"{BASE}/mutes{USER}")
async def get_user_mute(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    platform, user_id = user_of(request)
    for m in await list_mutes(space_api(request).db, grant.space_id):
        if (m.platform, m.user_id) == (platform, user_id):
            return web.json_response(mute_json(m))
    raise not_found(f"{platform}/{user_id} is not muted in this space")


@routes.put(f"{BASE}/mutes{USER}")
async def put_mute(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    platform, user_id = user_of(request)
    data = await json_body(request)
    unknown = set(data) - {"until", "reason"}
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    raw_until = string_field(data, "until", max_chars=64, required=False)
    reason = string_field(data, "reason", max_chars=MAX_REASON_CHARS, required=False)
    until: datetime | None = None
    if raw_until is not None and raw_until.strip():
        now = utcnow()
        try:
            until = parse_time(raw_until, now=now)
        except ValueError as exc:
            raise bad(f"'until': {exc}") from None
        if until <= now:
            raise bad(f"'until' is in the past: {until.isoformat()}")
    db = space_api(request).db
    space_id = await existing_space(db, grant.space_id)
    await mute(db, space_id, platform, user_id, until=until, reason=reason or None)
    log.info("user muted by agent", space=space_id, run=grant.run_id)
    return web.json_response(
        {"platform": platform, "user_id": user_id, "until": iso(until), "reason": reason}
    )


@routes.delete(f"{BASE}/mutes{USER}")
async def delete_mute(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    platform, user_id = user_of(request)
    if not await unmute(space_api(request).db, grant.space_id, platform, user_id):
        raise not_found(f"{platform}/{user_id} is not muted in this space")
    return web.json_response({"platform": platform, "user_id": user_id, "deleted": True})
