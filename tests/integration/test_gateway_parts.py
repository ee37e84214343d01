"""The gateway's and a worker's halves of scale-out, on a real database and platform fake.

- What a worker says goes through the database (`RelayAdapter` -> notices) and a job's
  answer through the reply outbox; the gateway's delivery loop sends both through the real
  Telegram adapter to the fake Bot API on 127.0.0.1, once each, in order per chat.
- A gateway restarted mid-send does not send again what it was sending, and sends what
  was still pending.
- /stop heard by the gateway reaches the worker holding the job (`RemoteRuns.abort` marks
  it, `AbortWatch` of that worker finds it, once), and the gateway's "running now" lists
  every worker's running jobs.

Both databases; the whole thing with real processes and engines is test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mercury.adapters.registry import build_adapters
from mercury.config import Config, load_config
from mercury.core.messages import ConversationRef, Reply
from mercury.pipeline.abort_watch import AbortWatch
from mercury.pipeline.delivery import UNCONFIRMED, GatewayDelivery
from mercury.pipeline.outbox import ReplyOutbox, reply_payload
from mercury.pipeline.relay import RelayAdapter
from mercury.pipeline.remote_runs import RemoteRuns
from mercury.storage import Database, JobStatus, notices, replies, repo, upgrade, utcnow
from tests.fakes.sink import RecordingSink
from tests.fakes.telegram_server import FakeTelegram
from tests.integration.test_storage import db_url, postgres_server_url

__all__ = ["db_url", "postgres_server_url"]  # fixtures, imported for pytest

TOKEN = "123456789:AAHfakeTokenForGatewayTests_abcdefghij"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade(db_url)
    database = Database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram(TOKEN)
    await fake.start()
    yield fake
    await fake.close()


def config_for(tmp_path: Path, fake: FakeTelegram) -> Config:
    path = tmp_path / "mercury.yaml"
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "adapters": {
            "web": {"enabled": False},
            "telegram": {
                "enabled": True,
                "api_base_url": fake.base_url,
                "file_base_url": fake.file_url,
            },
        },
    }
    path.write_text(json.dumps(cfg))
    return load_config(path, env={"MERCURY_TELEGRAM_BOT_TOKEN": TOKEN}).config


@pytest.fixture
async def adapter(tmp_path: Path, telegram: FakeTelegram) -> AsyncIterator[Any]:
    loaded = load_config(_write(tmp_path, telegram), env={"MERCURY_TELEGRAM_BOT_TOKEN": TOKEN})
    built = build_adapters(loaded.config, loaded.secrets)["telegram"]
    await built.start(RecordingSink())
    yield built
    await built.stop()


def _write(tmp_path: Path, fake: FakeTelegram) -> Path:
    config_for(tmp_path, fake)
    return tmp_path / "mercury.yaml"


def texts_sent(fake: FakeTelegram) -> list[tuple[int, str]]:
    return [
        (int(c.params["chat_id"]), str(c.params.get("text", "")))
        for c in fake.calls
        if c.method == "sendMessage" and c.status == 200
    ]


async def stored_reply(db: Database, space: str, chat: int, text: str) -> Any:
    """A job of `space` whose answer a worker stored and finished (not sent)."""
    await repo.get_or_create_space(db, space)
    job = await repo.enqueue_job(db, space, payload={})
    reply = await replies.add_reply(
        db,
        job_id=job.id,
        space_id=space,
        job_status=JobStatus.DONE,
        payload=reply_payload(ConversationRef("telegram", str(chat)), text, [], None),
    )
    await repo.finish_job(db, job.id, JobStatus.DONE)
    return reply


async def until(cond: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_what_workers_stored_reaches_each_chat_once_in_order(
    db: Database, adapter: Any, telegram: FakeTelegram, tmp_path: Path
) -> None:
    relay = RelayAdapter("telegram", db)  # a worker's "adapter"
    expected: dict[int, list[str]] = {}
    for i in range(4):
        for chat in (11, 12, 13):
            text = f"answer {i} in {chat}"
            expected.setdefault(chat, []).append(text)
            await stored_reply(db, f"space-{chat}", chat, text)
            if i == 1:  # an interim message between two answers, through the relay
                note = f"interim in {chat}"
                expected[chat].append(note)
                await relay.send(Reply(ConversationRef("telegram", str(chat)), note))
    outbox = ReplyOutbox(db, {"telegram": adapter}, tmp_path / "data")
    delivery = GatewayDelivery(db, outbox, poll=0.05)
    delivery.start()
    try:
        await until(lambda: len(texts_sent(telegram)) >= 15)
        await asyncio.sleep(0.5)  # anything sent twice would arrive now
    finally:
        await delivery.stop()
    per_chat: dict[int, list[str]] = {}
    for chat, text in texts_sent(telegram):
        per_chat.setdefault(chat, []).append(text)
    assert per_chat == expected
    assert {r.status.value for r in await replies.unfinished_replies(db)} == set()
    assert await notices.unfinished_notices(db) == []
    # A second gateway's look finds nothing left to send.
    again = GatewayDelivery(db, outbox, poll=0.05)
    assert await again.round() == 0


async def test_a_restarted_gateway_sends_what_was_pending_and_not_what_it_was_sending(
    db: Database, adapter: Any, telegram: FakeTelegram, tmp_path: Path
) -> None:
    was_sending = await stored_reply(db, "space-a", 21, "maybe out already")
    pending = await stored_reply(db, "space-a", 21, "stored, not sent")
    notice = await notices.add_notice(
        db,
        space_id=None,
        payload=reply_payload(ConversationRef("telegram", "21"), "a notice", [], None),
    )
    # The gateway died inside the platform call for the first one.
    assert await replies.mark_sending(db, was_sending.id)
    outbox = ReplyOutbox(db, {"telegram": adapter}, tmp_path / "data")
    delivery = GatewayDelivery(db, outbox, poll=0.05)
    delivery.start()
    try:
        await until(lambda: len(texts_sent(telegram)) >= 2)
        await asyncio.sleep(0.5)
    finally:
        await delivery.stop()
    assert texts_sent(telegram) == [(21, "stored, not sent"), (21, "a notice")]
    first = await replies.reply_for_job(db, was_sending.job_id)
    assert first is not None and first.status.value == "sent" and first.error == UNCONFIRMED
    second = await replies.reply_for_job(db, pending.job_id)
    assert second is not None and second.status.value == "sent" and second.attempts == 1
    assert notice.id not in {n.id for n in await notices.unfinished_notices(db)}


async def test_stop_heard_by_the_gateway_stops_the_run_on_the_worker_holding_it(
    db: Database, tmp_path: Path, telegram: FakeTelegram
) -> None:
    config = config_for(tmp_path, telegram)
    for space in ("busy", "other"):
        await repo.get_or_create_space(db, space)
        await repo.enqueue_job(db, space, payload={})
    now = utcnow()
    (a,) = await repo.claim_next_jobs(
        db, owner="mercury-worker-a", max_total=1, busy_spaces=(), now=now,
        lease=timedelta(seconds=60),
    )  # fmt: skip
    (b,) = await repo.claim_next_jobs(
        db, owner="mercury-worker-b", max_total=1, busy_spaces=(), now=now,
        lease=timedelta(seconds=60),
    )  # fmt: skip
    gateway = RemoteRuns(config, db)
    await gateway.read()
    running = {r.space_id: r for r in gateway.active_runs()}
    assert set(running) == {a.space_id, b.space_id} == gateway.active_spaces()
    assert "mercury-worker-a" in running[a.space_id].container
    assert not running[a.space_id].stopping

    stopped: dict[str, list[str]] = {"mercury-worker-a": [], "mercury-worker-b": []}

    def watch(owner: str) -> AbortWatch:
        async def abort(space_id: str) -> bool:
            stopped[owner].append(space_id)
            return True

        return AbortWatch(db, owner, abort, poll=0.05)

    watches = [watch("mercury-worker-a"), watch("mercury-worker-b")]
    assert [await w.check() for w in watches] == [0, 0]  # nobody asked yet

    assert await gateway.abort(a.space_id) is True
    assert running_stopping(gateway, a.space_id)
    assert [await w.check() for w in watches] == [1, 0]
    assert [await w.check() for w in watches] == [0, 0]  # asked once, stopped once
    assert stopped == {"mercury-worker-a": [a.space_id], "mercury-worker-b": []}
    # A space with nothing running: nothing to ask.
    await repo.get_or_create_space(db, "idle")
    assert await gateway.abort("idle") is False

    # Requeued and claimed again (say, after the lease ran out): it starts unmarked.
    await repo.requeue_job(db, a.id, owner="mercury-worker-a")
    (again,) = await repo.claim_next_jobs(
        db, owner="mercury-worker-b", max_total=1, busy_spaces=(), now=utcnow(),
        lease=timedelta(seconds=60),
    )  # fmt: skip
    assert again.id == a.id
    assert await watches[1].check() == 0


def running_stopping(gateway: RemoteRuns, space_id: str) -> bool:
    return any(r.stopping for r in gateway.active_runs() if r.space_id == space_id)
