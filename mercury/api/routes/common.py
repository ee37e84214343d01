"""What every space endpoint shares: the state it reads from the app, and the JSON plumbing.

Handlers are plain top-level functions; what they need beyond the request (the database,
how to send an interim message, the scheduler's cron clock) is one `SpaceApi` stored on
the aiohttp app under `SPACE_API` by `mount_space_api`, read back with `space_api(request)`.
Handlers only validate input and translate to/from JSON: the storage functions do the work.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mercury.api.auth import http_error
from mercury.storage import Database, get_space

if TYPE_CHECKING:
    from mercury.pipeline.budget import BudgetBook

SendInterim = Callable[[str, str, str], Awaitable[None]]
"""send_interim(run_id, space_id, text): post an interim message to the run's conversation."""

BASE = "/spaces/{space_id}"
USER = "/{platform}/{user_id}"
MAX_ID_CHARS = 255
DEFAULT_INTERIM_PER_RUN = 10

INVALID = "invalid_request_error"
NOT_FOUND = "not_found_error"


@dataclass
class SpaceApi:
    """The space endpoints' shared state, one per host API app.

    `send_interim` delivers an interim message to the run's conversation (at most
    `interim_per_run` per run, counted in `interim_counts`). `budget`, the running
    spending counters, gives the budget endpoint live spend and the config's caps.
    """

    db: Database
    send_interim: SendInterim
    interim_per_run: int = DEFAULT_INTERIM_PER_RUN
    interim_counts: OrderedDict[str, int] = field(default_factory=OrderedDict)
    budget: BudgetBook | None = None
    # The zone a space's task times are read in when it has none of its own
    # (`scheduler.timezone`; core/when.py).
    timezone: str = "UTC"


SPACE_API = web.AppKey("mercury_space_api", SpaceApi)


def space_api(request: web.Request) -> SpaceApi:
    """The state `mount_space_api` stored on the request's app."""
    return request.app[SPACE_API]


def bad(message: str) -> web.HTTPException:
    return http_error(web.HTTPBadRequest, INVALID, message)


def not_found(message: str) -> web.HTTPException:
    return http_error(web.HTTPNotFound, NOT_FOUND, message)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (empty body -> {})."""
    raw = await request.text()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad("the body must be a JSON object")
    return data


def string_field(
    data: dict[str, Any], key: str, *, max_chars: int, required: bool = True
) -> str | None:
    """`data[key]` as a string of at most `max_chars` (non-blank if required); else 400."""
    value = data.get(key)
    if value is None:
        if required:
            raise bad(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise bad(f"{key!r} must be a string")
    if required and not value.strip():
        raise bad(f"{key!r} must not be empty")
    if len(value) > max_chars:
        raise bad(f"{key!r} is too long ({len(value)} characters, at most {max_chars})")
    return value


def required_string(data: dict[str, Any], key: str, *, max_chars: int) -> str:
    """`string_field` for a field that must be there."""
    value = string_field(data, key, max_chars=max_chars)
    assert value is not None  # string_field raised otherwise
    return value


def iso(when: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC (naive database times are UTC)."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


def user_of(request: web.Request) -> tuple[str, str]:
    """(platform, user_id) from a `/{platform}/{user_id}` route; 400 when unusable."""
    platform = request.match_info["platform"]
    user_id = request.match_info["user_id"]
    for label, value in (("platform", platform), ("user id", user_id)):
        if not value.strip() or len(value) > MAX_ID_CHARS:
            raise bad(f"bad {label}: {value[:40]!r}")
    return platform, user_id


async def existing_space(db: Database, space_id: str) -> str:
    """`space_id` if its row exists (writes need it for foreign keys); else 404."""
    if await get_space(db, space_id) is None:
        raise not_found(f"space {space_id!r} does not exist")
    return space_id
