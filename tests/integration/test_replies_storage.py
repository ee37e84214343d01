"""The reply outbox on a real SQLite database: each step and what it does to the job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mercury.storage import Database, JobStatus, ReplyStatus, replies, repo
from mercury.storage.migrate import upgrade


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    database = Database(url)
    await repo.get_or_create_space(database, "s1")
    try:
        yield database
    finally:
        await database.dispose()


async def running_job(db: Database) -> int:
    job = await repo.enqueue_job(db, "s1", payload={"prompt": "x"})
    [claimed] = await repo.claim_next_jobs(db, owner="dead-process", max_total=1)
    assert claimed.id == job.id
    return job.id


async def test_a_sent_reply_finishes_its_job_with_the_runs_status(db: Database) -> None:
    job_id = await running_job(db)
    reply = await replies.add_reply(
        db, job_id=job_id, space_id="s1", job_status=JobStatus.DONE, payload={"text": "hi"}
    )
    assert await replies.mark_sending(db, reply.id)
    assert not await replies.mark_sending(db, reply.id)  # only a pending reply is claimed
    await replies.mark_sent(db, reply.id)
    job = await repo.get_job(db, job_id)
    assert job is not None and job.status is JobStatus.DONE
    stored = await replies.reply_for_job(db, job_id)
    assert stored is not None and stored.status is ReplyStatus.SENT and stored.sent_at
    assert await replies.unfinished_replies(db) == []


async def test_an_undeliverable_reply_fails_its_job_with_the_reason(db: Database) -> None:
    job_id = await running_job(db)
    reply = await replies.add_reply(
        db, job_id=job_id, space_id="s1", job_status=JobStatus.DONE, payload={"text": "hi"}
    )
    await replies.mark_sending(db, reply.id)
    await replies.back_to_pending(db, reply.id, "HTTP 502")
    assert [r.status for r in await replies.unfinished_replies(db)] == [ReplyStatus.PENDING]
    await replies.mark_failed(db, reply.id, "HTTP 502")
    job = await repo.get_job(db, job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error == "the reply could not be delivered: HTTP 502"


async def test_a_job_with_a_reply_is_never_requeued(db: Database) -> None:
    answered = await running_job(db)
    await replies.add_reply(
        db, job_id=answered, space_id="s1", job_status=JobStatus.DONE, payload={"text": "hi"}
    )
    await repo.get_or_create_space(db, "s2")
    other = await repo.enqueue_job(db, "s2", payload={"prompt": "y"})
    await repo.claim_next_jobs(db, owner="dead-process", max_total=1)
    stale = await repo.requeue_or_fail_stale_running(db, owner="new-process")
    assert [j.id for j in stale.requeued] == [other.id]
    assert not await repo.requeue_job(db, answered)  # nor by a shutdown
    job = await repo.get_job(db, answered)
    assert job is not None and job.status is JobStatus.RUNNING  # the outbox finishes it


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own
async def test_a_rate_limited_send_is_retried_after_the_platforms_retry_after(
    db: Database, tmp_path: Path
) -> None:
    """The outbox's next try waits for the platform's retry-after (a 429), not only for
    its own short fixed wait; the reply then goes out once. Telegram's real client
    library against its fake server."""
    from pydantic import SecretStr

    from mercury.adapters.telegram.adapter import TelegramAdapter
    from mercury.config import Secrets
    from mercury.config.sections import TelegramConfig
    from mercury.core.messages import ConversationRef
    from mercury.pipeline.outbox import ReplyOutbox, reply_payload
    from tests.fakes.sink import RecordingSink
    from tests.fakes.telegram_server import FakeTelegram

    token = "123456:outbox-test-token-abcdefghijklmnop"
    async with FakeTelegram(token) as fake:
        adapter = TelegramAdapter(
            TelegramConfig(enabled=True, api_base_url=fake.base_url, file_base_url=fake.file_url),
            Secrets(telegram_bot_token=SecretStr(token)),
            poll_timeout=1.0,
        )
        await adapter.start(RecordingSink())
        try:
            job_id = await running_job(db)
            conv = ConversationRef("telegram", "501")
            reply = await replies.add_reply(
                db,
                job_id=job_id,
                space_id="s1",
                job_status=JobStatus.DONE,
                payload=reply_payload(conv, "the answer", [], None),
            )
            outbox = ReplyOutbox(db, {"telegram": adapter}, tmp_path, send_retry_delays=(0.05,))
            fake.fail_next("sendMessage", 429, retry_after=1)
            assert await outbox.deliver(reply)
        finally:
            await adapter.stop()
    calls = fake.calls_to("sendMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 1.0  # the platform's word, not the 0.05 s wait
    stored = await replies.reply_for_job(db, job_id)
    assert stored is not None and stored.status is ReplyStatus.SENT
