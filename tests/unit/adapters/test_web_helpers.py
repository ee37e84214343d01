"""Pure helpers of the web chat adapter, the login layer (mercury.http) and `mercury chat`."""

from __future__ import annotations

import time

import pytest

from mercury.adapters.web.files import safe_name
from mercury.adapters.web.spacelog import QUEUE_LIMIT, Event, SpaceLogs, valid_space
from mercury.cli.chat import _default_url, _is_reply
from mercury.http.addresses import client_address, origin_of, parse_networks
from mercury.http.sessions import MemorySessionStore


@pytest.mark.parametrize("space", ["main", "a", "ops-1", "Team_2.x", "9" * 64])
def test_valid_spaces(space: str) -> None:
    assert valid_space(space)


@pytest.mark.parametrize("space", ["", "-x", ".x", "_x", "a/b", "a b", "..", "9" * 65, None, 3])
def test_invalid_spaces(space: object) -> None:
    assert not valid_space(space)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\a b.txt", "a b.txt"),
        ("..", "file"),
        ("", "file"),
        (None, "file"),
        (".hidden", "hidden"),
        ("naïve<script>.html", "na_ve_script_.html"),
        ("x" * 300, "x" * 128),
    ],
)
def test_safe_name(given: str | None, expected: str) -> None:
    assert safe_name(given) == expected


async def test_sessions_expire_and_can_be_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemorySessionStore(ttl=60)
    sid, session = await store.create("admin")
    assert len(sid) >= 40 and await store.get(sid) == session
    assert session.username == "admin" and len(session.csrf_token) >= 40
    assert await store.get("other") is None and await store.get(None) is None
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert await store.get(sid) is None
    sid2, _ = await store.create("admin")
    await store.drop(sid2)
    assert await store.get(sid2) is None


async def test_sessions_are_capped_oldest_first() -> None:
    store = MemorySessionStore(ttl=60, max_sessions=2)
    (first, _), (second, b), (third, c) = [await store.create(u) for u in "abc"]
    assert await store.get(first) is None
    assert await store.get(second) == b and await store.get(third) == c
    assert b.csrf_token != c.csrf_token  # every session has its own CSRF token


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8787"),
        ("0.0.0.0", "http://127.0.0.1:8787"),
        ("::", "http://[::1]:8787"),
        ("::1", "http://[::1]:8787"),
        ("chat.example.org", "http://chat.example.org:8787"),
    ],
)
def test_default_url(host: str, url: str) -> None:
    assert _default_url(host, 8787) == url


def test_what_counts_as_the_reply() -> None:
    assert _is_reply({"role": "assistant", "reply_to": "m1"}, "m1")
    assert _is_reply({"role": "assistant", "reply_to": None}, "m1")
    assert not _is_reply({"role": "assistant", "reply_to": "m0"}, "m1")
    # A streamed answer's preview is not the reply, and neither is a withdrawn message.
    assert not _is_reply({"role": "assistant", "reply_to": None, "preview": True}, "m1")
    assert not _is_reply({"role": "assistant", "reply_to": "m1", "deleted": True}, "m1")
    assert not _is_reply({"role": "status", "reply_to": "m1"}, "m1")
    assert not _is_reply({"role": "user", "reply_to": None}, "m1")


PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        # Not from a trusted proxy: the header is the client's own claim and is ignored.
        ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),
        # From a proxy with no header: the proxy itself.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        # The client prepends a fake address: the right-most untrusted entry still wins.
        ("127.0.0.1", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),
        # A chain of trusted proxies is walked from the right.
        ("127.0.0.1", ["198.51.100.1, 10.1.2.3, 10.9.9.9"], "198.51.100.1"),
        # Several header lines are one list.
        ("127.0.0.1", ["1.2.3.4", "198.51.100.1"], "198.51.100.1"),
        # Ports and brackets some proxies add.
        ("127.0.0.1", ["198.51.100.1:5555"], "198.51.100.1"),
        ("::1", ["[2001:db8::7]:443"], "2001:db8::7"),
        # Garbage stops the walk at the hop that forwarded it (no fresh identity per request).
        ("127.0.0.1", ["garbage"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1, x, 10.0.0.2"], "10.0.0.2"),
        # Every entry trusted: the furthest one.
        ("127.0.0.1", ["10.0.0.9, 10.0.0.2"], "10.0.0.9"),
        (None, [], "unknown"),
    ],
)
def test_client_address_trusts_only_configured_proxies(
    remote: str | None, forwarded: list[str], expected: str
) -> None:
    assert client_address(remote, forwarded, PROXIES) == expected


