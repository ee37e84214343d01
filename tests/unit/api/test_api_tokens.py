"""Per-run tokens: random, bound to one run/space/role, dead after revoke."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from mercury.api.tokens import RunGrant, TokenStore


def test_mint_and_lookup_return_the_grant() -> None:
    store = TokenStore()
    token = store.mint("run-1", "space-a", "member")
    grant = store.lookup(token)
    assert isinstance(grant, RunGrant)
    assert (grant.run_id, grant.space_id, grant.role) == ("run-1", "space-a", "member")
    assert grant.created_at.tzinfo is not None
    assert datetime.now(UTC) - grant.created_at < timedelta(seconds=5)


def test_tokens_are_long_random_and_url_safe() -> None:
    store = TokenStore()
    tokens = {store.mint(f"run-{i}", "s", "member") for i in range(500)}
    assert len(tokens) == 500
    for token in tokens:
        # 32 random bytes -> 43 URL-safe base64 characters.
        assert len(token) >= 43
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("token", ["", None, "nope", "x" * 43])
def test_unknown_tokens_have_no_grant(token: str | None) -> None:
    store = TokenStore()
    store.mint("run-1", "space-a", "member")
    assert store.lookup(token) is None


def test_revoke_kills_every_token_of_that_run_only() -> None:
    store = TokenStore()
    a1 = store.mint("run-a", "space-1", "member")
    a2 = store.mint("run-a", "space-1", "member")
    b = store.mint("run-b", "space-1", "admin")
    assert store.active_runs() == {"run-a", "run-b"}
    assert store.revoke("run-a") == 2
    assert store.lookup(a1) is None
    assert store.lookup(a2) is None
    grant_b = store.lookup(b)
    assert grant_b is not None and grant_b.role == "admin"
    assert store.revoke("run-a") == 0
    assert store.revoke("never-existed") == 0
    assert len(store) == 1


@pytest.mark.parametrize("args", [("", "s", "member"), ("r", "", "member"), ("r", "s", "")])
def test_mint_refuses_empty_bindings(args: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        TokenStore().mint(*args)


def test_reprs_never_show_tokens() -> None:
    store = TokenStore()
    token = store.mint("run-1", "space-a", "member")
    grant = store.lookup(token)
    assert token not in repr(store)
    assert token not in repr(grant)


def test_concurrent_mint_and_revoke_from_threads() -> None:
    store = TokenStore()
    minted: dict[str, str] = {}
    lock = threading.Lock()

    def work(i: int) -> None:
        for j in range(50):
            run = f"run-{i}-{j}"
            token = store.mint(run, f"space-{i}", "member")
            with lock:
                minted[run] = token
            if j % 2:
                store.revoke(run)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alive = {run for run, token in minted.items() if store.lookup(token) is not None}
    assert alive == {f"run-{i}-{j}" for i in range(8) for j in range(0, 50, 2)}
    assert len(store) == len(alive)
