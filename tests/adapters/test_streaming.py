"""Streamed replies and warm containers on all four platforms, end to end.

As in the conformance suite: Mercury runs in-process (`App`, what `mercury run` runs: the
real pipeline, queue and outbox), each adapter on its real client library against its fake
platform server (the web chat over its own HTTP API and event stream), every run the real
agent image on the real Docker engine, and the fake model server, paced like a real model
(first token after 300 ms, then about 15 tokens a second), behind the host API.

Proven per platform, with the shipped defaults (streaming on, warm containers on):
- the answer shows while the model writes it: a preview message edited in place before
  the model's last token, edits paced to the platform's interval, then the reply (the
  agent's result.json) and the preview withdrawn;
- a 429 on an edit is honoured and the reply still arrives whole;
- a run that fails mid-stream leaves its failure notice, not a half-written answer;
- the space's second message is handed to a warm container, which never served another
  message: a file the first run left in /tmp is not there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mercury.app import App
from mercury.config import load_config
from mercury.sandbox.hardening import LABEL_INSTANCE
from tests.adapters.test_conformance import DRIVERS, Out, free_port
from tests.fakes.model_server import Error, FakeModelServer, Text, ToolCall, Turn

pytestmark = pytest.mark.docker

PASSWORD = "streaming-test-password-42"
WORDS = [f"w{i:02d}" for i in range(45)]
ANSWER = " ".join(WORDS)
PACED = {"first_token_delay": 0.3, "tokens_per_second": 15.0}


@dataclass
class Change:
    """An edit or a deletion the platform applied, with its monotonic time."""

    message_id: str
    text: str
    at: float


class WebDriver:
    """The web chat, spoken to over its HTTP API and event stream, as a browser does."""

    name = "web"
    threads = False
    limit = 100_000

    async def start(self) -> None:
        self.port = free_port()
        self.posts: asyncio.Queue[Out] = asyncio.Queue()
        self.edits: list[Change] = []
        self.deletes: list[Change] = []
        self.applied: dict[tuple[str, str], float] = {}  # (message id, text) -> when
        self.http: aiohttp.ClientSession | None = None
        self.reader: asyncio.Task[None] | None = None

    async def attach(self, app: Any = None) -> None:
        """Open the event stream; with `app`, also note when its web adapter applied each
        edit (what pacing governs). The stream's own arrival times are the fallback: they
        share the App's event loop, so a busy moment can squeeze two of them together."""
        if app is not None:
            logs = app.adapters["web"].logs
            apply = logs.edit

            def edit(space: str, message_id: str, text: str) -> None:
                self.applied.setdefault((message_id, text), time.monotonic())
                apply(space, message_id, text)

            logs.edit = edit
        self.http = aiohttp.ClientSession(
            f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {PASSWORD}"}
        )
        ready = asyncio.Event()
        self.reader = asyncio.create_task(self._read(ready))
        await asyncio.wait_for(ready.wait(), 30)

    async def _read(self, ready: asyncio.Event) -> None:
        assert self.http is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        stream = self.http.get("/api/chat/stream", params={"space": "main"}, timeout=timeout)
        async with stream as r:
            assert r.status == 200
            ready.set()
            kind, data = "message", ""
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    self._event(kind, json.loads(data))
                    kind, data = "message", ""

    def _event(self, kind: str, entry: dict[str, Any]) -> None:
        now = time.monotonic()
        if kind == "message" and entry.get("role") == "assistant":
            self.posts.put_nowait(Out("main", None, str(entry.get("text", ""))))
            self.last_post_id = str(entry["id"])
        elif kind == "edit" and entry.get("role") == "assistant":
            key = (str(entry["id"]), str(entry.get("text", "")))
            self.edits.append(Change(*key, self.applied.get(key, now)))
        elif kind == "delete":
            self.deletes.append(Change(str(entry["id"]), "", now))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.http is not None:
            await self.http.close()

    def config(self) -> dict[str, Any]:
        return {"web": {"enabled": True}}

    def env(self) -> dict[str, str]:
        return {"MERCURY_DASHBOARD_PASSWORD": PASSWORD}

    async def dm(self, text: str) -> str:
        assert self.http is not None
        async with self.http.post("/api/chat/messages", json={"space": "main", "text": text}) as r:
            assert r.status in (200, 201, 202), await r.text()
            return str((await r.json())["id"])

    async def outbound(self, timeout: float) -> Out:
        return await asyncio.wait_for(self.posts.get(), timeout)

    def fail_next_edit(self) -> bool:
        return False  # the web chat has no rate limit to refuse with


