"""A space's preferences: free-form key/value settings the agent keeps for its space.

GET    /spaces/{space_id}/preferences                  {"preferences": {k: v}}
GET    /spaces/{space_id}/preferences/{key}            {"key", "value"}
PUT    /spaces/{space_id}/preferences/{key}   {value}  {"key", "value"}
DELETE /spaces/{space_id}/preferences/{key}            {"key", "deleted": true}
"""

from __future__ import annotations

import re

from aiohttp import web

from mercury.api.auth import grant_of
from mercury.api.routes.common import (
    BASE,
    bad,
    existing_space,
    json_body,
    not_found,
    space_api,
    string_field,
)
from mercury.storage import delete_preference, get_preferences, set_preference

MAX_PREF_KEY_CHARS = 128  # the column's size
MAX_PREF_VALUE_CHARS = 4_000

_PREF_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")

routes = web.RouteTableDef()


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    if len(key) > MAX_PREF_KEY_CHARS or not _PREF_KEY.match(key):
        raise bad(
            f"bad preference key {key[:40]!r}: letters, digits and _ . : - "
            f"(at most {MAX_PREF_KEY_CHARS})"
        )
    return key


@routes.get(f"{BASE}/preferences")
async def list_prefs(request: web.Request) -> web.Response:
    prefs = await get_preferences(space_api(request).db, grant_of(request).space_id)
    return web.json_response({"preferences": prefs})


@routes.get(f"{BASE}/preferences/{{key}}")
async def get_pref(request: web.Request) -> web.Response:
    key = _key(request)
    prefs = await get_preferences(space_api(request).db, grant_of(request).space_id)
    if key not in prefs:
        raise not_found(f"preference {key!r} is not set")
    return web.json_response({"key": key, "value": prefs[key]})


@routes.put(f"{BASE}/preferences/{{key}}")
async def put_pref(request: web.Request) -> web.Response:
    key = _key(request)
    data = await json_body(request)
    value = string_field(data, "value", max_chars=MAX_PREF_VALUE_CHARS, required=False)
    if value is None:
        raise bad("'value' is required (a string)")
    db = space_api(request).db
    space_id = await existing_space(db, grant_of(request).space_id)
    await set_preference(db, space_id, key, value)
    return web.json_response({"key": key, "value": value})


@routes.delete(f"{BASE}/preferences/{{key}}")
async def delete_pref(request: web.Request) -> web.Response:
    key = _key(request)
    if not await delete_preference(space_api(request).db, grant_of(request).space_id, key):
        raise not_found(f"preference {key!r} is not set")
    return web.json_response({"key": key, "deleted": True})
