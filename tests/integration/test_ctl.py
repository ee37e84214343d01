"""`mercury-ctl` end to end against the real host API app served on 127.0.0.1.

The app is the HostApiServer's (auth middleware + space routes) over a real migrated SQLite
database, served by a TCPSite that stands in for the in-container relay. The command runs
as a real process (`python -m mercury_agent.ctl`) with the env a run gives it.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from mercury_agent import ctl

from mercury.api.routes import mount_space_api
from mercury.api.server import HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, Secrets
from mercury.storage import (
    Database,
    default_sqlite_url,
    get_or_create_space,
    get_preferences,
    get_role,
    is_muted,
    list_mutes,
    list_tasks,
    upgrade,
)


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Relay:
    url: str
    db: Database
    tokens: TokenStore
    member: str
    admin: str
    sent: list[tuple[str, str, str]] = field(default_factory=list)

    def env(self, token: str, *, space: str | None = "space-a") -> dict[str, str]:
        env = {"MERCURY_API_URL": self.url, "MERCURY_API_TOKEN": token, "PATH": "/usr/bin:/bin"}
        if space is not None:
            env["MERCURY_SPACE_ID"] = space
        return env

    async def run(self, *argv: str, token: str | None = None, **env_kw: str | None) -> Result:
        """mercury-ctl as its own process, as the agent's bash tool would run it."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mercury_agent.ctl",
            *argv,
            env=self.env(token or self.member, **env_kw),  # type: ignore[arg-type]
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    db = Database(url)
    await get_or_create_space(db, "space-a")
    await get_or_create_space(db, "space-b")
    tokens = TokenStore()
    sent: list[tuple[str, str, str]] = []

    async def send_interim(run_id: str, space_id: str, text: str) -> None:
        sent.append((run_id, space_id, text))

    server = HostApiServer(
        tmp_path / "api",
        tokens,
        config=Config.model_validate({}),
        secrets=Secrets(),
        meter=UsageMeter(),
    )
    mount_space_api(server, db, send_interim=send_interim)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Relay(
            url=f"http://{host}:{port}",
            db=db,
            tokens=tokens,
            member=tokens.mint("run-1", "space-a", "member"),
            admin=tokens.mint("run-2", "space-a", "admin"),
            sent=sent,
        )
    finally:
        await runner.cleanup()
        await db.dispose()


async def test_prefs(relay: Relay) -> None:
    r = await relay.run("prefs", "set", "language", "German")
    assert (r.code, r.out.strip(), r.err) == (0, "set language", "")
    assert await get_preferences(relay.db, "space-a") == {"language": "German"}

    r = await relay.run("prefs", "get", "language")
    assert (r.code, r.out) == (0, "German\n")

    await relay.run("prefs", "set", "tz", "Europe/Berlin")
    r = await relay.run("prefs")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["KEY", "VALUE"]
    assert [line.split() for line in lines[1:]] == [["language", "German"], ["tz", "Europe/Berlin"]]

    r = await relay.run("--json", "prefs", "list")
    assert json.loads(r.out) == {"preferences": {"language": "German", "tz": "Europe/Berlin"}}

    r = await relay.run("prefs", "unset", "language")
    assert r.code == 0
    assert await get_preferences(relay.db, "space-a") == {"tz": "Europe/Berlin"}

    r = await relay.run("prefs", "get", "language")
    assert r.code == 1 and r.out == ""
    assert "preference 'language' is not set" in r.err and "404" in r.err


async def test_tasks(relay: Relay) -> None:
    r = await relay.run("tasks", "add", "Check the build", "--every", "1h30m")
    assert r.code == 0, r.err
    assert r.out.startswith("task ") and "every 1h30m" in r.out
    r = await relay.run(
        "tasks", "add", "Weekday report", "--cron", "0 9 * * 1-5", "--silent", "--skip-missed"
    )
    assert r.code == 0, r.err
    [every, cron] = await list_tasks(relay.db, "space-a")
    assert (every.prompt, every.interval_s) == ("Check the build", 5400)
    assert (every.silent, every.catch_up) == (False, "once")
    assert (cron.prompt, cron.cron) == ("Weekday report", "0 9 * * 1-5")
    assert (cron.silent, cron.catch_up) == (True, "skip")

    r = await relay.run("tasks")
    assert r.code == 0
    rows = r.out.splitlines()
    assert rows[0].split() == ["ID", "SCHEDULE", "NEXT", "RUN", "STATE", "LAST", "PROMPT"]
    assert rows[1].startswith(str(every.id)) and "Check the build" in rows[1]
    assert "cron 0 9 * * 1-5" in rows[2]

    r = await relay.run("--json", "tasks", "list")
    assert [t["id"] for t in json.loads(r.out)["tasks"]] == [every.id, cron.id]

    r = await relay.run("tasks", "cancel", str(every.id))
    assert (r.code, r.out.strip()) == (0, f"task {every.id} cancelled")
    assert [t.id for t in await list_tasks(relay.db, "space-a")] == [cron.id]

    # The server's validation message reaches stderr, with exit 1.
    r = await relay.run("tasks", "add", "x", "--cron", "0 9 * *")
    assert r.code == 1 and "cron needs 5 fields" in r.err
    r = await relay.run("tasks", "cancel", str(every.id))
    assert r.code == 1 and f"no task '{every.id}' in this space" in r.err
    # A schedule is required: argparse refuses before any request.
    r = await relay.run("tasks", "add", "x")
    assert r.code == 2 and "one of the arguments" in r.err
    assert [t.id for t in await list_tasks(relay.db, "space-a")] == [cron.id]


