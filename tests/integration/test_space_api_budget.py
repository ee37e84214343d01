"""GET/PUT /spaces/{id}/budget of the host API, on a real unix socket and a migrated SQLite
database, with a real BudgetBook (the running spending counters).

Any run of the space reads the caps and the spend (its own user's day included); only a run
whose caller is an admin changes them, every entry checked before any is stored, and the
book's cached caps are dropped so the next model call is checked against the new ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mercury.api.routes import mount_space_api
from mercury.api.server import SOCKET_NAME, HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import MeteredCall, UsageMeter
from mercury.config import Config, Secrets
from mercury.core.budget import Cap, Scope
from mercury.pipeline.budget import BudgetBook, read_overrides
from mercury.storage import Database, default_sqlite_url, get_or_create_space, upgrade

BASE = "http://mercury"
PATH = "/spaces/space-a/budget"


@dataclass
class Api:
    db: Database
    book: BudgetBook
    session: aiohttp.ClientSession
    member: str  # web:bob's run in space-a
    admin: str
    task: str  # a scheduled task's run in space-a: no user
    other: str  # a member's run in space-b

    async def call(self, method: str, token: str, body: Any = None, path: str = PATH) -> Any:
        async with self.session.request(
            method, BASE + path, headers={"Authorization": f"Bearer {token}"}, json=body
        ) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    db = Database(url)
    await get_or_create_space(db, "space-a")
    await get_or_create_space(db, "space-b")
    config = Config.model_validate(
        {"budgets": {"instance_day": "$50", "space_day": "$5", "user_day": "100k tokens"}}
    )
    book = BudgetBook(config, db)
    await book.load()
    tokens = TokenStore()

    async def send_interim(run_id: str, space_id: str, text: str) -> None:
        raise AssertionError("not used here")

    server = HostApiServer(
        tmp_path / "api", tokens, config=config, secrets=Secrets(), meter=UsageMeter()
    )
    mount_space_api(server, db, send_interim=send_interim, budget=book)
    await server.start()
    folder = await server.open_run("test-run")
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(folder / SOCKET_NAME)),
        timeout=aiohttp.ClientTimeout(total=20),
    )
    try:
        yield Api(
            db=db,
            book=book,
            session=session,
            member=tokens.mint("run-m", "space-a", "member", user_key="web:bob"),
            admin=tokens.mint("run-a", "space-a", "admin", user_key="web:admin"),
            task=tokens.mint("run-t", "space-a", "member", task_id=7),
            other=tokens.mint("run-o", "space-b", "member", user_key="web:eve"),
        )
    finally:
        await session.close()
        await server.stop()
        await db.dispose()


async def spend(book: BudgetBook, space: str, usd: float, tokens: int, user: str | None) -> None:
    book.count(
        MeteredCall(
            run_id="r",
            space_id=space,
            provider="anthropic",
            model="claude-sonnet-4-5",
            input_tokens=tokens,
            output_tokens=0,
            cost_usd=usd,
            status=200,
            user_key=user,
        )
    )
    await book.drain()


def by_scope(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["scope"]: c for c in body["caps"]}


async def test_any_run_reads_the_caps_and_the_live_spend(api: Api) -> None:
    await spend(api.book, "space-a", 1.5, 30_000, "web:bob")
    await spend(api.book, "space-a", 0.5, 5_000, "web:eve")
    await spend(api.book, "space-b", 2.0, 1_000, "web:eve")

    status, body = await api.call("GET", api.member)
    assert status == 200 and body["space_id"] == "space-a"
    caps = by_scope(body)
    assert list(caps) == ["instance_day", "space_month", "space_day", "user_day", "task_run"]
    assert caps["instance_day"]["spent"] == {"usd": 4.0, "tokens": 36_000}
    assert caps["space_day"] == {
        "scope": "space_day",
        "cap": {"usd": 5.0, "tokens": None, "text": "$5"},
        "source": "config",
        "spent": {"usd": 2.0, "tokens": 35_000},
        "used": 0.4,
        "reached": False,
        "resets_at": caps["space_day"]["resets_at"],
    }
    assert caps["user_day"]["spent"] == {"usd": 1.5, "tokens": 30_000}  # bob's own
    assert caps["user_day"]["used"] == 0.3
    assert caps["task_run"]["spent"] is None

    # A task's run has no user: no user_day spend to show.
    status, body = await api.call("GET", api.task)
    assert status == 200 and by_scope(body)["user_day"]["spent"] is None

    # A run of another space cannot read this one's.
    status, body = await api.call("GET", api.other)
    assert status == 403, body


async def test_a_member_may_not_change_the_caps(api: Api) -> None:
    status, body = await api.call("PUT", api.member, {"space_day": "$50"})
    assert status == 403
    assert body["error"]["type"] == "permission_error"
    assert "admin" in body["error"]["message"]
    assert await read_overrides(api.db, "space-a") == {}


async def test_an_admin_sets_caps_and_the_next_check_uses_them(api: Api) -> None:
    await spend(api.book, "space-a", 6.0, 1_000, None)
    assert not (await api.book.check("space-a")).allowed  # $6 of $5; caps now cached

    status, body = await api.call(
        "PUT", api.admin, {"space_day": "$10", "task_run": 0.5, "space_month": None}
    )
    assert status == 200, body
    caps = by_scope(body)
    assert caps["space_day"]["cap"]["usd"] == 10.0 and caps["space_day"]["source"] == "space"
    assert caps["task_run"]["cap"]["usd"] == 0.5
    assert (caps["space_month"]["cap"], caps["space_month"]["source"]) == (None, "space")
    assert await read_overrides(api.db, "space-a") == {
        Scope.SPACE_DAY: Cap(usd=10.0),
        Scope.TASK_RUN: Cap(usd=0.5),
        Scope.SPACE_MONTH: None,
    }
    # Within the book's cache time, and still the new cap: the cache was dropped.
    assert (await api.book.check("space-a")).allowed

    status, body = await api.call("PUT", api.admin, {"space_day": "default"})
    assert status == 200
    assert by_scope(body)["space_day"]["source"] == "config"
    assert not (await api.book.check("space-a")).allowed


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"space_day": "$10", "instance_day": "$100"}, "set budgets.instance_day in mercury.yaml"),
        ({"space_day": "$10", "user_day": "lots"}, "user_day: expected a dollar amount"),
        ({"weekly": "$5"}, 'unknown cap "weekly"'),
        ({"space_day": True}, "space_day: expected a dollar amount"),
        ({"space_day": "$5", "day": "$6"}, "space_day is given twice"),
        ({}, 'expected {"<cap>": <value>, ...}'),
        ([1, 2], "must be a JSON object"),
    ],
)
async def test_a_bad_entry_is_refused_and_nothing_is_stored(
    api: Api, body: Any, fragment: str
) -> None:
    status, answer = await api.call("PUT", api.admin, body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert fragment in answer["error"]["message"]
    assert await read_overrides(api.db, "space-a") == {}
