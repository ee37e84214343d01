"""The login and logout pages, and `/` (which sends the operator to the overview).

`/login` is a plain form (it works without JavaScript), posted form-encoded. The password
check is WebAuth's, shared with the web chat's JSON login: throttled per client address
(the sixth wrong password within a minute waits, answered 429 with Retry-After), name and
password always both compared. Success sets the same session cookie the web chat uses and
redirects (303) to `next` when that is a path on this server, else to /overview.
A browser that sends Origin or Sec-Fetch-Site must be on our own page, as at /api/login.
`/logout` is a POST with the session's CSRF token.
"""

from __future__ import annotations

from aiohttp import web

from mercury.dashboard.deps import deps
from mercury.dashboard.render import page, render, safe_next
from mercury.http.auth import PasswordCheck
from mercury.logging import get_logger

log = get_logger(__name__)

__all__ = ["routes"]

routes = web.RouteTableDef()

LOCKED = (
    "Login is locked: no dashboard password is configured. Set MERCURY_DASHBOARD_PASSWORD "
    "(in the environment or .env) and restart Mercury."
)


@routes.get("/")
@page
async def root(_request: web.Request) -> web.Response:
    """The dashboard's front door: the overview (a stranger is sent to /login first)."""
    raise web.HTTPSeeOther("/overview")


def _login_page(
    request: web.Request,
    *,
    next_path: str,
    error: str | None = None,
    status: int = 200,
    retry_after: int | None = None,
) -> web.Response:
    auth = deps(request).auth
    resp = render(
        request,
        "login.html",
        status=status,
        next_path=next_path,
        error=error or (LOCKED if auth.locked else None),
        locked=auth.locked,
    )
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    """The form; an operator already logged in goes straight on."""
    next_path = safe_next(request.query.get("next"))
    if await deps(request).auth.session(request) is not None:
        raise web.HTTPSeeOther(next_path)
    return _login_page(
        request, next_path=next_path, status=503 if deps(request).auth.locked else 200
    )


@routes.post("/login")
async def login_submit(request: web.Request) -> web.Response:
    auth = deps(request).auth
    next_path = safe_next(request.query.get("next"))
    if auth.locked:
        return _login_page(request, next_path=next_path, status=503)
    if "Origin" in request.headers or "Sec-Fetch-Site" in request.headers:
        problem = auth.source.origin_problem(request)
        if problem is not None:
            raise web.HTTPForbidden(text=problem)
    # A waiting address is refused before its body is read, and its password not compared.
    early = auth.waiting(request)
    if not early.allowed:
        status, message, seconds = auth.refusal_text(PasswordCheck(False, False, early), "")
        return _login_page(
            request, next_path=next_path, error=message, status=status, retry_after=seconds
        )
    form = await request.post()
    next_path = safe_next(_text(form.get("next")) or request.query.get("next"))
    check = auth.check_login(request, _text(form.get("username")), _text(form.get("password")))
    if not check.ok:
        if check.compared:
            # The attempted name is not logged: people type passwords into it.
            log.warning("dashboard login refused", remote=auth.source.client(request))
        status, message, seconds = auth.refusal_text(check, "wrong username or password")
        return _login_page(
            request, next_path=next_path, error=message, status=status, retry_after=seconds
        )
    resp = web.Response(status=303, headers={"Location": next_path, "Cache-Control": "no-store"})
    await auth.start_session(request, resp)
    return resp


@routes.post("/logout")
@page
async def logout(request: web.Request) -> web.Response:
    """End the session (CSRF-checked by `page`) and go back to the login form."""
    resp = web.Response(status=303, headers={"Location": "/login", "Cache-Control": "no-store"})
    await deps(request).auth.end_session(request, resp)
    return resp


def _text(value: object) -> str:
    """A form field as text ("" for a missing field or a file)."""
    return value if isinstance(value, str) else ""