def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8787", "http://127.0.0.1:8787"),
        ("https://Chat.Example.org/mercury/", "https://chat.example.org"),
        ("https://chat.example.org:443", "https://chat.example.org"),
        ("http://chat.example.org:80/x", "http://chat.example.org"),
        ("https://chat.example.org:8443", "https://chat.example.org:8443"),
        ("http://[::1]:8787", "http://[::1]:8787"),
        ("null", None),
        ("file:///etc/passwd", None),
        ("http://host:notaport", None),
        ("", None),
        (None, None),
    ],
)
def test_origin_of_normalises(url: str | None, origin: str | None) -> None:
    assert origin_of(url) == origin


# ------------------------------------------------------------------ the space logs


def test_every_change_gets_a_new_cursor_and_pollers_see_tombstones() -> None:
    logs = SpaceLogs(max_log=10)
    first = logs.new_entry("main", "m1", "user", "admin", "hi", [])
    logs.append("main", first)
    logs.append("main", logs.new_entry("main", "s1", "status", "Mercury", "working", []))
    posted = logs.current_cursor("main")
    logs.edit("main", "s1", "still working (30s)")
    [edited] = logs.after("main", posted)
    assert edited["text"] == "still working (30s)" and edited["cursor"] > posted
    logs.delete("main", "s1")
    changes = logs.after("main", first["cursor"])
    assert [(e["id"], e.get("deleted", False)) for e in changes] == [("s1", True)]
    assert changes[0]["cursor"] > edited["cursor"]
    # A fresh view shows no tombstone; a withdrawn message is not "live" any more.
    assert [e["id"] for e in logs.after("main", None)] == ["m1"]
    assert logs.find_live("main", "s1") is None and logs.find_live("main", "m1") == first
    assert logs.current_cursor("main") == changes[0]["cursor"]
    assert logs.after("other", None) == [] and logs.current_cursor("other") == 0


def test_the_log_keeps_at_most_max_log_entries() -> None:
    logs = SpaceLogs(max_log=2)
    for i in range(3):
        logs.append("main", logs.new_entry("main", f"m{i}", "user", "admin", str(i), []))
    assert [e["id"] for e in logs.after("main", None)] == ["m1", "m2"]


def test_a_subscriber_that_does_not_read_is_cut_off() -> None:
    logs = SpaceLogs(max_log=10)
    slow, fast = logs.subscribe("main"), logs.subscribe("main")
    for _ in range(QUEUE_LIMIT):
        logs.push("main", Event("typing", {"space": "main"}))
        fast.get_nowait()
    assert logs.subscriber_count("main") == 2
    logs.push("main", Event("typing", {"space": "main"}))
    assert logs.subscriber_count("main") == 1  # the slow one is gone, its stream ends
    assert slow.qsize() == QUEUE_LIMIT + 1 and list(slow._queue)[-1] is None  # type: ignore[attr-defined]
    logs.close_streams()
    assert logs.subscriber_count("main") == 0 and fast.get_nowait() is not None
    assert fast.get_nowait() is None


def test_events_encode_as_server_sent_events() -> None:
    assert (
        Event("edit", {"a": "é"}, 7).encode() == 'id: 7\nevent: edit\ndata: {"a": "é"}\n\n'.encode()
    )
    assert Event("typing", {}).encode() == b"event: typing\ndata: {}\n\n"
