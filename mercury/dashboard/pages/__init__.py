"""The dashboard's pages, one module per resource; this is the one list of them.

Each module exposes `routes = web.RouteTableDef()` whose handlers are wrapped with
mercury.dashboard.render.page (login, CSRF). Adding a page: write its module, add it to
PAGES below; tests/integration/test_dashboard_auth.py then checks it refuses strangers.
"""

from __future__ import annotations

from aiohttp import web

from mercury.dashboard.pages import (
    budgets,
    chat,
    config_page,
    health,
    overview,
    runs,
    spaces,
    tasks,
    usage,
)

__all__ = ["PAGES", "page_routes"]

PAGES: tuple[web.RouteTableDef, ...] = (
    overview.routes,
    spaces.routes,
    tasks.routes,
    runs.routes,
    usage.routes,
    budgets.routes,
    health.routes,
    config_page.routes,
    chat.routes,
)


def page_routes() -> list[web.AbstractRouteDef]:
    """Every page's routes, in PAGES order."""
    return [route for table in PAGES for route in table]
