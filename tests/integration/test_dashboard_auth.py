"""The dashboard's login layer over real HTTP, on a real App's server and SQLite database.

The App is built as `mercury run` builds it, minus Docker: its database (migrated), its
one WebAuth, the enabled adapters and the dashboard, all mounted on its HTTP server on a
free 127.0.0.1 port. Then:

- every route of that server except /healthz, /login and /static/... refuses a stranger
  (enumerated from the router, so a route added later cannot forget it);
- a state-changing request without the session's CSRF token gets 403;
- the sixth wrong password within a minute is throttled;
- a session survives a restart, works in the web chat too, and ends at logout;
- the cookie is HttpOnly, SameSite=Strict, and Secure with an https public_url.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from mercury.http.sessions import SESSION_COOKIE
from tests.integration.dashboard_site import GOOD, PASSWORD, csrf_token, login, running
from tests.integration.mercury_site import mercury

WRONG = {"username": "admin", "password": "a guess"}

# Routes anyone may use. Everything else must refuse a request without a login.
PUBLIC = {
    ("GET", "/healthz"),  # monitors: says ok or names the problem, nothing private
    ("GET", "/login"),
    ("POST", "/login"),
    # The web chat's page and script: they only show its login form; every byte of the
    # conversation comes from /api/chat/..., which refuses strangers.
    ("GET", "/chat"),
    ("GET", "/chat/chat.js"),
    ("POST", "/api/login"),  # the web chat's JSON login (throttled like /login)
}


# ------------------------------------------------------------ every route refuses


def _concrete(path: str) -> str:
    """A path for a route pattern: each {variable} filled with a plausible value."""
    return re.sub(r"\{[^}]+\}", "1", path)


async def refusals(
    base: str, routes: list[tuple[str, str]], refusing: tuple[int, ...] = (401, 403)
) -> list[str]:
    """What each route answers a stranger; the problems (routes that did not refuse)."""
    problems = []
    async with aiohttp.ClientSession(base) as http:
        for method, pattern in routes:
            path = _concrete(pattern)
            async with http.request(method, path, allow_redirects=False) as resp:
                status, location = resp.status, resp.headers.get("Location", "")
            refused = status in refusing or (status == 303 and location.startswith("/login"))
            if not refused:
                problems.append(f"{method} {pattern} answered {status} {location}".strip())
    return problems


def guarded_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path pattern) of every route but the public ones and static files."""
    found = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or isinstance(resource, web.StaticResource):
            continue
        key = (route.method, resource.canonical)
        if key in PUBLIC or (route.method == "HEAD" and ("GET", key[1]) in PUBLIC):
            continue
        found.append(key)
    return found