async def test_say(relay: Relay) -> None:
    r = await relay.run("say", "Working on it")
    assert r.code == 0, r.err
    assert "sent" in r.out and "9" in r.out
    assert relay.sent == [("run-1", "space-a", "Working on it")]


async def test_roles_and_mutes_need_admin(relay: Relay) -> None:
    r = await relay.run("roles", "set", "slack", "U1", "admin")
    assert r.code == 1 and "needs the admin permission" in r.err
    r = await relay.run("mutes", "add", "slack", "U1")
    assert r.code == 1 and "needs the admin permission" in r.err
    assert await get_role(relay.db, "space-a", "slack", "U1") is None
    assert not await is_muted(relay.db, "space-a", "slack", "U1")

    r = await relay.run("roles", "set", "slack", "U1", "admin", token=relay.admin)
    assert (r.code, r.out.strip()) == (0, "slack/U1 is now admin")
    assert await get_role(relay.db, "space-a", "slack", "U1") == "admin"
    r = await relay.run("roles", token=relay.admin)
    assert r.out.splitlines()[1].split() == ["slack", "U1", "admin"]
    r = await relay.run("roles", "remove", "slack", "U1", token=relay.admin)
    assert r.code == 0 and await get_role(relay.db, "space-a", "slack", "U1") is None

    # A user id with a slash and a space survives the URL quoting.
    user = "team/a b"
    r = await relay.run(
        "mutes", "add", "web", user, "--for", "2h", "--reason", "spam", token=relay.admin
    )
    assert r.code == 0, r.err
    [m] = await list_mutes(relay.db, "space-a")
    assert (m.platform, m.user_id, m.reason) == ("web", user, "spam")
    assert m.until is not None
    r = await relay.run("mutes", token=relay.admin)
    assert "team/a b" in r.out and "spam" in r.out
    r = await relay.run("mutes", "remove", "web", user, token=relay.admin)
    assert r.code == 0 and await list_mutes(relay.db, "space-a") == []


async def test_space_from_whoami_and_other_space(relay: Relay) -> None:
    # Without MERCURY_SPACE_ID the space comes from the token (/v1/whoami).
    r = await relay.run("prefs", "set", "k", "v", space=None)
    assert r.code == 0, r.err
    assert await get_preferences(relay.db, "space-a") == {"k": "v"}
    # A wrong MERCURY_SPACE_ID cannot reach another space.
    r = await relay.run("prefs", "set", "k", "v", space="space-b")
    assert r.code == 1 and "not valid for another space" in r.err
    assert await get_preferences(relay.db, "space-b") == {}


async def test_errors_without_server_or_env(relay: Relay) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(ctl.main, ["prefs"], env={}, stdout=out, stderr=err)
    assert code == 1 and "MERCURY_API_URL" in err.getvalue() and out.getvalue() == ""

    env = relay.env(relay.member) | {"MERCURY_API_URL": "http://127.0.0.1:9"}
    code = await asyncio.to_thread(ctl.main, ["prefs"], env=env, stdout=out, stderr=err)
    assert code == 1 and "cannot reach the host API" in err.getvalue()

    env = relay.env("revoked-token")
    code = await asyncio.to_thread(ctl.main, ["tasks"], env=env, stdout=out, stderr=err)
    assert code == 1 and "unknown or expired run token" in err.getvalue()
    assert out.getvalue() == ""


async def test_main_in_process(relay: Relay) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = relay.env(relay.member)
    code = await asyncio.to_thread(
        ctl.main, ["tasks", "add", "Ping", "--at", "30m"], env=env, stdout=out, stderr=err
    )
    assert code == 0, err.getvalue()
    assert "scheduled: at " in out.getvalue()
    [task] = await list_tasks(relay.db, "space-a")
    assert task.run_at is not None and task.next_run_at == task.run_at
