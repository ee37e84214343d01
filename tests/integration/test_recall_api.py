"""Recall through the host API (`GET /spaces/{id}/recall`) and `mercury-ctl recall`.

The endpoint is served by a real RunHost on its per-run unix sockets over a real database
(both kinds: the `db` fixture of test_storage.py); `mercury-ctl` runs as its own process
against the real host API app on 127.0.0.1 standing in for the in-container relay, as in
test_ctl.py. The search itself is tested in test_recall.py.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mercury.api.routes import mount_space_api
from mercury.api.runhost import RunHost
from mercury.api.server import SOCKET_NAME, HostApiServer
from mercury.api.tokens import TokenStore
from mercury.api.usage import UsageMeter
from mercury.config import Config, Secrets
from mercury.storage import Database, MessageRole
from tests.integration.test_recall import T0, say, spaces
from tests.integration.test_storage import db, db_url, postgres_server_url

# fixtures shared with test_storage.py and test_recall.py
__all__ = ["db", "db_url", "postgres_server_url", "spaces"]

# --------------------------------------------------------------------------- host API


@dataclass
class Caller:
    token: str
    socket: Path

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(
                f"http://mercury{path}",
                params=params,
                headers={"Authorization": f"Bearer {self.token}"},
            ) as resp,
        ):
            return resp.status, await resp.json()


@pytest.fixture
async def run_host(spaces: Database) -> AsyncIterator[RunHost]:
    data = tempfile.mkdtemp(prefix="recall", dir="/tmp")  # short: unix socket paths
    host = RunHost(Config.model_validate({"data_dir": data}), Secrets())

    async def send_interim(run_id: str, space_id: str, text_: str) -> None:
        raise AssertionError("recall sends nothing")

    mount_space_api(host.server, spaces, send_interim=send_interim)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()
        shutil.rmtree(data, ignore_errors=True)


async def _caller(
    host: RunHost,
    run_id: str,
    space: str,
    role: str = "member",
    permissions: frozenset[str] | None = None,
) -> Caller:
    access = await host.open_run(run_id, space, role, permissions)
    return Caller(access.token, access.socket_dir / SOCKET_NAME)


async def test_recall_endpoint_answers_the_runs_own_space(
    spaces: Database, run_host: RunHost
) -> None:
    db = spaces
    plan = await say(db, "The offsite is in Lisbon in June", author="Ana", minutes=1)
    await say(db, "Lisbon offsite of space b", space="space-b", minutes=2)
    a = await _caller(run_host, "run-a", "space-a")
    b = await _caller(run_host, "run-b", "space-b")

    status, body = await a.get("/spaces/space-a/recall", q="lisbon offsite", limit="5")
    assert status == 200, body
    assert body == {
        "query": "lisbon offsite",
        "hits": [
            {
                "message_id": plan,
                "created_at": (T0 + timedelta(minutes=1)).isoformat(),
                "author": "Ana",
                "role": "user",
                "snippet": "The «offsite» is in «Lisbon» in June",
                "rank": body["hits"][0]["rank"],
            }
        ],
    }
    assert isinstance(body["hits"][0]["rank"], float)

    # Another space's token: refused before any search; its own space holds its own.
    status, body = await b.get("/spaces/space-a/recall", q="lisbon")
    assert status == 403 and body["error"]["type"] == "permission_error"
    status, body = await b.get("/spaces/space-b/recall", q="lisbon")
    assert status == 200 and [h["snippet"] for h in body["hits"]] == ["«Lisbon» offsite of space b"]
    status, body = await a.get("/spaces/space-a/recall", q="zanzibar")
    assert (status, body["hits"]) == (200, [])


async def test_recall_endpoint_needs_the_run_permission(
    spaces: Database, run_host: RunHost
) -> None:
    reader = await _caller(run_host, "run-r", "space-a", "reader", frozenset({"stop"}))
    status, body = await reader.get("/spaces/space-a/recall", q="lisbon")
    assert status == 403 and "run permission" in body["error"]["message"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "'q' is required"),
        ({"q": "   "}, "'q' is required"),
        ({"q": "x" * 501}, "too long (501 characters, at most 500)"),
        ({"q": '*** "" --'}, "no letters or digits"),
        ({"q": "ok", "limit": "0"}, "'limit' must be a whole number from 1 to 50"),
        ({"q": "ok", "limit": "51"}, "from 1 to 50"),
        ({"q": "ok", "limit": "ten"}, "from 1 to 50, not 'ten'"),
    ],
)
async def test_recall_endpoint_explains_bad_input(
    spaces: Database, run_host: RunHost, params: dict[str, str], fragment: str
) -> None:
    a = await _caller(run_host, "run-a", "space-a")
    status, body = await a.get("/spaces/space-a/recall", **params)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert fragment in body["error"]["message"]


# --------------------------------------------------------------------------- mercury-ctl


async def test_mercury_ctl_recall_end_to_end(tmp_path: Path, spaces: Database) -> None:
    """The real host API app on 127.0.0.1 standing in for the in-container relay."""
    db = spaces
    await say(db, "Ana's birthday is on the 14th of July", author="Ana", minutes=1)
    await say(db, "noted, birthday cake on July 14", role=MessageRole.ASSISTANT, author=None)
    tokens = TokenStore()
    server = HostApiServer(
        tmp_path / "api",
        tokens,
        config=Config.model_validate({}),
        secrets=Secrets(),
        meter=UsageMeter(),
    )

    async def send_interim(run_id: str, space_id: str, text_: str) -> None:
        raise AssertionError("recall sends nothing")

    mount_space_api(server, db, send_interim=send_interim)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    token = tokens.mint("run-1", "space-a", "member")

    async def ctl(*argv: str) -> tuple[int, str, str]:
        env = {
            "MERCURY_API_URL": f"http://{host}:{port}",
            "MERCURY_API_TOKEN": token,
            "MERCURY_SPACE_ID": "space-a",
            "PATH": "/usr/bin:/bin",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mercury_agent.ctl",
            *argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    try:
        code, out, err = await ctl("recall", "birthday July")
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert len(lines) == 2
        assert lines[0].startswith("2026-05-04 09:0") and " UTC · " in lines[0]
        assert {line.split(" · ")[1] for line in lines} == {"Ana", "assistant"}
        assert all("«birthday»" in line and "«July»" in line for line in lines)

        code, out, _ = await ctl("recall", "birthday", "--limit", "1")
        assert (code, len(out.splitlines())) == (0, 1)
        assert await ctl("recall", "zanzibar") == (0, "no match\n", "")
        code, out, err = await ctl("recall", "birthday", "--limit", "99")
        assert (code, out) == (1, "")
        assert "'limit' must be a whole number from 1 to 50" in err and "HTTP 400" in err
    finally:
        await runner.cleanup()
