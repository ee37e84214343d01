"""The queue payload: what a writer stores is what the executor reads back, payloads the
previous version stored still read, and a malformed one says what is wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mercury.core.messages import ConversationRef
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.payload import JobPayload, PayloadError
from mercury.pipeline.scheduler import Scheduler
from mercury.storage import Database, JobStatus, repo
from mercury.storage.migrate import upgrade

FULL = JobPayload(
    platform="telegram",
    chat_id="-100123",
    thread_id="7",
    reply_to="-100123:55",
    message_id=12,
    prompt="summarise the file",
    author_id="42",
    author_name="Ada",
    role="admin",
    attachments=("inbox/00-notes.txt",),
    user_key="telegram:42",
    task_id=None,
)

# What the previous version's inbound handler stored (user_key added as a loose key) and
# what its scheduler stored (task_id, no user_key).
OLD_INBOUND: dict[str, Any] = {
    "platform": "slack",
    "chat_id": "C1",
    "thread_id": None,
    "reply_to": "C1:1700000000.000100",
    "message_id": 3,
    "prompt": "hi",
    "author_id": "U1",
    "author_name": "Bo",
    "role": "member",
    "attachments": [],
    "user_key": "slack:U1",
}
OLD_TASK: dict[str, Any] = {
    "platform": "web",
    "chat_id": "s1",
    "thread_id": None,
    "reply_to": None,
    "message_id": None,
    "prompt": "daily digest",
    "author_id": "scheduler",
    "author_name": "scheduled task 9",
    "role": "member",
    "attachments": [],
    "task_id": 9,
}


def test_round_trip_through_json() -> None:
    stored = json.loads(json.dumps(FULL.to_dict()))  # as the job row keeps it
    assert JobPayload.from_dict(stored) == FULL
    task = JobPayload.from_dict(OLD_TASK)
    assert JobPayload.from_dict(json.loads(json.dumps(task.to_dict()))) == task


def test_every_field_is_stored() -> None:
    assert set(FULL.to_dict()) == set(JobPayload.__dataclass_fields__)
    assert FULL.conversation == ConversationRef("telegram", "-100123", "7")


def test_payloads_of_the_previous_version_still_read() -> None:
    inbound = JobPayload.from_dict(OLD_INBOUND)
    assert inbound.user_key == "slack:U1" and inbound.task_id is None
    assert inbound.reply_to == "C1:1700000000.000100" and inbound.attachments == ()
    task = JobPayload.from_dict(OLD_TASK)
    assert task.task_id == 9 and task.user_key is None and task.message_id is None
    # Older still: only where to answer; the rest as the previous reader defaulted it.
    bare = JobPayload.from_dict({"platform": "discord", "chat_id": "5"})
    assert (bare.prompt, bare.role, bare.attachments, bare.thread_id) == ("", "member", (), None)
    # Numeric platform ids are read as the strings they are everywhere else.
    assert JobPayload.from_dict({"platform": "telegram", "chat_id": 42}).chat_id == "42"
    # A key a later version adds does not stop this one from running the job.
    assert JobPayload.from_dict({**OLD_INBOUND, "priority": 2}) == inbound


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"platform": None}, "'platform'"),
        ({"chat_id": ["C1"]}, "'chat_id' must be a string"),
        ({"message_id": "3"}, "'message_id' must be an integer"),
        ({"message_id": True}, "'message_id' must be an integer"),
        ({"task_id": 1.5}, "'task_id' must be an integer"),
        ({"attachments": "inbox/a.txt"}, "'attachments' must be a list"),
        ({"attachments": [1]}, "'attachments' must be a list"),
        ({"user_key": {"platform": "slack"}}, "'user_key' must be a string"),
    ],
)
def test_a_malformed_payload_names_what_is_wrong(change: dict[str, Any], named: str) -> None:
    with pytest.raises(PayloadError, match=named):
        JobPayload.from_dict({**OLD_INBOUND, **change})


def test_a_payload_without_a_destination_is_refused() -> None:
    missing = dict(OLD_INBOUND)
    del missing["chat_id"]
    with pytest.raises(PayloadError, match="no 'chat_id'"):
        JobPayload.from_dict(missing)
    with pytest.raises(PayloadError, match="must be an object"):
        JobPayload.from_dict(["slack", "C1"])  # type: ignore[arg-type]


async def test_the_scheduler_writes_a_typed_payload(tmp_path: Path) -> None:
    """A due task's job carries its task id and no user (tasks use no one's rate limit)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    db = Database(url)
    try:
        await repo.get_or_create_space(db, "s1")
        await repo.link_conversation(db, "telegram", "42", "s1")
        now = datetime.now(UTC).replace(microsecond=0)
        task = await repo.add_task(db, "s1", "digest", run_at=now - timedelta(minutes=1))

        async def never(job: Any) -> JobStatus:
            raise AssertionError("the dispatcher is not started")

        assert await Scheduler(db, Dispatcher(db, never, max_concurrency=1), tick=30).tick(now) == 1
        (job,) = await repo.list_jobs(db, space_id="s1")
        payload = JobPayload.from_dict(job.payload)
        assert payload.task_id == task.id and payload.user_key is None
        assert (payload.prompt, payload.conversation) == (
            "digest",
            ConversationRef("telegram", "42"),
        )
        assert payload.to_dict() == job.payload
    finally:
        await db.dispose()
