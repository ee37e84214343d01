"""The session cookie is signed with the instance's key, kept in data_dir."""

from __future__ import annotations

import stat
from pathlib import Path

from mercury.http.sessions import KEY_FILE, CookieSigner, signing_key


def test_a_signed_cookie_verifies_and_a_tampered_one_does_not() -> None:
    signer = CookieSigner(b"k" * 32)
    cookie = signer.sign("abc")
    assert signer.unsign(cookie) == "abc"
    session_id, _, mac = cookie.rpartition(".")
    for bad in (
        None,
        "",
        "abc",  # the bare id
        f"abd.{mac}",  # another id with this id's signature
        f"{session_id}.{mac[:-1]}",
        f"{session_id}.",
        f".{mac}",
        CookieSigner(b"x" * 32).sign("abc"),  # another instance's key
    ):
        assert signer.unsign(bad) is None, bad


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    first = signing_key(tmp_path)
    assert len(first) == 32
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert signing_key(tmp_path) == first  # a restart reads the same key
    # Cookies signed before a restart verify after it.
    assert CookieSigner(signing_key(tmp_path)).unsign(CookieSigner(first).sign("s")) == "s"
