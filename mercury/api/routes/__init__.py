"""The host API endpoints an agent uses to act on its own space (`mercury-ctl` calls these).

One module per resource, each a `web.RouteTableDef` of top-level handlers:

    preferences.py  /spaces/{space_id}/preferences[/{key}]
    tasks.py        /spaces/{space_id}/tasks[/{task_id}]
    messages.py     /spaces/{space_id}/messages                    (interim messages)
    roles.py        /spaces/{space_id}/roles[/{platform}/{user_id}]   admin
    mutes.py        /spaces/{space_id}/mutes[/{platform}/{user_id}]   admin
    budget.py       /spaces/{space_id}/budget              (GET any run, PUT admin)
    memory.py       /spaces/{space_id}/memory/me           (the run author's own note)
    recall.py       /spaces/{space_id}/recall?q=...        (search the whole history)

All routes live under `/spaces/{space_id}/...`, so the auth middleware already refused
tokens of another space; roles and mutes additionally need the run's caller to hold the
admin permission. `mount_space_api` is the one place that puts them on a server.

Errors are `{"type": "error", "error": {"type", "message"}}` with 400 (bad input), 403,
404 (no such item in this space), 409 (a person's memory asked by a run that acts for
nobody), 429 (interim message cap) or 502 (delivery failed).
"""

from __future__ import annotations

from aiohttp import web

from mercury.api.routes import (
    budget,
    memory,
    messages,
    mutes,
    preferences,
    recall,
    roles,
    tasks,
)
from mercury.api.routes.common import (
    DEFAULT_INTERIM_PER_RUN,
    SPACE_API,
    SendInterim,
    SpaceApi,
)
from mercury.api.server import HostApiServer
from mercury.pipeline.budget import BudgetBook
from mercury.storage import Database

RESOURCES: tuple[web.RouteTableDef, ...] = (
    preferences.routes,
    tasks.routes,
    messages.routes,
    roles.routes,
    mutes.routes,
    budget.routes,
    memory.routes,
    recall.routes,
)


def mount_space_api(
    server: HostApiServer,
    db: Database,
    *,
    send_interim: SendInterim,
    interim_per_run: int = DEFAULT_INTERIM_PER_RUN,
    budget: BudgetBook | None = None,
    timezone: str = "UTC",
) -> SpaceApi:
    """Serve every space endpoint on `server` (before its `start()`); returns their state.

    `send_interim(run_id, space_id, text)` delivers an interim message to the run's
    conversation (at most `interim_per_run` per run). `budget`: the
    running spending counters (live spend, the config's caps, forgetting a space's cached
    caps after a change); without it the budget endpoint reads the spend from the database.
    `timezone`: the config's scheduler.timezone, the clock a space without its own reads
    task times and cron expressions on (core/when.py).
    """
    for table in RESOURCES:
        server.add_routes(table)  # refuses a started server before the app is touched
    api = SpaceApi(db, send_interim, interim_per_run, budget=budget, timezone=timezone)
    server.app[SPACE_API] = api
    return api


__all__ = ["RESOURCES", "SPACE_API", "SpaceApi", "mount_space_api"]
