"""The web chat's HTTP defences, each attack reproduced over real HTTP on 127.0.0.1.

- password guessing (login and bearer token) is throttled per client address;
- the session cookie is Secure whenever the browser talks https (public_url, proxy);
- a cookie-authenticated write from another origin (another port, a sibling subdomain)
  is refused: text/plain and form bodies, multipart uploads without X-Mercury-Request,
  requests without Origin or Sec-Fetch-Site, logout. Bearer-token calls are unaffected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mercury.http.sessions import SESSION_COOKIE
from tests.integration.test_web_adapter import PASSWORD, Harness, _serve

GOOD = {"username": "admin", "password": PASSWORD}
WRONG = {"username": "admin", "password": "guess"}


class FakeClock:
    """The throttle's clock, moved by hand: no test waits for real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def chat(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    async for h in _serve(tmp_path, PASSWORD, throttle_clock=clock):
        yield h


@pytest.fixture
async def proxied(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    """Mercury behind a reverse proxy on 127.0.0.1 (the test client plays the proxy)."""
    async for h in _serve(
        tmp_path,
        PASSWORD,
        throttle_clock=clock,
        trusted_proxies=["127.0.0.1"],
        public_url="https://chat.example.org/",
    ):
        yield h


async def _login(http: aiohttp.ClientSession, **headers: str) -> aiohttp.ClientResponse:
    async with http.post("/api/login", json=GOOD, headers=headers) as resp:
        await resp.read()
        return resp


# ------------------------------------------------------------------ login throttling


async def test_rapid_wrong_guesses_get_429_and_even_the_right_password_waits(
    chat: Harness, clock: FakeClock
) -> None:
    async with chat.client(auth=False) as http:
        statuses = []
        for _ in range(5):  # the free failures
            async with http.post("/api/login", json=WRONG) as resp:
                statuses.append(resp.status)
                assert "Retry-After" not in resp.headers
        assert statuses == [401] * 5
        async with http.post("/api/login", json=WRONG) as resp:
            # The sixth failure is still answered, and says a wait now applies.
            assert resp.status == 401
            assert resp.headers["Retry-After"] == "1"
            body = await resp.json()
            assert "next try must wait 1 s" in body["error"] and body["retry_after"] == 1
        async with http.post("/api/login", json=GOOD) as resp:
            # While the address waits, the password is not even checked.
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            assert SESSION_COOKIE not in resp.cookies
            error = (await resp.json())["error"]
            assert error.startswith("too many failed logins from your address (6 in a row)")
            assert "wait 1 s" in error and "doubles" in error

        clock.now += 1.0  # waited: one more wrong guess doubles the wait
        async with http.post("/api/login", json=WRONG) as resp:
            assert resp.status == 401 and resp.headers["Retry-After"] == "2"
        clock.now += 1.0
        async with http.post("/api/login", json=GOOD) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        clock.now += 1.0
        assert (await _login(http)).status == 200  # the right password after the wait
        # ...and the success reset the address: the next typo is free again.
        async with http.post("/api/login", json=WRONG) as resp:
            assert resp.status == 401 and "Retry-After" not in resp.headers


async def test_parallel_guesses_cannot_slip_past_the_count(chat: Harness) -> None:
    async def guess(http: aiohttp.ClientSession) -> int:
        async with http.post("/api/login", json=WRONG) as resp:
            return resp.status

    async with chat.client(auth=False) as http:
        statuses = await asyncio.gather(*(guess(http) for _ in range(60)))
    # 5 free failures + the one that started the wait were checked; the rest were not.
    assert statuses.count(401) == 6
    assert statuses.count(429) == 54


async def test_bearer_token_guesses_are_throttled_like_logins(chat: Harness) -> None:
    async with chat.client(auth=False) as http:
        for _ in range(6):
            async with http.get(
                "/api/chat/session", headers={"Authorization": "Bearer guess"}
            ) as resp:
                assert resp.status == 401
        async with http.get(
            "/api/chat/session", headers={"Authorization": f"Bearer {PASSWORD}"}
        ) as resp:
            assert resp.status == 429 and "Retry-After" in resp.headers
        # The login route shares the count: guessing there gains nothing either.
        async with http.post("/api/login", json=GOOD) as resp:
            assert resp.status == 429


async def test_a_throttled_address_does_not_lock_out_other_addresses(
    proxied: Harness,
) -> None:
    attacker = {"X-Forwarded-For": "203.0.113.66"}
    async with proxied.client(auth=False) as http:
        for _ in range(6):
            async with http.post("/api/login", json=WRONG, headers=attacker) as resp:
                assert resp.status == 401
        async with http.post("/api/login", json=GOOD, headers=attacker) as resp:
            assert resp.status == 429
        # Prepending a made-up address does not help: the proxy's entry is the right-most.
        spoofed = {"X-Forwarded-For": "192.0.2.1, 203.0.113.66"}
        async with http.post("/api/login", json=GOOD, headers=spoofed) as resp:
            assert resp.status == 429
        # Another client behind the same proxy logs in normally.
        other = await _login(http, **{"X-Forwarded-For": "198.51.100.20"})
        assert other.status == 200


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(chat: Harness) -> None:
    # Without server.trusted_proxies a client cannot pick a fresh address per guess.
    async with chat.client(auth=False) as http:
        for i in range(6):
            headers = {"X-Forwarded-For": f"198.51.100.{i}"}
            async with http.post("/api/login", json=WRONG, headers=headers) as resp:
                assert resp.status == 401
        headers = {"X-Forwarded-For": "198.51.100.99"}
        async with http.post("/api/login", json=GOOD, headers=headers) as resp:
            assert resp.status == 429


async def test_a_logged_in_browser_keeps_working_while_its_address_is_throttled(
    chat: Harness,
) -> None:
    async with chat.client(auth=False) as http:
        assert (await _login(http)).status == 200
        for _ in range(7):
            async with http.post("/api/login", json=WRONG):
                pass
        async with http.get("/api/chat/session") as resp:
            assert resp.status == 200  # the cookie is not a password: nothing to guess


# ------------------------------------------------------------------- Secure cookie


async def test_the_cookie_is_not_secure_over_plain_http_without_public_url(
    chat: Harness,
) -> None:
    async with chat.client(auth=False) as http:
        resp = await _login(http)
    assert resp.status == 200
    assert not resp.cookies[SESSION_COOKIE]["secure"]


async def test_the_cookie_is_secure_when_public_url_is_https(tmp_path: Path) -> None:
    async for h in _serve(tmp_path, PASSWORD, public_url="https://chat.example.org"):
        async with h.client(auth=False) as http:
            resp = await _login(http)
        assert resp.status == 200
        assert resp.cookies[SESSION_COOKIE]["secure"]
        assert resp.cookies[SESSION_COOKIE]["samesite"] == "Strict"


async def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(tmp_path: Path) -> None:
    async for h in _serve(tmp_path, PASSWORD, trusted_proxies=["127.0.0.1"]):
        async with h.client(auth=False) as http:
            resp = await _login(http, **{"X-Forwarded-Proto": "https"})
            assert resp.cookies[SESSION_COOKIE]["secure"]
            resp = await _login(http)
            assert not resp.cookies[SESSION_COOKIE]["secure"]


async def test_an_untrusted_peer_cannot_claim_https(chat: Harness) -> None:
    async with chat.client(auth=False) as http:
        resp = await _login(http, **{"X-Forwarded-Proto": "https"})
    assert not resp.cookies[SESSION_COOKIE]["secure"]


# ---------------------------------------------------------------- cross-site writes


@pytest.fixture
async def browser(chat: Harness) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser holding a valid session cookie for the chat (and no bearer token)."""
    async with chat.client(auth=False) as http:
        resp = await _login(http, Origin=chat.url)
        assert resp.status == 200
        yield http


def _other_port(url: str) -> str:
    """The chat's origin on another port: the same *site*, so SameSite lets cookies go."""
    host, port = url.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def _upload(**fields: Any) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("space", "main")
    form.add_field("text", fields.get("text", "attached"))
    form.add_field("file", b"evil", filename="a.txt", content_type="text/plain")
    return form


async def test_a_cross_origin_text_plain_post_with_the_cookie_is_refused(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    # What a page on another port of the same host can send without a CORS preflight.
    async with browser.post(
        "/api/chat/messages",
        data='{"space": "main", "text": "forged"}',
        headers={"Origin": _other_port(chat.url), "Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error.startswith("cross-site request refused: Origin")
        assert _other_port(chat.url) in error and chat.url in error
    assert chat.sink.received == []


async def test_a_cross_origin_json_post_is_refused_too(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    async with browser.post(
        "/api/chat/messages",
        json={"space": "main", "text": "forged"},
        headers={"Origin": "http://chat.example.org.evil.test"},
    ) as resp:
        assert resp.status == 403
    assert chat.sink.received == []


async def test_a_cross_origin_form_post_is_refused(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    async with browser.post(
        "/api/chat/messages",
        data={"space": "main", "text": "forged"},  # application/x-www-form-urlencoded
        headers={"Origin": _other_port(chat.url)},
    ) as resp:
        assert resp.status == 403
    assert chat.sink.received == []


async def test_a_same_origin_post_that_is_not_json_is_refused(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    for body, ctype in (
        ('{"space": "main", "text": "x"}', "text/plain"),
        ("space=main&text=x", "application/x-www-form-urlencoded"),
    ):
        async with browser.post(
            "/api/chat/messages",
            data=body,
            headers={"Origin": chat.url, "Content-Type": ctype},
        ) as resp:
            assert resp.status == 415
            assert "application/json" in (await resp.json())["error"]
    assert chat.sink.received == []


async def test_a_cross_origin_upload_without_the_header_is_refused(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    async with browser.post(
        "/api/chat/files", data=_upload(), headers={"Origin": _other_port(chat.url)}
    ) as resp:
        assert resp.status == 403
    # Even from our own origin, a multipart form without the header could be another
    # site's <form> relayed by a same-origin bug: it is refused with the fix.
    async with browser.post(
        "/api/chat/files", data=_upload(), headers={"Origin": chat.url}
    ) as resp:
        assert resp.status == 403
        assert "X-Mercury-Request: 1" in (await resp.json())["error"]
    # The header alone does not open it from another origin.
    async with browser.post(
        "/api/chat/files",
        data=_upload(),
        headers={"Origin": _other_port(chat.url), "X-Mercury-Request": "1"},
    ) as resp:
        assert resp.status == 403
    assert chat.sink.received == []
    assert list(chat.adapter.upload_dir.iterdir()) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # neither Origin nor Sec-Fetch-Site
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain or another port
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},  # sandboxed frames, file:// pages
        {"Origin": "BOGUS", "Sec-Fetch-Site": "same-origin"},
    ],
)
async def test_cookie_writes_without_same_origin_proof_are_refused(
    chat: Harness, browser: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with browser.post(
        "/api/chat/messages", json={"space": "main", "text": "forged"}, headers=headers
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"].startswith("cross-site request refused")
    assert chat.sink.received == []


async def test_a_cross_origin_logout_is_refused_and_the_session_survives(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    for headers in ({"Origin": _other_port(chat.url)}, {}):
        async with browser.post("/api/logout", data="", headers=headers) as resp:
            assert resp.status == 403
    async with browser.get("/api/chat/session") as resp:
        assert resp.status == 200
    async with browser.post("/api/logout", json={}, headers={"Origin": chat.url}) as resp:
        assert resp.status == 200
    async with browser.get("/api/chat/session") as resp:
        assert resp.status == 401


async def test_login_from_another_origin_or_as_a_form_is_refused(chat: Harness) -> None:
    async with chat.client(auth=False) as http:
        async with http.post(
            "/api/login", json=GOOD, headers={"Origin": _other_port(chat.url)}
        ) as resp:
            assert resp.status == 403
        async with http.post(
            "/api/login", data="username=admin&password=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as resp:  # fmt: skip
            assert resp.status == 415
        # A script (no Origin at all) logs in as before.
        assert (await _login(http)).status == 200


async def test_same_origin_browser_requests_still_work(
    chat: Harness, browser: aiohttp.ClientSession
) -> None:
    page = {"Origin": chat.url}
    async with browser.post(
        "/api/chat/messages", json={"space": "main", "text": "from the page"}, headers=page
    ) as resp:
        assert resp.status == 202
    # Some browsers send only Sec-Fetch-Site on same-origin requests.
    async with browser.post(
        "/api/chat/messages",
        json={"space": "main", "text": "fetch metadata"},
        headers={"Sec-Fetch-Site": "same-origin"},
    ) as resp:
        assert resp.status == 202
    async with browser.post(
        "/api/chat/files",
        data=_upload(text="with a file"),
        headers={**page, "X-Mercury-Request": "1"},
    ) as resp:
        assert resp.status == 202, await resp.text()
    # Reads need no Origin: a same-origin GET and EventSource do not send one.
    async with browser.get("/api/chat/messages?space=main") as resp:
        assert resp.status == 200
    assert [m.text for m in chat.sink.received] == [
        "from the page",
        "fetch metadata",
        "with a file",
    ]


async def test_the_public_url_origin_is_accepted_behind_a_proxy(
    proxied: Harness,
) -> None:
    # The proxy forwards to 127.0.0.1 but the browser's page is https://chat.example.org.
    async with proxied.client(auth=False) as http:
        page = {"Origin": "https://chat.example.org"}
        login = await _login(http, **page)
        assert login.status == 200
        # The cookie is Secure (public_url is https): the client's jar would keep it off
        # this plain-http hop, so it is sent by hand, as the proxy would pass it on.
        cookie = {SESSION_COOKIE: login.cookies[SESSION_COOKIE].value}
        async with http.post(
            "/api/chat/messages",
            json={"space": "main", "text": "via proxy"},
            headers=page,
            cookies=cookie,
        ) as resp:
            assert resp.status == 202
        async with http.post(
            "/api/chat/messages",
            json={"space": "main", "text": "forged"},
            headers={"Origin": "https://evil.example.org"},
            cookies=cookie,
        ) as resp:
            assert resp.status == 403
    assert [m.text for m in proxied.sink.received] == ["via proxy"]


async def test_bearer_token_requests_are_unaffected(chat: Harness) -> None:
    # Browsers never attach a bearer token on their own, so no origin proof is needed.
    async with chat.client() as http:
        async with http.post(
            "/api/chat/messages", json={"space": "main", "text": "script"}
        ) as resp:
            assert resp.status == 202
        async with http.post("/api/chat/files", data=_upload(text="script file")) as resp:
            assert resp.status == 202
    assert [m.text for m in chat.sink.received] == ["script", "script file"]


async def test_the_page_script_sends_what_the_server_requires(chat: Harness) -> None:
    async with chat.client(auth=False) as http, http.get("/chat/chat.js") as resp:
        js = await resp.text()
    assert '"X-Mercury-Request": "1"' in js
    assert '"Content-Type": "application/json"' in js
    # logout is a JSON write like the others
    assert 'api("/api/logout", { method: "POST", headers: JSON_HEADERS' in js
