"""Exactly-once replies: `mercury run` killed at the worst moment loses and doubles nothing.

The chat platform is the fake Telegram Bot API on 127.0.0.1, run in its own thread so that
it outlives every Mercury process: what it recorded is what the users saw. Mercury is a
real process (real agent containers, the fake model server) and is SIGKILLed from inside
the platform's sendMessage handler, when a reply has reached the platform and Mercury has
not yet heard back - the moment a crash used to make the job run again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.model_server import FakeModelServer
from tests.fakes.telegram_server import Call, FakeTelegram
from tests.integration.mercury_site import Mercury, echo_responder, last_user_text

TOKEN = "123456789:AAHfakeTokenForTests-only_abcdefghijk"
CHATS = 5


class ThreadedTelegram:
    """FakeTelegram on its own loop in a thread, driven from a synchronous test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeTelegram(TOKEN)
        self.call(self.fake.start())

    def call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def push(self, chat_id: int, text: str) -> None:
        async def push() -> None:
            self.fake.push_update(self.fake.message_update(chat_id=chat_id, text=text))

        self.call(push())

    def set_hook(self, hook: Callable[[Call], Awaitable[web.Response | None]] | None) -> None:
        self.fake.on_call = hook

    def replies(self) -> list[str]:
        """Texts the platform accepted from the bot (answers start with "re:")."""
        return [
            str(c.params.get("text", ""))
            for c in list(self.fake.calls)
            if c.method == "sendMessage" and c.status == 200
        ]

    def close(self) -> None:
        self.call(self.fake.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def telegram() -> Iterator[ThreadedTelegram]:
    tg = ThreadedTelegram()
    yield tg
    tg.close()


def telegram_site(site: Any, tg: ThreadedTelegram, **cfg: Any) -> Mercury:
    m: Mercury = site(
        extra={
            "adapters": {
                "telegram": {
                    "enabled": True,
                    "api_base_url": tg.fake.base_url,
                    "file_base_url": tg.fake.file_url,
                    # Replies are what is sent exactly once; a streamed preview is a
                    # transient message (tests/adapters/test_streaming.py), off here.
                    "stream": {"enabled": False},
                }
            }
        },
        **cfg,
    )
    env = m.root / ".env"
    env.write_text(env.read_text() + f"MERCURY_TELEGRAM_BOT_TOKEN={TOKEN}\n")
    return m


def restart_when_killed(m: Mercury) -> bool:
    """If the process died (the hook killed it), start a new one; whether it did."""
    assert m.proc is not None
    if m.proc.poll() is None:
        return False
    assert m.proc.returncode == -signal.SIGKILL, m.logs()[-3000:]
    m.log.close()
    m.start()
    return True


def test_sigkill_as_replies_reach_the_platform_loses_and_doubles_nothing(
    site: Any, fake: FakeModelServer, telegram: ThreadedTelegram
) -> None:
    fake.responder = echo_responder()
    m = telegram_site(site, telegram, max_concurrency=1)
    m.start()
    wanted = [f"m{c}-{i}" for i in range(10) for c in range(CHATS)]  # 50 messages
    kill_at = {3, 12, 24, 37, 46}  # the nth answer the platform receives
    seen = 0
    kills: list[str] = []

    async def kill_on_reply(call: Call) -> web.Response | None:
        nonlocal seen
        text = str(call.params.get("text", ""))
        if call.method != "sendMessage" or not text.startswith("re:"):
            return None
        seen += 1
        if seen in kill_at and m.proc is not None:
            kills.append(text)
            # The platform has the reply; Mercury dies before it hears back.
            os.kill(m.proc.pid, signal.SIGKILL)
        return None

    telegram.set_hook(kill_on_reply)
    for text in wanted:
        telegram.push(100 + int(text[1]), text)

    restarts = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if restart_when_killed(m):
            restarts += 1
        answered = [t for t in telegram.replies() if t.startswith("re:")]
        if len(set(answered)) >= len(wanted):
            break
        time.sleep(0.2)
    time.sleep(3)  # anything sent twice would arrive now
    restart_when_killed(m)

    sent = telegram.replies()
    answers = Counter(t for t in sent if t.startswith("re:"))
    assert restarts == len(kill_at), (restarts, kills)
    lost = [t for t in wanted if answers[f"re: {t}"] == 0]
    doubled = {t: n for t, n in answers.items() if n > 1}
    assert lost == [], f"lost: {lost}\n{m.logs()[-4000:]}"
    assert doubled == {}, f"sent more than once: {doubled}"
    assert set(answers) == {f"re: {t}" for t in wanted}
    assert [t for t in sent if not t.startswith("re:")] == []  # no "please resend" notices
    # Each message ran exactly once: the model saw each prompt once.
    prompts = Counter(last_user_text(r.body).split(":", 1)[-1].strip() for r in fake.requests)
    assert {t: n for t, n in prompts.items() if n != 1} == {}
    assert m.stop() == 0


def test_a_reply_stored_but_not_sent_is_delivered_after_a_restart(
    site: Any, fake: FakeModelServer, telegram: ThreadedTelegram
) -> None:
    fake.responder = echo_responder()
    m = telegram_site(site, telegram)
    m.start()
    refused: list[str] = []

    async def platform_down(call: Call) -> web.Response | None:
        text = str(call.params.get("text", ""))
        if call.method == "sendMessage" and text.startswith("re:"):
            refused.append(text)
            return web.json_response(
                {"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502
            )
        return None

    telegram.set_hook(platform_down)
    telegram.push(301, "hello there")
    deadline = time.monotonic() + 120
    while not refused and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refused, m.logs()[-3000:]

    def statuses() -> list[tuple[str]]:
        with sqlite3.connect(m.data_dir / "mercury.db") as db:
            return db.execute("SELECT status FROM replies").fetchall()

    # The refusal reaches Mercury just after the fake recorded it: wait until the reply is
    # marked pending again (one killed while still `sending` may have gone out, so it is
    # deliberately not sent again: that is another case than this test's).
    while statuses() != [("pending",)] and time.monotonic() < deadline:
        time.sleep(0.05)
    # The answer exists only in the outbox now: kill Mercury while it waits to retry.
    assert m.stop(signal.SIGKILL) == -signal.SIGKILL
    assert statuses() == [("pending",)]
    telegram.set_hook(None)
    m.start()
    deadline = time.monotonic() + 60
    while "re: hello there" not in telegram.replies() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    assert telegram.replies() == ["re: hello there"]
    assert len(fake.requests) == 1  # delivered from the outbox, not run again
    assert m.stop() == 0
