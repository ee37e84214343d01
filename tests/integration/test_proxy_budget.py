"""Spending caps where the money is spent: the host's model proxy refuses each call.

The real host (`RunHost`: host API server on a run's unix socket, tokens, usage meter) with
a `BudgetBook` on a real SQLite database as its call guard, in front of the fake model
server; the agent's side is the real anthropic/openai SDKs over the run's socket, or raw
HTTP as a hostile agent would send it. Every path a run could take to spend past a cap -
streaming, retrying, another leg of the chain, calls in parallel - is refused once the cap
is reached, and the refused calls never reach the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import httpx2
import openai
import pytest

from mercury.api.runhost import RunHost
from mercury.api.server import SOCKET_NAME
from mercury.config import Config, Secrets
from mercury.core.budget import Scope
from mercury.pipeline.budget import BudgetBook
from mercury.storage import Database, get_or_create_space
from mercury.storage.migrate import upgrade
from tests.fakes import model_server as fm

BASE = "http://mercury"
HELLO = [{"role": "user", "content": "hello"}]
SPACE = "space-a"


class Rig:
    def __init__(self, host: RunHost, book: BudgetBook, db: Database) -> None:
        self.host = host
        self.book = book
        self.db = db
        self._clients: list[httpx2.AsyncClient] = []

    async def run(
        self, run_id: str, user: str | None = "slack:U1", task: int | None = None
    ) -> tuple[str, Path]:
        self.book.begin_run(run_id)
        access = await self.host.open_run(run_id, SPACE, "member", user_key=user, task_id=task)
        return access.token, access.socket_dir / SOCKET_NAME

    def _transport(self, sock: Path) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(sock)))
        self._clients.append(client)
        return client

    def claude(self, token: str, sock: Path) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=f"{BASE}/model/anthropic",
            api_key=token,
            max_retries=0,
            timeout=30,
            http_client=self._transport(sock),
        )

    def gpt(self, token: str, sock: Path) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{BASE}/model/openai/v1",
            api_key=token,
            max_retries=0,
            timeout=30,
            http_client=self._transport(sock),
        )


async def make_rig(tmp_path: Path, fake: fm.FakeModelServer, budgets: dict[str, str]) -> Rig:
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "model": {
                "chain": [
                    {"provider": "anthropic", "model": "claude-test", "base_url": fake.url},
                    {"provider": "openai", "model": "gpt-test", "base_url": fake.url + "/v1"},
                ],
                # One cent per token: a call of 110 tokens costs $1.10.
                "prices": {
                    "claude-test": {"input_per_mtok": 10_000, "output_per_mtok": 10_000},
                    "gpt-test": {"input_per_mtok": 10_000, "output_per_mtok": 10_000},
                },
            },
            "budgets": budgets,
        }
    )
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    db = Database(url)
    await get_or_create_space(db, SPACE)
    host = RunHost(config, Secrets(anthropic_api_key="sk-ant-k", openai_api_key="sk-oai-k"))
    book = BudgetBook(config, db)
    await book.load()
    host.meter.add_hook(book.count)
    host.set_call_guard(book.refuse_call)
    await host.start()
    return Rig(host, book, db)


@pytest.fixture
async def fake() -> AsyncIterator[fm.FakeModelServer]:
    async with fm.FakeModelServer() as server:
        yield server


@pytest.fixture
async def rigs() -> AsyncIterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        for client in rig._clients:
            await client.aclose()
        await rig.host.stop()
        await rig.db.dispose()


async def stream_claude(rig: Rig, token: str, sock: Path) -> str:
    async with rig.claude(token, sock).messages.stream(
        model="claude-test", max_tokens=100, messages=HELLO
    ) as stream:
        return "".join([t async for t in stream.text_stream])


async def test_a_streamed_call_is_counted_and_every_later_path_is_refused(
    tmp_path: Path, fake: fm.FakeModelServer, rigs: list[Rig]
) -> None:
    rig = await make_rig(tmp_path, fake, {"space_day": "$1"})
    rigs.append(rig)
    fake.script([fm.Turn([fm.Text("a long answer")], input_tokens=60, output_tokens=50)])
    token, sock = await rig.run("run-1")
    assert await stream_claude(rig, token, sock) == "a long answer"
    assert len(fake.requests) == 1

    # The same run again (a retry), streaming or not: refused, with the plain reason.
    with pytest.raises(anthropic.APIStatusError) as refused:
        await stream_claude(rig, token, sock)
    assert refused.value.status_code == 402
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "spending_cap_reached"
    assert "this space's daily spending cap ($1.00) is reached" in body["error"]["message"]
    with pytest.raises(anthropic.APIStatusError):
        await rig.claude(token, sock).messages.create(
            model="claude-test", max_tokens=10, messages=HELLO
        )
    # The chain's other leg (fail-over) is refused as well.
    with pytest.raises(openai.APIStatusError) as other_leg:
        await rig.gpt(token, sock).chat.completions.create(
            model="gpt-test", messages=HELLO, stream=True
        )
    assert other_leg.value.status_code == 402
    # A hostile agent calling the proxy directly, many times at once: all refused.
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:

        async def raw() -> int:
            async with http.post(
                f"{BASE}/model/anthropic/v1/messages",
                json={"model": "claude-test", "max_tokens": 10, "messages": HELLO},
                headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            ) as resp:
                return resp.status

        assert await asyncio.gather(*(raw() for _ in range(10))) == [402] * 10
    # None of the refused calls reached the provider.
    assert len(fake.requests) == 1
    # Another run of the same space (a new message) is refused too, and the run that was
    # refused is known to have been stopped by the cap.
    token2, sock2 = await rig.run("run-2")
    with pytest.raises(anthropic.APIStatusError):
        await stream_claude(rig, token2, sock2)
    stop = rig.book.end_run("run-1")
    assert stop is not None and stop.scope is Scope.SPACE_DAY
    assert rig.book.end_run("run-1") is None


async def test_failed_calls_cost_nothing_and_a_retry_within_the_cap_goes_through(
    tmp_path: Path, fake: fm.FakeModelServer, rigs: list[Rig]
) -> None:
    rig = await make_rig(tmp_path, fake, {"space_day": "$1"})
    rigs.append(rig)
    fake.script(
        [
            fm.Error(529),
            fm.Turn([fm.Text("first")], input_tokens=30, output_tokens=20),
            fm.Turn([fm.Text("second")], input_tokens=30, output_tokens=20),
            fm.Turn([fm.Text("never")], input_tokens=30, output_tokens=20),
        ]
    )
    token, sock = await rig.run("run-1")
    with pytest.raises(anthropic.APIStatusError):
        await stream_claude(rig, token, sock)  # overloaded: no usage, nothing counted
    assert await stream_claude(rig, token, sock) == "first"  # $0.50
    assert await stream_claude(rig, token, sock) == "second"  # $1.00: the cap is reached
    with pytest.raises(anthropic.APIStatusError) as refused:
        await stream_claude(rig, token, sock)
    assert refused.value.status_code == 402
    assert len(fake.requests) == 3
    assert fake.remaining() == 1


async def test_a_user_over_their_cap_does_not_stop_another_user(
    tmp_path: Path, fake: fm.FakeModelServer, rigs: list[Rig]
) -> None:
    rig = await make_rig(tmp_path, fake, {"user_day": "100 tokens"})
    rigs.append(rig)
    fake.script(
        [
            fm.Turn([fm.Text("for one")], input_tokens=60, output_tokens=50),
            fm.Turn([fm.Text("for two")], input_tokens=10, output_tokens=10),
        ]
    )
    one, sock1 = await rig.run("run-1", user="telegram:1")
    assert await stream_claude(rig, one, sock1) == "for one"
    with pytest.raises(anthropic.APIStatusError) as refused:
        await stream_claude(rig, one, sock1)
    assert "your daily spending cap in this space (100 tokens)" in str(refused.value.body)
    two, sock2 = await rig.run("run-2", user="telegram:2")
    assert await stream_claude(rig, two, sock2) == "for two"


async def test_a_task_run_stops_at_its_own_cap_and_the_next_run_starts_afresh(
    tmp_path: Path, fake: fm.FakeModelServer, rigs: list[Rig]
) -> None:
    rig = await make_rig(tmp_path, fake, {"task_run": "$0.50"})
    rigs.append(rig)
    fake.script(
        [fm.Turn([fm.Text(f"part {i}")], input_tokens=20, output_tokens=10) for i in (1, 2, 3)]
    )
    token, sock = await rig.run("task-run-1", user=None, task=9)
    assert await stream_claude(rig, token, sock) == "part 1"  # $0.30
    assert await stream_claude(rig, token, sock) == "part 2"  # $0.60
    with pytest.raises(anthropic.APIStatusError) as refused:
        await stream_claude(rig, token, sock)
    assert "this task's spending cap per run ($0.50)" in str(refused.value.body)
    await rig.host.close_run("task-run-1")
    assert rig.book.end_run("task-run-1") is not None
    token, sock = await rig.run("task-run-2", user=None, task=9)
    assert await stream_claude(rig, token, sock) == "part 3"
