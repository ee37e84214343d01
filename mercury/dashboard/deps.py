"""What the dashboard's pages may reach: one typed bundle, built by the App.

Handlers never import the App or reach for globals: `deps(request)` hands them this
record, stored on the aiohttp application under `DEPS`. Pages read through
`mercury.storage` functions with `db` (never SQL of their own), steer runs through
`runner`, and check logins with `auth` — the one login layer the web chat shares.

`runner`, `pipeline`, `scheduler` and `host` are None where a test builds the dashboard
without containers (and `pipeline`/`scheduler` when the App has not started them); a page
that needs one says so instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from mercury.core.roles import Role

if TYPE_CHECKING:
    from mercury.adapters.base import Adapter
    from mercury.api.runhost import RunHost
    from mercury.config import Config, LoadedConfig
    from mercury.http.auth import WebAuth
    from mercury.pipeline.scheduler import Scheduler
    from mercury.pipeline.service import Pipeline
    from mercury.sandbox.runner import ContainerRunner
    from mercury.storage import Database

__all__ = ["DEPS", "DashboardDeps", "deps"]


@dataclass(frozen=True)
class DashboardDeps:
    """The services a dashboard page may use (see the module docstring)."""

    config: Config
    loaded: LoadedConfig  # where each value came from, for the Config page
    db: Database
    auth: WebAuth
    adapters: Mapping[str, Adapter] = field(default_factory=dict)
    runner: ContainerRunner | None = None
    pipeline: Pipeline | None = None
    scheduler: Scheduler | None = None
    host: RunHost | None = None  # the host API: its usage meter, for live token counts
    role: Role = Role.ALL  # a gateway's Health page skips the Docker checks


DEPS = web.AppKey("mercury_dashboard_deps", DashboardDeps)


def deps(request: web.Request) -> DashboardDeps:
    """The dashboard's services, from the application serving `request`."""
    return request.config_dict[DEPS]