def changes(driver: Any) -> tuple[list[Change], list[Change]]:
    """The edits and deletions the platform applied, in one shape for all four."""
    if isinstance(driver, WebDriver):
        return driver.edits, driver.deletes
    fake = driver.fake
    return (
        [Change(str(e.message_id), e.text, e.at) for e in fake.edits],
        [Change(str(d.message_id), "", d.at) for d in fake.deletes],
    )


def refuse_next_edit(driver: Any) -> str | None:
    """Make the platform answer the preview's next edit with a 429; the method's name."""
    name = driver.name
    if name == "telegram":
        driver.fake.fail_next("editMessageText", 429, retry_after=1)
        return "editMessageText"
    if name == "slack":
        driver.fake.fail_next("chat.update", 429)
        return "chat.update"
    if name == "discord":
        driver.fake.fail_next("edit_message", 429, retry_after=0.5)
        return "edit_message"
    return None


@dataclass
class Rig:
    driver: Any
    model: FakeModelServer
    app: App
    interval: float

    async def reply(self, timeout: float = 120) -> Out:
        return await self.driver.outbound(timeout)

    async def posts_until(self, text: str, timeout: float = 120) -> list[Out]:
        """Every message the bot posts, up to the first whose text contains `text`."""
        got: list[Out] = []
        while True:
            out = await self.driver.outbound(timeout)
            got.append(out)
            if text in out.text:
                return got

    async def withdrawn(self, count: int, timeout: float = 30) -> list[Change]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, deletes = changes(self.driver)
            if len(deletes) >= count:
                return deletes
            await asyncio.sleep(0.05)
        raise AssertionError(f"wanted {count} preview message(s) withdrawn, got {deletes}")


@pytest.fixture(params=[*sorted(DRIVERS), "web"])
async def rig(
    request: pytest.FixtureRequest, tmp_path: Path, agent_image: str
) -> AsyncIterator[Rig]:
    driver = WebDriver() if request.param == "web" else DRIVERS[request.param]()
    await driver.start()
    async with FakeModelServer(**PACED) as fake:
        instance = f"s{uuid.uuid4().hex[:10]}"
        port = driver.port if isinstance(driver, WebDriver) else free_port()
        adapters = {"web": {"enabled": False}, **driver.config()}
        cfg = {
            "instance": instance,
            "data_dir": str(tmp_path / "data"),
            "server": {"host": "127.0.0.1", "port": port},
            "container": {"image": agent_image, "memory": "512m", "timeout": 90},
            "model": {
                "chain": [{"provider": "anthropic", "model": "claude-test", "base_url": fake.url}],
                "retries_per_leg": 0,
            },
            "adapters": adapters,
            "dashboard": {"enabled": False},
            "rate_limits": {"burst": 100, "burst_window": 60},
        }
        path = tmp_path / "mercury.yaml"
        path.write_text(json.dumps(cfg))
        env = {"ANTHROPIC_API_KEY": "sk-ant-streaming-0000", **driver.env()}
        app = App(load_config(path, env=env))
        await app.start()
        if isinstance(driver, WebDriver):
            await driver.attach(app)
        interval = getattr(app.config.adapters, request.param).stream.interval
        try:
            yield Rig(driver, fake, app, interval)
        finally:
            await app.stop()
            await driver.close()
            import docker

            client = docker.from_env()
            left = client.containers.list(
                ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
            )
            client.close()
            assert left == [], "containers left behind"


async def test_the_answer_grows_in_place_and_the_reply_replaces_it(rig: Rig) -> None:
    rig.model.script([Turn([Text(ANSWER)])])
    await rig.driver.dm("tell me the words")
    posts = await rig.posts_until(WORDS[-1])
    # The preview came first, then the reply: every word, in order.
    assert len(posts) >= 2, posts
    assert posts[-1].text.split() == WORDS
    # The preview grew in place while the model was still writing.
    edits, _ = changes(rig.driver)
    assert edits, "the preview was never edited"
    (call,) = rig.model.requests
    assert call.token_times, "the fake model did not stream"
    assert min(e.at for e in edits) < call.token_times[-1]
    # Every preview text is a prefix of the answer (shown as written, never garbled).
    for e in edits:
        shown = e.text.replace("_running", "").split()
        assert shown == WORDS[: len(shown)], e.text
    # Paced: one message is not edited more often than the platform's interval allows.
    by_message: dict[str, list[float]] = {}
    for e in edits:
        by_message.setdefault(e.message_id, []).append(e.at)
    for times in by_message.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= rig.interval * 0.9 for g in gaps), (gaps, rig.interval)
    # Once the reply is out the preview is withdrawn: nothing half-written stays.
    deletes = await rig.withdrawn(len(posts) - 1)
    assert {e.message_id for e in edits} <= {d.message_id for d in deletes}


async def test_a_rate_limited_edit_is_waited_out_and_the_reply_is_whole(rig: Rig) -> None:
    method = refuse_next_edit(rig.driver)
    if method is None:
        assert rig.driver.name == "web"  # the only platform without a rate limit
    long_words = [f"x{i:03d}" for i in range(80)]
    rig.model.script([Turn([Text(" ".join(long_words))], tokens_per_second=25.0)])
    await rig.driver.dm("many words please")
    posts = await rig.posts_until(long_words[-1])
    assert posts[-1].text.split() == long_words
    if method is not None:
        refused = [c for c in rig.driver.fake.calls if _method(c) == method]
        assert refused, f"the preview never called {method}"
    edits, _ = changes(rig.driver)
    assert edits, "the preview stopped for good after a 429"
    await rig.withdrawn(len(posts) - 1)


def _method(call: Any) -> str:
    name = getattr(call, "method", "")
    path = getattr(call, "path", "")
    if name == "PATCH" and "/messages/" in path:
        return "edit_message"
    return str(name)


async def test_a_run_failing_mid_stream_leaves_its_notice_not_a_half_answer(rig: Rig) -> None:
    rig.model.script(
        [
            Turn([Text(ANSWER)], tokens_per_second=10.0, drop_after=25),
            Error(500),
            Error(500),
        ]
    )
    await rig.driver.dm("this will break")
    posts = await rig.posts_until("Sorry")
    assert len(posts) >= 2, posts  # a preview with part of the answer, then the notice
    assert WORDS[0] in posts[0].text
    assert WORDS[-1] not in posts[-1].text
    deletes = await rig.withdrawn(len(posts) - 1)
    edits, _ = changes(rig.driver)
    assert {e.message_id for e in edits} <= {d.message_id for d in deletes}


async def test_the_next_message_runs_in_a_fresh_warm_container(rig: Rig) -> None:
    rig.model.script(
        [
            Turn([ToolCall("bash", {"command": "echo left-by-run-1 > /tmp/marker"})]),
            Turn([Text("first done")]),
        ]
    )
    await rig.driver.dm("first")
    await rig.posts_until("first done")
    runner = rig.app.runner
    assert runner is not None
    # The space is active: its next container was made while the first run went.
    deadline = time.monotonic() + 60
    while runner.waiting_containers() < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert runner.waiting_containers() == 1
    rig.model.script(
        [
            Turn([ToolCall("bash", {"command": "cat /tmp/marker 2>&1 || echo no-marker"})]),
            Turn([Text("second done")]),
        ]
    )
    await rig.driver.dm("second")
    await rig.posts_until("second done")
    assert runner.warm.handovers == 1
    # The file the first run left in its /tmp is not in the second run's container.
    last = json.dumps(rig.model.requests[-1].body)
    assert "No such file" in last and "no-marker" in last
    assert "left-by-run-1" not in last
