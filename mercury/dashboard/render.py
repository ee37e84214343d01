"""How a dashboard page answers: login required, CSRF checked, HTML rendered.

Every dashboard handler is wrapped by `page` (or calls `require_login` itself), so the
rules live here once:

- No valid session: a GET of a page is redirected (303) to /login?next=<path>; any other
  request is refused with 401 (an htmx request also gets `HX-Redirect` to the login
  page, so the browser goes there instead of swapping in an error).
- Every non-GET/HEAD request must carry the session's CSRF token, in the header
  `X-CSRF-Token` (htmx sends it from the `hx-headers` on <body>) or the form field
  `csrf` (plain forms carry it hidden); missing or wrong answers 403. SameSite=Strict
  already keeps other sites' requests from carrying the cookie; the token also stops a
  sibling subdomain or another port of the same host, which count as the same site.

`render` fills a template from mercury/dashboard/templates (autoescaped) with `user`,
`csrf_token` and `nav` (the section, for the menu); `fragment` renders an htmx partial.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from mercury.dashboard.deps import deps
from mercury.http.sessions import LoginSession

__all__ = [
    "SESSION",
    "TEMPLATES",
    "check_csrf",
    "fragment",
    "page",
    "render",
    "require_login",
    "safe_next",
]

TEMPLATES = web.AppKey("mercury_dashboard_templates", jinja2.Environment)
SESSION = web.RequestKey("mercury_dashboard_session", LoginSession)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
_SAFE = frozenset({"GET", "HEAD"})
# Pages are about the operator's own data: never cache them, never frame them.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def safe_next(target: str | None, default: str = "/overview") -> str:
    """`target` if it is a path on this server, else `default` (no open redirect).

    A local path starts with one "/" and holds no backslash or control character:
    "//evil.example" and "/\\evil.example" are other hosts to a browser.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    return target


def login_url(request: web.Request) -> str:
    """/login?next=<this page>, for a redirect from a page that needs a login."""
    return "/login?next=" + quote(request.path_qs, safe="/")


async def require_login(request: web.Request) -> LoginSession:
    """The request's login session; raises the redirect (GET) or 401 (other methods)."""
    session = await deps(request).auth.session(request)
    if session is not None:
        request[SESSION] = session
        return session
    if request.method in _SAFE and "HX-Request" not in request.headers:
        raise web.HTTPSeeOther(login_url(request), headers={"Cache-Control": "no-store"})
    raise web.HTTPUnauthorized(
        text="not logged in: log in at /login",
        headers={"HX-Redirect": login_url(request) if request.method in _SAFE else "/login"},
    )


async def check_csrf(request: web.Request) -> None:
    """Refuse (403) a state-changing request without the session's CSRF token."""
    if request.method in _SAFE:
        return
    session = request.get(SESSION) or await require_login(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        field = form.get(CSRF_FIELD)
        given = field if isinstance(field, str) else None
    if not given or not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")


def page(handler: Handler) -> Handler:
    """Wrap a dashboard handler: login required, and CSRF for anything but GET/HEAD."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        await require_login(request)
        await check_csrf(request)
        return await handler(request)

    return wrapped


def _section(path: str) -> str:
    """The menu section of a path: /spaces/abc -> "spaces"."""
    first = path.strip("/").split("/", 1)[0]
    return "chat" if first == "dashboard" else first


def _context(request: web.Request, context: dict[str, Any]) -> dict[str, Any]:
    session = request.get(SESSION)
    base = {
        "user": session.username if session else None,
        "csrf_token": session.csrf_token if session else "",
        "nav": _section(request.path),
        "request_path": request.path,
    }
    return {**base, **context}


def _template(request: web.Request, name: str) -> jinja2.Template:
    return request.config_dict[TEMPLATES].get_template(name)


def render(
    request: web.Request, template_name: str, *, status: int = 200, **context: Any
) -> web.Response:
    """A whole page from `templates/<template_name>` (extends base.html)."""
    html = _template(request, template_name).render(_context(request, context))
    return web.Response(text=html, status=status, content_type="text/html", headers=PAGE_HEADERS)


def fragment(
    request: web.Request, template_name: str, *, status: int = 200, **context: Any
) -> web.Response:
    """An htmx partial from `templates/_<name>.html`: the same context, no layout."""
    html = _template(request, template_name).render(_context(request, context))
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )
