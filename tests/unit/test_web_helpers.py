"""Pure helpers of the web chat adapter and `mercury chat`."""

from __future__ import annotations

import time

import pytest

from mercury.adapters.web import SessionStore, safe_name, valid_space
from mercury.adapters.web_auth import client_address, origin_of, parse_networks
from mercury.cli_chat import _default_url, _is_reply


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


def test_sessions_expire_and_can_be_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(ttl=60)
    sid = store.create("admin")
    assert len(sid) >= 40 and store.get(sid) == "admin"
    assert store.get("other") is None and store.get(None) is None
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert store.get(sid) is None
    sid2 = store.create("admin")
    store.drop(sid2)
    assert store.get(sid2) is None


def test_sessions_are_capped_oldest_first() -> None:
    store = SessionStore(ttl=60, max_sessions=2)
    first, second, third = store.create("a"), store.create("b"), store.create("c")
    assert store.get(first) is None
    assert store.get(second) == "b" and store.get(third) == "c"


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
