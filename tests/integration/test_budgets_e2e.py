"""Every cap kind stops spending at its limit, end to end on the Docker engine.

Real runs: the agent image in real containers, its model calls streamed through the host's
model proxy to the fake model server, the reply posted on the fake platform. Prices are one
cent per token, so a call of 110 tokens costs $1.10.

- space_day through a real `mercury run` process (web chat), with a retried call and a
  second leg in the chain: the run is stopped at the cap without failing over;
- user_day in a Telegram group (two people), with the admins' 80% heads-up once;
- instance_day across two spaces, kept across a restart; space_month;
- task_run: a scheduled task's run stopped at its per-run cap.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mercury.app import App
from mercury.config import load_config
from mercury.storage import repo, utcnow
from tests.adapters.test_conformance import TelegramDriver
from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn
from tests.integration.mercury_site import Mercury, free_port

CENT_A_TOKEN = {"input_per_mtok": 10_000, "output_per_mtok": 10_000}
DM = TelegramDriver.USER_CHAT
GROUP = TelegramDriver.GROUP_CHAT


def runs_of(data_dir: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(data_dir / "mercury.db") as conn:
        return list(conn.execute("SELECT reason, error FROM runs ORDER BY id"))


def test_a_space_stops_at_its_daily_cap_through_mercury_run(
    site: Callable[..., Mercury], fake: FakeModelServer
) -> None:
    chain = [
        {"provider": "anthropic", "model": "claude-test", "base_url": fake.url},
        {"provider": "openai", "model": "gpt-test", "base_url": fake.url + "/v1"},
    ]
    m = site(
        extra={
            "model": {
                "chain": chain,
                "retries_per_leg": 1,
                "prices": {"claude-test": CENT_A_TOKEN, "gpt-test": CENT_A_TOKEN},
            },
            "budgets": {"space_day": "$1"},
        }
    )
    fake.script(
        [
            Error(500),  # retried on the same leg: costs nothing
            Turn(
                [ToolCall("bash", {"command": "echo working"})], input_tokens=60, output_tokens=50
            ),
            # Left for the next run that may spend: another space's.
            Turn([Text("fine here")], input_tokens=10, output_tokens=10),
        ]
    )
    m.start()
    try:
        m.post("team", "do a big job")
        reply, warning = m.wait_replies("team", 2)
        assert "this space's daily spending cap ($1.00) is reached" in reply["text"]
        assert warning["text"].startswith(
            "Heads-up for admins: this space's daily spending cap ($1.00) is used up ($1.10)."
        )
        assert "It resets at 00:00 UTC" in reply["text"]
        assert "An admin of this space can raise it with /budget." in reply["text"]
        # The retry and the tool call reached the model; the call after the tool was
        # refused by the host, and the agent did not try the chain's other leg.
        paths = [r.path for r in fake.requests]
        assert len(paths) == 2 and all("/v1/messages" in p for p in paths), paths
        assert fake.remaining() == 1
        assert runs_of(m.data_dir)[0][0] == "budget"

        # The next message is refused before any container starts.
        m.post("team", "and another one")
        replies = m.wait_replies("team", 3)
        assert "this space's daily spending cap ($1.00) is reached" in replies[2]["text"]
        assert len(fake.requests) == 2
        assert len(runs_of(m.data_dir)) == 1
        # Another space has its own cap.
        m.post("other", "hello")
        assert m.wait_replies("other", 1)[0]["text"] == "fine here"
    finally:
        assert m.stop() == 0


class TelegramSite:
    """Mercury (the App, in this process) on the fake Telegram, with a fake model."""

    def __init__(self, tmp_path: Path, image: str, fake: FakeModelServer) -> None:
        self.tmp_path = tmp_path
        self.image = image
        self.fake = fake
        self.driver = TelegramDriver()
        self.app: App | None = None
        self.port = free_port()

    async def start(
        self,
        budgets: dict[str, Any],
        scheduler_tick: float = 30,
        extra: dict[str, Any] | None = None,
    ) -> App:
        """Start the App with `budgets`; `extra`: more top-level config sections."""
        if self.app is None and not hasattr(self.driver, "fake"):
            await self.driver.start()
        adapters = {"web": {"enabled": False}, **self.driver.config()}
        adapters["telegram"]["stream"] = {"enabled": False}
        cfg = {
            "instance": f"b{abs(hash(self.tmp_path)) % 10**10}",
            "data_dir": str(self.tmp_path / "data"),
            "server": {"host": "127.0.0.1", "port": self.port},
            "container": {
                "image": self.image,
                "memory": "512m",
                "timeout": 90,
                "warm": {"enabled": False},
            },
            "model": {
                "chain": [
                    {"provider": "anthropic", "model": "claude-test", "base_url": self.fake.url}
                ],
                "retries_per_leg": 0,
                "prices": {"claude-test": CENT_A_TOKEN},
            },
            "adapters": adapters,
            "dashboard": {"enabled": False},
            "rate_limits": {"burst": 100, "burst_window": 60},
            "scheduler": {"tick": scheduler_tick},
            "budgets": budgets,
            **(extra or {}),
        }
        path = self.tmp_path / "mercury.yaml"
        path.write_text(json.dumps(cfg))
        env = {"ANTHROPIC_API_KEY": "sk-ant-budget-0000", **self.driver.env()}
        self.app = App(load_config(path, env=env))
        await self.app.start()
        return self.app

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    async def say(self, text: str, *, chat: int = DM, user: int = 501, name: str = "Ada") -> None:
        fake = self.driver.fake
        if chat == DM:
            fake.push_update(fake.message_update(chat_id=DM, text=text, user_id=user))
            return
        handle = f"@{self.driver.ts.BOT_USERNAME}"
        entity = {"type": "mention", "offset": 0, "length": len(handle)}
        fake.push_update(
            fake.message_update(
                chat_id=chat,
                text=f"{handle} {text}",
                entities=[entity],
                user_id=user,
                first_name=name,
            )
        )

    async def posted(self) -> str:
        return (await self.driver.outbound(120)).text


@pytest.fixture
async def tg(tmp_path: Path, agent_image: str) -> AsyncIterator[TelegramSite]:
    async with FakeModelServer() as fake:
        s = TelegramSite(tmp_path, agent_image, fake)
        try:
            yield s
        finally:
            await s.stop()
            if hasattr(s.driver, "fake"):
                await s.driver.close()


async def test_one_person_over_their_daily_cap_does_not_stop_the_others(
    tg: TelegramSite,
) -> None:
    await tg.start({"user_day": "$1"})
    tg.fake.script(
        [
            Turn([Text("first answer")], input_tokens=50, output_tokens=35),  # $0.85
            Turn([Text("second answer")], input_tokens=10, output_tokens=10),  # $1.05
            Turn([Text("for Bob")], input_tokens=10, output_tokens=10),
        ]
    )
    await tg.say("one", chat=GROUP, user=1, name="Ada")
    assert await tg.posted() == "first answer"
    warning = await tg.posted()
    assert warning.startswith("Heads-up for admins: 85% of the daily spending cap of Ada")
    await tg.say("two", chat=GROUP, user=1, name="Ada")
    assert await tg.posted() == "second answer"
    await tg.say("three", chat=GROUP, user=1, name="Ada")
    refused = await tg.posted()
    assert "your daily spending cap in this space ($1.00) is reached" in refused
    assert len(tg.fake.requests) == 2
    await tg.say("hi", chat=GROUP, user=2, name="Bob")
    assert await tg.posted() == "for Bob"
    # The heads-up came once, though Ada's spend stayed past 80%.
    texts = [c.params.get("text", "") for c in tg.driver.fake.calls_to("sendMessage")]
    assert sum("Heads-up" in t for t in texts) == 1


async def test_the_instance_cap_stops_every_space_and_survives_a_restart(
    tg: TelegramSite,
) -> None:
    await tg.start({"instance_day": "$1"})
    tg.fake.script([Turn([Text("expensive")], input_tokens=60, output_tokens=50)])
    await tg.say("hello")
    assert await tg.posted() == "expensive"
    assert (await tg.posted()).startswith("Heads-up for admins: Mercury's daily spending cap")
    await tg.say("and here", chat=GROUP, user=3)
    assert "Mercury's daily spending cap for all spaces ($1.00) is reached" in await tg.posted()

    await tg.stop()
    await tg.start({"instance_day": "$1"})
    await tg.say("after the restart")
    text = await tg.posted()
    assert "The operator can raise it (budgets.instance_day in mercury.yaml)." in text
    assert len(tg.fake.requests) == 1


async def test_a_space_stops_at_its_monthly_cap(tg: TelegramSite) -> None:
    await tg.start({"space_month": "150 tokens"})
    tg.fake.script(
        [
            Turn([ToolCall("bash", {"command": "echo a"})], input_tokens=60, output_tokens=40),
            Turn([ToolCall("bash", {"command": "echo b"})], input_tokens=60, output_tokens=40),
            Turn([Text("never")]),
        ]
    )
    await tg.say("work")
    text = await tg.posted()
    assert "this space's monthly spending cap (150 tokens) is reached" in text
    assert "It resets at 20" in text  # the 1st of next month, with its date
    assert len(tg.fake.requests) == 2
    assert tg.fake.remaining() == 1


async def test_a_task_run_stops_at_its_per_run_cap(tg: TelegramSite) -> None:
    app = await tg.start({"task_run": "$0.50"}, scheduler_tick=0.5)
    tg.fake.script([Turn([Text("hello back")], input_tokens=5, output_tokens=5)])
    await tg.say("hello")  # links the chat to its space, so the task has where to answer
    assert await tg.posted() == "hello back"
    space = await repo.space_for_conversation(app.db, "telegram", str(DM))
    assert space is not None
    tg.fake.script(
        [
            Turn([ToolCall("bash", {"command": "echo 1"})], input_tokens=30, output_tokens=30),
            Turn([Text("never")]),
        ]
    )
    await repo.add_task(
        app.db, space, "daily digest", run_at=utcnow() + timedelta(seconds=1), created_by="operator"
    )
    text = await tg.posted()
    assert "this task's spending cap per run ($0.50) is reached" in text
    assert "It applies to each run of the task." in text
    assert len(tg.fake.requests) == 2
    reasons = [r.reason.value for r in await repo.list_runs(app.db, space_id=space)]
    assert "budget" in reasons
    await asyncio.sleep(0)  # nothing else is due
