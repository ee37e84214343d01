"""Stored roles of a space's users (admin only: the run's caller needs Permission.ADMIN).

GET    /spaces/{space_id}/roles                        {"roles": [role]}
GET    /spaces/{space_id}/roles/{platform}/{user_id}   role
PUT    /spaces/{space_id}/roles/{platform}/{user_id}  {role}   role
DELETE /spaces/{space_id}/roles/{platform}/{user_id}   {..., "deleted": true}
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mercury.api.auth import require_permission
from mercury.api.routes.common import (
    BASE,
    USER,
    bad,
    existing_space,
    json_body,
    not_found,
    required_string,
    space_api,
    user_of,
)
from mercury.core.permissions import Permission, role_name_problem
from mercury.logging import get_logger
from mercury.storage import RoleRecord, get_role, list_roles, remove_role, set_role

log = get_logger(__name__)


routes = web.RouteTableDef()


def role_json(role: RoleRecord) -> dict[str, Any]:
    return {"platform": role.platform, "user_id": role.user_id, "role": role.role}


@routes.get(f"{BASE}/roles")
async def get_roles(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    roles = await list_roles(space_api(request).db, grant.space_id)
    return web.json_response({"roles": [role_json(r) for r in roles]})


@routes.get(f"{BASE}/roles{USER}")
async def get_user_role(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    platform, user_id = user_of(request)
    role = await get_role(space_api(request).db, grant.space_id, platform, user_id)
    if role is None:
        raise not_found(f"{platform}/{user_id} has no stored role in this space")
    return web.json_response({"platform": platform, "user_id": user_id, "role": role})


@routes.put(f"{BASE}/roles{USER}")
async def put_role(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    platform, user_id = user_of(request)
    role = required_string(await json_body(request), "role", max_chars=32)
    problem = role_name_problem(role)
    if problem:
        raise bad(problem)
    db = space_api(request).db
    space_id = await existing_space(db, grant.space_id)
    await set_role(db, space_id, platform, user_id, role)
    log.info("role set by agent", space=space_id, run=grant.run_id, role=role)
    return web.json_response({"platform": platform, "user_id": user_id, "role": role})


@routes.delete(f"{BASE}/roles{USER}")
async def delete_role(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.ADMIN)
    platform, user_id = user_of(request)
    if not await remove_role(space_api(request).db, grant.space_id, platform, user_id):
        raise not_found(f"{platform}/{user_id} has no stored role in this space")
    return web.json_response({"platform": platform, "user_id": user_id, "deleted": True})