async def test_every_route_but_health_login_and_static_refuses_a_stranger(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as site:
        routes = guarded_routes(site.app.http.app)
        paths = {path for _, path in routes}
        # The dashboard and the web chat are both mounted: the list is the real one.
        assert {"/", "/overview", "/logout", "/api/chat/messages", "/api/logout"} <= paths
        assert await refusals(site.url, routes) == []
        async with aiohttp.ClientSession(site.url) as http:
            async with http.get("/healthz") as resp:
                assert resp.status == 200
            async with http.get("/static/dashboard/htmx.min.js") as resp:
                assert resp.status == 200 and "htmx" in await resp.text()
            async with http.get("/overview?x=1", allow_redirects=False) as resp:
                assert resp.status == 303
                location = URL(resp.headers["Location"])
                assert (location.path, location.query["next"]) == ("/login", "/overview?x=1")


async def test_the_enumeration_catches_a_route_that_forgets_the_login(tmp_path: Path) -> None:
    """The check above can fail: a handler without `page` is reported."""

    async def forgetful(_request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/oops/{id}", forgetful)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        problems = await refusals(f"http://127.0.0.1:{port}", guarded_routes(app))
    finally:
        await runner.cleanup()
    assert sorted(problems) == ["GET /oops/{id} answered 200", "HEAD /oops/{id} answered 200"]


async def test_a_locked_dashboard_says_what_to_set(tmp_path: Path) -> None:
    async with running(tmp_path, password=None) as site, site.client() as http:
        async with http.get("/login") as resp:
            assert resp.status == 503
            assert "MERCURY_DASHBOARD_PASSWORD" in await resp.text()
        async with http.post("/login", data=GOOD, allow_redirects=False) as resp:
            assert resp.status == 503 and SESSION_COOKIE not in resp.cookies
        # The locked web chat says so with 503 and serves nothing either.
        routes = guarded_routes(site.app.http.app)
        assert await refusals(site.url, routes, refusing=(401, 403, 503)) == []


# ------------------------------------------------------------------- login, next


async def test_login_goes_to_next_only_when_it_is_a_local_path(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        for given, expected in [
            ("/overview?a=1", "/overview?a=1"),
            (None, "/overview"),
            ("//evil.example/x", "/overview"),
            ("https://evil.example/", "/overview"),
            ("/\\evil.example", "/overview"),
        ]:
            async with site.client() as http:
                form = dict(GOOD) | ({"next": given} if given else {})
                async with http.post("/login", data=form, allow_redirects=False) as resp:
                    assert resp.status == 303
                    assert resp.headers["Location"] == expected
        async with site.client() as http:
            async with http.get("/", allow_redirects=False) as resp:
                assert resp.headers["Location"] == "/login?next=/"
            await login(http)
            async with http.get("/", allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (303, "/overview")
            async with http.get("/login?next=/runs", allow_redirects=False) as resp:
                assert resp.headers["Location"] == "/runs"  # already logged in


async def test_a_wrong_password_shows_the_form_again_without_a_cookie(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        async with http.post("/login", data=WRONG, allow_redirects=False) as resp:
            assert resp.status == 401 and SESSION_COOKIE not in resp.cookies
            html = await resp.text()
            assert "wrong username or password" in html and 'name="password"' in html
            assert PASSWORD not in html and "a guess" not in html
        async with http.get("/overview", allow_redirects=False) as resp:
            assert resp.status == 303


# ---------------------------------------------------------------------- CSRF


async def test_a_post_without_the_csrf_token_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await login(http)
        token = await csrf_token(http)
        async with http.post("/logout", allow_redirects=False) as resp:
            assert resp.status == 403
        async with http.post(
            "/logout", headers={"X-CSRF-Token": "x" + token}, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        async with http.post("/logout", data={"csrf": "wrong"}, allow_redirects=False) as resp:
            assert resp.status == 403
        async with http.get("/overview", allow_redirects=False) as resp:
            assert resp.status == 200  # none of those logged out
        async with http.post(
            "/logout", headers={"X-CSRF-Token": token}, allow_redirects=False
        ) as resp:
            assert (resp.status, resp.headers["Location"]) == (303, "/login")


async def test_the_csrf_form_field_works_for_plain_forms(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        await login(http)
        token = await csrf_token(http)
        async with http.post("/logout", data={"csrf": token}, allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get("/overview", allow_redirects=False) as resp:
            assert resp.status == 303


async def test_each_session_has_its_own_csrf_token(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as one, site.client() as two:
        await login(one)
        await login(two)
        first = await csrf_token(one)
        assert first != await csrf_token(two)
        async with two.post(
            "/logout", headers={"X-CSRF-Token": first}, allow_redirects=False
        ) as resp:
            assert resp.status == 403


# ------------------------------------------------------------------ throttling


async def test_the_sixth_wrong_password_in_a_minute_is_throttled(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        for _ in range(5):  # the free failures
            async with http.post("/login", data=WRONG, allow_redirects=False) as resp:
                assert resp.status == 401 and "Retry-After" not in resp.headers
        async with http.post("/login", data=WRONG, allow_redirects=False) as resp:
            assert resp.status == 401 and resp.headers["Retry-After"] == "1"
            assert "must wait" in await resp.text()
        async with http.post("/login", data=GOOD, allow_redirects=False) as resp:
            # While the address waits, even the right password is not checked.
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
            assert SESSION_COOKIE not in resp.cookies
            assert "too many failed logins" in await resp.text()
        # The web chat's JSON login counts against the same address.
        async with http.post("/api/login", json=GOOD) as resp:
            assert resp.status == 429


# ------------------------------------------------------------ sessions, logout


async def test_a_session_survives_a_restart_and_works_in_the_web_chat(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        session_id = await login(http)
    async with running(tmp_path) as site:
        cookies = {SESSION_COOKIE: session_id}
        async with aiohttp.ClientSession(site.url, cookies=cookies) as http:
            async with http.get("/overview", allow_redirects=False) as resp:
                assert resp.status == 200
                assert "admin" in await resp.text()
            async with http.get("/api/chat/session") as resp:
                assert resp.status == 200 and (await resp.json())["username"] == "admin"


async def test_a_web_chat_login_works_on_the_dashboard(tmp_path: Path) -> None:
    async with running(tmp_path) as site, site.client() as http:
        async with http.post("/api/login", json=GOOD) as resp:
            assert resp.status == 200
        async with http.get("/overview", allow_redirects=False) as resp:
            assert resp.status == 200


async def test_logout_ends_the_session_for_good(tmp_path: Path) -> None:
    async with running(tmp_path) as site:
        async with site.client() as http:
            session_id = await login(http)
            token = await csrf_token(http)
            async with http.post(
                "/logout", headers={"X-CSRF-Token": token}, allow_redirects=False
            ) as resp:
                assert resp.status == 303
                assert resp.cookies[SESSION_COOKIE].value == ""  # the cookie is cleared
        # The old id, sent again by hand, is dead on the dashboard and in the chat.
        async with aiohttp.ClientSession(site.url, cookies={SESSION_COOKIE: session_id}) as http:
            async with http.get("/overview", allow_redirects=False) as resp:
                assert resp.status == 303
            async with http.get("/api/chat/session") as resp:
                assert resp.status == 401


async def test_an_expired_session_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, dashboard={"session_ttl": "1s"}) as site, site.client() as http:
        await login(http)
        await asyncio.sleep(1.2)
        async with http.get("/overview", allow_redirects=False) as resp:
            assert resp.status == 303


# ---------------------------------------------------------------------- cookie


@pytest.mark.parametrize(
    ("public_url", "secure"), [(None, False), ("https://ops.example.org", True)]
)
async def test_the_cookie_is_httponly_strict_and_secure_behind_https(
    tmp_path: Path, public_url: str | None, secure: bool
) -> None:
    async with (
        running(tmp_path, server={"public_url": public_url}) as site,
        site.client() as http,
        http.post("/login", data=GOOD, allow_redirects=False) as resp,
    ):
        assert resp.status == 303
        header = resp.headers["Set-Cookie"]
        assert header.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
        assert ("Secure" in header) is secure


# ------------------------------------------------------------- exposed listener


@pytest.mark.parametrize(
    ("args", "warned"),
    [(["--host", "0.0.0.0"], True), (["--host", "127.0.0.1"], False)],
)
def test_mercury_run_warns_loudly_on_a_public_address_without_https(
    tmp_path: Path, args: list[str], warned: bool
) -> None:
    """The warning comes first on stderr, before anything can fail (here: no engine)."""
    r = mercury(
        "run", *args, cwd=tmp_path, timeout=60,
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )  # fmt: skip
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: Docker engine not reachable")
    warnings = [line for line in lines if line.startswith("WARNING: server.host is 0.0.0.0")]
    assert len(warnings) == (1 if warned else 0), r.stderr
    assert ("login exposed without TLS" in r.stdout + r.stderr) is warned
