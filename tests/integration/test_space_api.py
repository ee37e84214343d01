"""The space endpoints of the host API on a real unix socket over a real migrated SQLite DB.

Tokens: a member and an admin of space A, a member of space B. Every change an endpoint
makes is checked through the storage functions, not only through the API's own answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from mercury.api.routes import SPACE_API, mount_space_api
from mercury.api.server import SOCKET_NAME, HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, Secrets
from mercury.storage import (
    Database,
    add_task,
    default_sqlite_url,
    get_or_create_space,
    get_preferences,
    get_role,
    is_muted,
    list_mutes,
    list_tasks,
    set_preference,
    upgrade,
)
from mercury.storage.spend import add_model_call
from mercury.storage.tasks import note_task_outcome

BASE = "http://mercury"  # any host: the connection goes to the socket


@dataclass
class Api:
    db: Database
    tokens: TokenStore
    session: aiohttp.ClientSession
    member_a: str
    admin_a: str
    member_b: str
    sent: list[tuple[str, str, str]] = field(default_factory=list)

    async def call(
        self, method: str, path: str, token: str, body: Any = None, *, raw: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, BASE + path, **kwargs) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    database = Database(url)
    await get_or_create_space(database, "space-a")
    await get_or_create_space(database, "space-b")
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def api(tmp_path: Path, db: Database) -> AsyncIterator[Api]:
    tokens = TokenStore()
    sent: list[tuple[str, str, str]] = []

    async def send_interim(run_id: str, space_id: str, text: str) -> None:
        if text == "explode":
            raise RuntimeError("platform down")
        sent.append((run_id, space_id, text))

    server = HostApiServer(
        tmp_path / "api",
        tokens,
        config=Config.model_validate({}),
        secrets=Secrets(),
        meter=UsageMeter(),
    )
    mount_space_api(server, db, send_interim=send_interim, interim_per_run=3)
    await server.start()
    folder = await server.open_run("test-run")
    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(folder / SOCKET_NAME)),
        timeout=aiohttp.ClientTimeout(total=20),
    )
    try:
        yield Api(
            db=db,
            tokens=tokens,
            session=session,
            member_a=tokens.mint("run-member-a", "space-a", "member"),
            admin_a=tokens.mint("run-admin-a", "space-a", "admin"),
            member_b=tokens.mint("run-member-b", "space-b", "member"),
            sent=sent,
        )
    finally:
        await session.close()
        await server.stop()


def assert_error(status: int, body: Any, expected: int, kind: str, fragment: str = "") -> None:
    assert status == expected, body
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert fragment.lower() in body["error"]["message"].lower()


# --------------------------------------------------------------------------- preferences


async def test_preferences_crud(api: Api) -> None:
    p = "/spaces/space-a/preferences"
    assert await api.call("GET", p, api.member_a) == (200, {"preferences": {}})

    status, body = await api.call("PUT", f"{p}/language", api.member_a, {"value": "German"})
    assert (status, body) == (200, {"key": "language", "value": "German"})
    await api.call("PUT", f"{p}/tz", api.member_a, {"value": "Europe/Berlin"})
    assert await get_preferences(api.db, "space-a") == {"language": "German", "tz": "Europe/Berlin"}
    assert await get_preferences(api.db, "space-b") == {}

    assert await api.call("GET", f"{p}/language", api.member_a) == (
        200,
        {"key": "language", "value": "German"},
    )
    status, body = await api.call("GET", p, api.member_a)
    assert body == {"preferences": {"language": "German", "tz": "Europe/Berlin"}}

    status, body = await api.call("DELETE", f"{p}/language", api.member_a)
    assert (status, body) == (200, {"key": "language", "deleted": True})
    assert await get_preferences(api.db, "space-a") == {"tz": "Europe/Berlin"}

    assert_error(*await api.call("GET", f"{p}/language", api.member_a), 404, "not_found_error")
    assert_error(*await api.call("DELETE", f"{p}/language", api.member_a), 404, "not_found_error")


async def test_preference_validation(api: Api) -> None:
    p = "/spaces/space-a/preferences"
    assert_error(
        *await api.call("PUT", f"{p}/k", api.member_a, {"value": 3}),
        400,
        "invalid_request_error",
        "must be a string",
    )
    assert_error(
        *await api.call("PUT", f"{p}/k", api.member_a, {}), 400, "invalid_request_error", "value"
    )
    assert_error(
        *await api.call("PUT", f"{p}/k", api.member_a, raw="{not json"),
        400,
        "invalid_request_error",
        "not valid JSON",
    )
    assert_error(
        *await api.call("PUT", f"{p}/k", api.member_a, raw="[1]"),
        400,
        "invalid_request_error",
        "JSON object",
    )
    assert_error(
        *await api.call("PUT", f"{p}/k", api.member_a, {"value": "x" * 5000}),
        400,
        "invalid_request_error",
        "too long",
    )
    assert_error(
        *await api.call("PUT", f"{p}/bad%20key", api.member_a, {"value": "v"}),
        400,
        "invalid_request_error",
        "bad preference key",
    )
    # An empty string is a legitimate value.
    assert (await api.call("PUT", f"{p}/empty", api.member_a, {"value": ""}))[0] == 200
    assert await get_preferences(api.db, "space-a") == {"empty": ""}


async def test_other_space_is_refused(api: Api) -> None:
    await set_preference(api.db, "space-a", "secret", "a-only")
    for method, path, body in [
        ("GET", "/spaces/space-a/preferences", None),
        ("PUT", "/spaces/space-a/preferences/x", {"value": "y"}),
        ("GET", "/spaces/space-a/tasks", None),
        ("POST", "/spaces/space-a/tasks", {"prompt": "p", "every": "1h"}),
        ("POST", "/spaces/space-a/messages", {"text": "hi"}),
    ]:
        assert_error(
            *await api.call(method, path, api.member_b, body), 403, "permission_error", "space"
        )
    assert await get_preferences(api.db, "space-a") == {"secret": "a-only"}
    assert await list_tasks(api.db, "space-a") == []
    assert api.sent == []


async def test_unknown_token_is_401(api: Api) -> None:
    status, body = await api.call("GET", "/spaces/space-a/preferences", "not-a-token")
    assert_error(status, body, 401, "authentication_error")
    api.tokens.revoke("run-member-a")
    status, body = await api.call("GET", "/spaces/space-a/preferences", api.member_a)
    assert_error(status, body, 401, "authentication_error")


# --------------------------------------------------------------------------- tasks


async def test_tasks_add_list_cancel(api: Api) -> None:
    t = "/spaces/space-a/tasks"
    before = datetime.now(UTC)
    status, body = await api.call("POST", t, api.member_a, {"prompt": "standup", "every": "30m"})
    assert status == 201, body
    every = body["task"]
    assert every["prompt"] == "standup" and every["every_s"] == 1800
    assert every["created_by"] is None  # the run's sender; this token names none
    nxt = datetime.fromisoformat(every["next_run_at"])
    assert before + timedelta(minutes=29) < nxt < before + timedelta(minutes=31)

    status, body = await api.call(
        "POST", t, api.member_a, {"prompt": "weekday report", "cron": "0  9 * * MON-fri"}
    )
    assert status == 201, body
    cron = body["task"]
    assert cron["cron"] == "0 9 * * MON-fri"

    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    status, body = await api.call("POST", t, api.member_a, {"prompt": "once", "at": at.isoformat()})
    assert status == 201, body
    once = body["task"]
    assert datetime.fromisoformat(once["at"]) == at
    assert datetime.fromisoformat(once["next_run_at"]) == at

    status, body = await api.call("GET", t, api.member_a)
    assert status == 200
    assert [x["id"] for x in body["tasks"]] == [every["id"], cron["id"], once["id"]]
    stored = await list_tasks(api.db, "space-a")
    assert [(x.prompt, x.cron, x.interval_s) for x in stored] == [
        ("standup", None, 1800),
        ("weekday report", "0 9 * * MON-fri", None),
        ("once", None, None),
    ]

    status, body = await api.call("DELETE", f"{t}/{cron['id']}", api.member_a)
    assert (status, body) == (200, {"id": cron["id"], "cancelled": True})
    assert [x.id for x in await list_tasks(api.db, "space-a")] == [every["id"], once["id"]]
    assert_error(
        *await api.call("DELETE", f"{t}/{cron['id']}", api.member_a), 404, "not_found_error"
    )
    assert_error(*await api.call("DELETE", f"{t}/abc", api.member_a), 404, "not_found_error")


async def test_tasks_say_their_last_outcome_and_average_cost(api: Api) -> None:
    quiet = await add_task(
        api.db, "space-a", "check the site", interval_s=3600, silent=True, catch_up="skip"
    )
    fresh = await add_task(api.db, "space-a", "new one", interval_s=3600)
    for run, usd, tokens in (("r1", 0.01, 1000), ("r2", 0.02, 2000), ("r3", 0.03, 3000)):
        await add_model_call(
            api.db, space_id="space-a", run_id=run, provider="anthropic", model="m",
            input_tokens=tokens, output_tokens=0, cost_usd=usd, status=200, incomplete=False,
            task_id=quiet.id,
        )  # fmt: skip
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    await note_task_outcome(api.db, quiet.id, "refused", "space is paused", at)
    status, body = await api.call("GET", "/spaces/space-a/tasks", api.member_a)
    assert status == 200
    rows = {t["id"]: t for t in body["tasks"]}
    assert rows[quiet.id]["silent"] is True and rows[quiet.id]["catch_up"] == "skip"
    assert rows[quiet.id]["last_outcome"] == "refused"
    assert rows[quiet.id]["last_detail"] == "space is paused"
    assert datetime.fromisoformat(rows[quiet.id]["last_outcome_at"]) == at
    assert rows[quiet.id]["avg_cost_usd"] == pytest.approx(0.02)
    assert rows[quiet.id]["avg_tokens"] == 2000
    assert rows[quiet.id]["next_run_at"] is not None
    assert {k: rows[fresh.id][k] for k in ("silent", "catch_up", "last_outcome")} == {
        "silent": False,
        "catch_up": "once",
        "last_outcome": None,
    }
    assert rows[fresh.id]["avg_cost_usd"] is None and rows[fresh.id]["avg_tokens"] is None
    assert body["timezone"] == "UTC"  # mount_space_api's default: no zone configured


async def test_task_of_another_space(api: Api) -> None:
    b_task = await add_task(api.db, "space-b", "b's task", interval_s=3600)
    # Through space A's path: the task is not there.
    status, body = await api.call("DELETE", f"/spaces/space-a/tasks/{b_task.id}", api.admin_a)
    assert_error(status, body, 404, "not_found_error")
    # Through space B's path: the token is not valid there.
    status, body = await api.call("DELETE", f"/spaces/space-b/tasks/{b_task.id}", api.admin_a)
    assert_error(status, body, 403, "permission_error")
    assert [t.id for t in await list_tasks(api.db, "space-b")] == [b_task.id]
    # Listing A shows none of B's tasks; B's own member can cancel it.
    assert (await api.call("GET", "/spaces/space-a/tasks", api.admin_a))[1]["tasks"] == []
    status, _ = await api.call("DELETE", f"/spaces/space-b/tasks/{b_task.id}", api.member_b)
    assert status == 200
    assert await list_tasks(api.db, "space-b") == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"every": "1h"}, "'prompt' is required"),
        ({"prompt": "  ", "every": "1h"}, "must not be empty"),
        ({"prompt": "p"}, "exactly one schedule"),
        ({"prompt": "p", "every": "1h", "cron": "* * * * *"}, "exactly one schedule"),
        ({"prompt": "p", "every": "soon"}, "not a duration"),
        ({"prompt": "p", "every": "10s"}, "at least 60s"),
        ({"prompt": "p", "every": 3600}, "must be a string"),
        ({"prompt": "p", "cron": "0 9 * *"}, "5 fields"),
        ({"prompt": "p", "cron": "61 * * * *"}, "minute"),
        ({"prompt": "p", "cron": "0 9 * * 1-9"}, "day of week"),
        ({"prompt": "p", "cron": "0 9 * foo *"}, "month"),
        ({"prompt": "p", "cron": "*/0 * * * *"}, "step"),
        ({"prompt": "p", "at": "tomorrow-ish"}, "cannot read 'tomorrow-ish' as a time"),
        ({"prompt": "p", "at": "2001-01-01T00:00:00Z"}, "in the past"),
        ({"prompt": "p", "every": "1h", "priority": 1}, "unknown field"),
        ({"prompt": "p", "every": "1h", "silent": "yes"}, "'silent' must be true or false"),
        ({"prompt": "p", "every": "1h", "catch_up": "all"}, "'catch_up' must be one of once"),
        ({"prompt": "x" * 9000, "every": "1h"}, "too long"),
    ],
)
async def test_task_validation(api: Api, body: dict[str, Any], fragment: str) -> None:
    status, answer = await api.call("POST", "/spaces/space-a/tasks", api.member_a, body)
    assert_error(status, answer, 400, "invalid_request_error", fragment)
    assert await list_tasks(api.db, "space-a") == []


async def test_task_times_are_read_on_the_space_clock(tmp_path: Path, db: Database) -> None:
    # scheduler.timezone (mount_space_api's timezone) unless the space has its own zone.
    async def send(run_id: str, space_id: str, text: str) -> None:
        return None

    await set_preference(db, "space-b", "_timezone", "America/New_York")
    tokens = TokenStore()
    server = HostApiServer(
        tmp_path / "api",
        tokens,
        config=Config.model_validate({}),
        secrets=Secrets(),
        meter=UsageMeter(),
    )
    mount_space_api(server, db, send_interim=send, timezone="Europe/Berlin")
    made: list[tuple[str, dict[str, Any]]] = []
    zone_names: dict[str, str] = {}
    async with server:
        folder = await server.open_run("r1")
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(folder / SOCKET_NAME))
        ) as s:
            for space in ("space-a", "space-b"):
                token = tokens.mint(f"r-{space}", space, "member")
                for body in (
                    {"prompt": "p", "cron": "0 9 * * 1"},
                    {"prompt": "p", "at": "mon 9am"},
                    {"prompt": "p", "at": "2099-06-01 12:00"},
                ):
                    async with s.post(
                        f"{BASE}/spaces/{space}/tasks",
                        json=body,
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp:
                        assert resp.status == 201, await resp.text()
                        made.append((space, (await resp.json())["task"]))
                async with s.get(
                    f"{BASE}/spaces/{space}/tasks", headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    zone_names[space] = (await resp.json())["timezone"]
    assert zone_names == {"space-a": "Europe/Berlin", "space-b": "America/New_York"}
    zones = {"space-a": ZoneInfo("Europe/Berlin"), "space-b": ZoneInfo("America/New_York")}
    for space, task in made:
        if task["at"] and task["at"].startswith("2099"):
            continue
        # The cron task and "mon 9am": Monday 09:00 on the space's own clock.
        local = datetime.fromisoformat(task["next_run_at"]).astimezone(zones[space])
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0), (space, task)
    fixed = [datetime.fromisoformat(t["at"]) for _, t in made if (t["at"] or "")[:4] == "2099"]
    assert fixed == [  # 12:00 in summer: CEST (+2) and EDT (-4)
        datetime(2099, 6, 1, 10, 0, tzinfo=UTC),
        datetime(2099, 6, 1, 16, 0, tzinfo=UTC),
    ]
    stored = {t.id: t.next_run_at for t in await list_tasks(db)}
    assert [stored[t["id"]] for _, t in made] == [
        datetime.fromisoformat(t["next_run_at"]) for _, t in made
    ]


# --------------------------------------------------------------------------- interim messages


async def test_interim_message_reaches_callback_with_run_id(api: Api) -> None:
    m = "/spaces/space-a/messages"
    status, body = await api.call("POST", m, api.member_a, {"text": "working on it"})
    assert (status, body) == (200, {"sent": True, "remaining": 2})
    assert api.sent == [("run-member-a", "space-a", "working on it")]

    # The cap (3 in this fixture) is per run: a second run of the space has its own.
    for i in range(2):
        assert (await api.call("POST", m, api.member_a, {"text": f"step {i}"}))[0] == 200
    status, body = await api.call("POST", m, api.member_a, {"text": "one too many"})
    assert_error(status, body, 429, "rate_limit_error", "at most 3")
    assert (await api.call("POST", m, api.admin_a, {"text": "admin run"}))[0] == 200
    assert [(r, t) for r, _, t in api.sent] == [
        ("run-member-a", "working on it"),
        ("run-member-a", "step 0"),
        ("run-member-a", "step 1"),
        ("run-admin-a", "admin run"),
    ]


async def test_interim_message_validation_and_delivery_failure(api: Api) -> None:
    m = "/spaces/space-a/messages"
    assert_error(*await api.call("POST", m, api.member_a, {}), 400, "invalid_request_error")
    assert_error(
        *await api.call("POST", m, api.member_a, {"text": "   "}), 400, "invalid_request_error"
    )
    assert_error(
        *await api.call("POST", m, api.member_a, {"text": "x" * 4001}),
        400,
        "invalid_request_error",
        "too long",
    )
    assert_error(*await api.call("POST", m, api.member_a, {"text": "explode"}), 502, "api_error")
    assert api.sent == []


# --------------------------------------------------------------------------- roles and mutes


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/spaces/space-a/roles", None),
        ("GET", "/spaces/space-a/roles/slack/U1", None),
        ("PUT", "/spaces/space-a/roles/slack/U1", {"role": "admin"}),
        ("DELETE", "/spaces/space-a/roles/slack/U1", None),
        ("GET", "/spaces/space-a/mutes", None),
        ("GET", "/spaces/space-a/mutes/slack/U1", None),
        ("PUT", "/spaces/space-a/mutes/slack/U1", {}),
        ("DELETE", "/spaces/space-a/mutes/slack/U1", None),
    ],
)
async def test_admin_routes_refuse_members(
    api: Api, method: str, path: str, body: dict[str, Any] | None
) -> None:
    status, answer = await api.call(method, path, api.member_a, body)
    assert_error(status, answer, 403, "permission_error", "admin")
    assert await get_role(api.db, "space-a", "slack", "U1") is None
    assert not await is_muted(api.db, "space-a", "slack", "U1")


async def test_roles_by_admin(api: Api) -> None:
    r = "/spaces/space-a/roles"
    status, body = await api.call("PUT", f"{r}/slack/U1", api.admin_a, {"role": "admin"})
    assert (status, body) == (200, {"platform": "slack", "user_id": "U1", "role": "admin"})
    await api.call("PUT", f"{r}/telegram/42", api.admin_a, {"role": "reviewer"})
    assert await get_role(api.db, "space-a", "slack", "U1") == "admin"
    assert await get_role(api.db, "space-a", "telegram", "42") == "reviewer"
    assert await get_role(api.db, "space-b", "slack", "U1") is None

    status, body = await api.call("GET", r, api.admin_a)
    assert body == {
        "roles": [
            {"platform": "slack", "user_id": "U1", "role": "admin"},
            {"platform": "telegram", "user_id": "42", "role": "reviewer"},
        ]
    }
    assert (await api.call("GET", f"{r}/telegram/42", api.admin_a))[1]["role"] == "reviewer"

    status, body = await api.call("DELETE", f"{r}/slack/U1", api.admin_a)
    assert status == 200 and body["deleted"] is True
    assert await get_role(api.db, "space-a", "slack", "U1") is None
    assert_error(*await api.call("DELETE", f"{r}/slack/U1", api.admin_a), 404, "not_found_error")
    assert_error(*await api.call("GET", f"{r}/slack/U1", api.admin_a), 404, "not_found_error")
    assert_error(
        *await api.call("PUT", f"{r}/slack/U2", api.admin_a, {"role": "Super User"}),
        400,
        "invalid_request_error",
        "bad role name",
    )


async def test_mutes_by_admin(api: Api) -> None:
    mu = "/spaces/space-a/mutes"
    before = datetime.now(UTC)
    status, body = await api.call(
        "PUT", f"{mu}/discord/777", api.admin_a, {"until": "1h", "reason": "spam"}
    )
    assert status == 200, body
    until = datetime.fromisoformat(body["until"])
    assert before + timedelta(minutes=59) < until < before + timedelta(minutes=61)
    assert body["reason"] == "spam"

    status, body = await api.call("PUT", f"{mu}/slack/U9", api.admin_a, {})
    assert (status, body["until"]) == (200, None)

    assert await is_muted(api.db, "space-a", "discord", "777")
    assert await is_muted(api.db, "space-a", "slack", "U9")
    assert not await is_muted(api.db, "space-b", "slack", "U9")
    assert not await is_muted(api.db, "space-a", "discord", "777", now=until + timedelta(1))
    stored = {(m.platform, m.user_id): m for m in await list_mutes(api.db, "space-a")}
    assert stored[("discord", "777")].reason == "spam"

    status, body = await api.call("GET", mu, api.admin_a)
    assert [(m["platform"], m["user_id"]) for m in body["mutes"]] == [
        ("discord", "777"),
        ("slack", "U9"),
    ]
    assert (await api.call("GET", f"{mu}/discord/777", api.admin_a))[1]["reason"] == "spam"

    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    status, body = await api.call("PUT", f"{mu}/slack/U9", api.admin_a, {"until": at.isoformat()})
    assert datetime.fromisoformat(body["until"]) == at

    assert (await api.call("DELETE", f"{mu}/slack/U9", api.admin_a))[0] == 200
    assert not await is_muted(api.db, "space-a", "slack", "U9")
    assert_error(*await api.call("DELETE", f"{mu}/slack/U9", api.admin_a), 404, "not_found_error")
    assert_error(*await api.call("GET", f"{mu}/slack/U9", api.admin_a), 404, "not_found_error")

    for bad, fragment in [
        ({"until": "2001-01-01T00:00:00"}, "in the past"),
        ({"until": "later"}, "cannot read 'later' as a time"),
        ({"reason": "r" * 600}, "too long"),
        ({"for": "1h"}, "unknown field"),
    ]:
        status, body = await api.call("PUT", f"{mu}/slack/U3", api.admin_a, bad)
        assert_error(status, body, 400, "invalid_request_error", fragment)
    assert not await is_muted(api.db, "space-a", "slack", "U3")


async def test_writes_to_a_space_without_a_row_are_404(api: Api) -> None:
    token = api.tokens.mint("run-ghost", "space-ghost", "admin")
    status, body = await api.call("PUT", "/spaces/space-ghost/preferences/k", token, {"value": "v"})
    assert_error(status, body, 404, "not_found_error", "does not exist")
    status, body = await api.call(
        "POST", "/spaces/space-ghost/tasks", token, {"prompt": "p", "every": "1h"}
    )
    assert_error(status, body, 404, "not_found_error", "does not exist")


async def test_a_custom_role_holding_the_admin_permission_may_manage_roles(api: Api) -> None:
    """Checks ask core.permissions, never compare role names: a custom role that holds
    `admin` passes, and one that does not is refused."""
    from mercury.core.permissions import permissions_of

    keeper = api.tokens.mint(
        "run-keeper", "space-a", "keeper", permissions_of("keeper", {"keeper": {"admin"}})
    )
    helper = api.tokens.mint(
        "run-helper", "space-a", "helper", permissions_of("helper", {"helper": {"run"}})
    )
    status, body = await api.call("GET", "/spaces/space-a/roles", keeper)
    assert status == 200, body
    status, body = await api.call("GET", "/spaces/space-a/roles", helper)
    assert_error(status, body, 403, "permission_error", "admin")


async def test_the_executor_gives_a_run_its_custom_roles_permissions(db: Database) -> None:
    """The executor resolves a run's permissions with role_permissions_in: a custom role's
    are the space's own."""
    from mercury.pipeline.standing import role_permissions_in
    from mercury.storage import grant_permission

    await grant_permission(db, "space-a", "keeper", "admin")
    assert "admin" in await role_permissions_in(db, "space-a", "keeper")
    assert await role_permissions_in(db, "space-a", "nobody") == frozenset()
    assert "admin" not in await role_permissions_in(db, "space-a", "member")


async def test_the_space_api_is_mounted_before_the_server_starts(
    tmp_path: Path, db: Database
) -> None:
    """A started server's routes are frozen: mounting then fails loudly, not half-way."""

    async def send(run_id: str, space_id: str, text: str) -> None:
        return None

    server = HostApiServer(
        tmp_path / "api",
        TokenStore(),
        config=Config.model_validate({}),
        secrets=Secrets(),
        meter=UsageMeter(),
    )
    async with server:
        with pytest.raises(RuntimeError, match="before"):
            mount_space_api(server, db, send_interim=send)
        assert SPACE_API not in server.app
