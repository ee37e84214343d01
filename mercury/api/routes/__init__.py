"""The host API endpoints an agent uses to act on its own space (`mercury-ctl` calls these).

One module per resource, each a `web.RouteTableDef` of top-level handlers:

    preferences.py  /spaces/{space_id}/preferences[/{key}]
    tasks.py        /spaces/{space_id}/tasks[/{task_id}]
    messages.py     /spaces/{space_id}/messages                    (interim messages)
    roles.py        /spaces/{space_id}/roles[/{platform}/{user_id}]   admin
    mutes.py        /spaces/{space_id}/mutes[/{platform}/{user_id}]   admin

All routes live under `/spaces/{space_id}/...`, so the auth middleware already refused
tokens of another space; roles and mutes additionally need the run's caller to hold the
admin permission. `mount_space_api` is the one place that puts them on a server.

Errors are `{"type": "error", "error": {"type", "message"}}` with 400 (bad input), 403,
404 (no such item in this space), 429 (interim message cap) or 502 (delivery failed).
"""

from __future__ import annotations

from aiohttp import web

from mercury.api.routes import messages, mutes, preferences, roles, tasks
from mercury.api.routes.common import (
    DEFAULT_INTERIM_PER_RUN,
    SPACE_API,
    NextCronRun,
    SendInterim,
    SpaceApi,
)
from mercury.api.server import HostApiServer
from mercury.storage import Database

RESOURCES: tuple[web.RouteTableDef, ...] = (
    preferences.routes,
    tasks.routes,
    messages.routes,
    roles.routes,
    mutes.routes,
)


def mount_space_api(
    server: HostApiServer,
    db: Database,
    *,
    send_interim: SendInterim,
    next_cron_run: NextCronRun | None = None,
    interim_per_run: int = DEFAULT_INTERIM_PER_RUN,
) -> SpaceApi:
    """Serve every space endpoint on `server` (before its `start()`); returns their state.

    `send_interim(run_id, space_id, text)` delivers an interim message to the run's
    conversation (at most `interim_per_run` per run). `next_cron_run(expr, after)`, when
    given (by the scheduler), sets a new cron task's first `next_run_at`; otherwise a cron
    task is stored with next_run_at None for the scheduler to fill in.
    """
    for table in RESOURCES:
        server.add_routes(table)  # refuses a started server before the app is touched
    api = SpaceApi(db, send_interim, next_cron_run, interim_per_run)
    server.app[SPACE_API] = api
    return api


__all__ = ["RESOURCES", "SPACE_API", "SpaceApi", "mount_space_api"]
