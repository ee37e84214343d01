"""The operator dashboard: server-rendered pages on Mercury's main HTTP server.

`Dashboard` (built by the App when `dashboard.enabled`) owns the jinja2 templates and
hands out its routes: the login pages (mercury.dashboard.login), the vendored static
files (htmx, its SSE extension, the stylesheet; see static/VENDORED.md) and one module per
page in mercury.dashboard.pages. `mount(app)` puts them, with the services the pages use
(`DashboardDeps`), on the server's aiohttp application in one step.

Login is the web chat's (mercury.http.auth.WebAuth, one instance for both), so a login in
one works in the other. The rules every page follows (login, CSRF, rendering) are in
mercury.dashboard.render.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web

from mercury.dashboard.deps import DEPS, DashboardDeps
from mercury.dashboard.filters import FILTERS
from mercury.dashboard.login import routes as login_routes
from mercury.dashboard.metrics import routes as metrics_routes
from mercury.dashboard.pages import overview, page_routes
from mercury.dashboard.render import TEMPLATES

__all__ = ["STATIC_DIR", "STATIC_PREFIX", "Dashboard", "DashboardDeps", "build_templates"]

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static/dashboard"


def build_templates() -> jinja2.Environment:
    """The page templates: autoescaped, and strict about names a template misspells."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mercury.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals["static"] = STATIC_PREFIX
    return env


class Dashboard:
    """The dashboard's routes and templates, for the App to mount on its server."""

    def __init__(self, deps: DashboardDeps) -> None:
        self.deps = deps
        self.templates = build_templates()

    def routes(self) -> list[web.AbstractRouteDef]:
        """Login, static files and every page (each guarded by render.page)."""
        return [
            *login_routes,
            web.static(STATIC_PREFIX, STATIC_DIR, follow_symlinks=False, show_index=False),
            *page_routes(),
            *metrics_routes,  # /metrics: a login session or the metrics bearer token
        ]

    def mount(self, app: web.Application) -> None:
        """Give `app` the services and templates the pages read, and the routes."""
        app[DEPS] = self.deps
        app[TEMPLATES] = self.templates
        overview.install(app, self.deps)  # the Overview's live feed, closed at shutdown
        app.add_routes(self.routes())
