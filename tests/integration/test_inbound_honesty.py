"""What a run is given and what a sender is told, end to end: `mercury run` as a real
process on a tmp site, its web chat, the real agent image and the fake model server.

- A run's history ends at the message it answers (messages sent after it are the future).
- A message the rate limit refused never reaches the model, not even as history.
- The web chat's operator is an admin of its spaces; keys are "platform:user_id".
- A message that could not be stored is a 503 with a reason (a locked database, a full
  disk), and a retry with the same client_id is one message, one job, one reply.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mercury.storage import (
    Database,
    MessageRole,
    add_message,
    get_or_create_space,
    recent_messages,
    reset_context,
)
from mercury.storage.migrate import upgrade
from tests.fakes.model_server import FakeModelServer, Text, Turn
from tests.integration.mercury_site import PASSWORD, Mercury, echo_responder, last_user_text

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def post_status(m: Mercury, space: str, text: str, client_id: str) -> tuple[int, dict[str, Any]]:
    """POST a chat message; the HTTP status and JSON body, errors included."""
    req = urllib.request.Request(
        m.url + "/api/chat/messages",
        data=json.dumps({"space": space, "text": text, "client_id": client_id}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def db_rows(m: Mercury, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(m.data_dir / "mercury.db", timeout=30) as db:
        return list(db.execute(sql, args))


def request_for(fake: FakeModelServer, text: str) -> str:
    """The (JSON) body of the model request that answered `text`."""
    bodies = [r.body for r in fake.requests if last_user_text(r.body).endswith(text)]
    assert bodies, f"no model request answered {text!r}"
    return json.dumps(bodies[0])


# ------------------------------------------------------------------------- history


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    await upgrade(database)
    await get_or_create_space(database, "s")
    try:
        yield database
    finally:
        await database.dispose()


async def test_the_history_query_ends_at_the_answered_message_and_skips_refusals(
    db: Database,
) -> None:
    async def say(text: str, role: MessageRole, minute: int) -> int:
        stored = await add_message(
            db, space_id="s", platform="web", role=role, text=text,
            created_at=T0 + timedelta(minutes=minute),
        )  # fmt: skip
        return stored.id

    await say("one", MessageRole.USER, 0)
    await say("refused", MessageRole.REFUSED, 1)
    two = await say("two", MessageRole.USER, 2)
    await say("re: one", MessageRole.ASSISTANT, 3)  # the reply to "one", stored after "two"
    await say("three", MessageRole.USER, 4)
    await say("overheard", MessageRole.AMBIENT, 5)
    history = (MessageRole.USER, MessageRole.ASSISTANT, MessageRole.AMBIENT)

    def texts(rows: list[Any]) -> list[str]:
        return [r.text for r in rows]

    got = await recent_messages(db, "s", limit=10, roles=history, answering=two)
    assert texts(got) == ["one", "two", "re: one"]
    # A scheduled task answers no message: it sees everything but refusals.
    got = await recent_messages(db, "s", limit=10, roles=history)
    assert texts(got) == ["one", "two", "re: one", "three", "overheard"]
    # The filters are in the query: `limit` counts only what is kept.
    got = await recent_messages(db, "s", limit=2, roles=history, answering=two)
    assert texts(got) == ["two", "re: one"]
    # Unfiltered, the refusal is still on record (a redelivered event is a duplicate).
    assert "refused" in texts(await recent_messages(db, "s", limit=10))
    await reset_context(db, "s", at=T0 + timedelta(minutes=2))
    got = await recent_messages(db, "s", limit=10, roles=history, answering=two)
    assert texts(got) == ["two", "re: one"]


@pytest.mark.docker
def test_a_runs_history_ends_at_the_message_it_answers(site: Any, fake: FakeModelServer) -> None:
    m = site()
    m.start()
    # The first run holds its answer until all three messages are stored, so the second
    # run starts with the third one already in the database.
    stored = threading.Event()

    def respond(body: dict[str, Any]) -> Turn:
        text = last_user_text(body).split(":", 1)[-1].strip()
        if text == "first words":
            stored.wait(60)
        return Turn([Text(f"re: {text}")])

    fake.responder = respond
    try:
        for text in ("first words", "second words", "third words"):
            m.post("order", text)
    finally:
        stored.set()
    replies = m.wait_replies("order", 3)
    assert [r["text"] for r in replies] == ["re: first words", "re: second words",
                                            "re: third words"]  # fmt: skip
    second = request_for(fake, "second words")
    assert "first words" in second and "re: first words" in second
    assert "third words" not in second  # not yet said, as far as this run knows
    third = request_for(fake, "third words")
    assert "second words" in third and "re: second words" in third
    assert m.stop() == 0


@pytest.mark.docker
def test_a_refused_message_never_reaches_the_model(site: Any, fake: FakeModelServer) -> None:
    m = site(rate_limits={"burst": 2, "burst_window": 5})
    m.start()
    fake.responder = echo_responder()
    # Sent at once: all pass the router's look at the limit, and the ledger, inside the
    # storing step, takes two and turns the others away.
    texts = [f"note {i}" for i in range(5)]
    workers = [threading.Thread(target=m.post, args=("rl", t)) for t in texts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    m.post("rl", "one too many")  # within the window: the router refuses it
    replies = m.wait_replies("rl", 6)
    answered = {r["text"][4:] for r in replies if r["text"].startswith("re: ")}
    refused = {*texts, "one too many"} - answered
    assert len(answered) == 2 and len(refused) == 4, [r["text"] for r in replies]
    assert sum("Too many requests" in r["text"] for r in replies) == 4
    time.sleep(5.5)  # the burst window passes
    m.post("rl", "and now?")
    m.wait_replies("rl", 7)
    later = request_for(fake, "and now?")
    assert all(t in later for t in answered)
    assert not [t for t in refused if t in later], later
    # Each refusal is on record, so a redelivery of it is still a duplicate.
    stored = db_rows(m, "SELECT text FROM messages WHERE role = 'refused'")
    assert sorted(r[0] for r in stored) == sorted(refused)
    assert m.stop() == 0


# ------------------------------------------------------------------------ identity


@pytest.mark.docker
def test_the_web_chat_operator_may_pause_and_switch_the_model(
    site: Any, fake: FakeModelServer
) -> None:
    m = site(
        extra={
            "model": {"chain": [
                {"provider": "anthropic", "model": "claude-test", "base_url": fake.url},
                {"provider": "anthropic", "model": "claude-other", "base_url": fake.url},
            ]},
        }
    )  # fmt: skip
    m.start()
    fake.responder = echo_responder()
    m.post("ops", "/model switch 2")
    m.post("ops", "/pause")
    m.post("ops", "are you there?")
    replies = [r["text"] for r in m.wait_replies("ops", 3)]
    assert replies[0] == "This space now uses anthropic/claude-other first.", replies
    assert replies[1] == "Paused. Send /resume to continue.", replies
    assert replies[2] == "I'm paused here until an admin sends /resume.", replies
    m.post("ops", "/resume")
    m.post("ops", "hello")
    replies = [r["text"] for r in m.wait_replies("ops", 5)]
    assert replies[3:] == ["Resumed.", "re: hello"], replies
    assert fake.requests[-1].body["model"] == "claude-other"
    assert m.stop() == 0


@pytest.mark.docker
def test_the_documented_web_admin_key_is_the_one_mercury_uses(
    site: Any, fake: FakeModelServer
) -> None:
    # The default role may do nothing: only the configured admin key gets through.
    m = site(extra={"permissions": {"admins": ["web:admin"], "default_role": "nobody"}})
    m.start()
    fake.responder = echo_responder()
    m.post("keys", "hello")
    (reply,) = m.wait_replies("keys", 1)
    assert reply["text"] == "re: hello"
    ((payload,),) = db_rows(m, "SELECT payload FROM jobs")
    job = json.loads(payload)
    assert job["user_key"] == "web:admin" and job["role"] == "admin"
    assert db_rows(m, "SELECT author_id FROM messages WHERE role = 'user'") == [("admin",)]
    assert m.stop() == 0


# -------------------------------------------------------------------- honest errors


def assert_unavailable(status: int, body: dict[str, Any], m: Mercury, why: str) -> None:
    assert status == 503, (status, body)
    error = body["error"]
    assert why in error and "not stored" in error, error
    # A short reason: no path, no file name, no exception text.
    assert str(m.root) not in error and "mercury.db" not in error and "/" not in error


def fill(path: Path) -> None:
    """Write `path` until its filesystem has not a block left (unbuffered: nothing to flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1024**2, 4096):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def replies_to(m: Mercury, space: str, text: str) -> list[str]:
    return [r["text"] for r in m.replies(space) if r["text"] == f"re: {text}"]


@pytest.mark.docker
def test_a_locked_database_is_a_503_and_the_retry_one_reply(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    fake.responder = echo_responder()
    m.post("lock", "warm up")  # the space exists: only the message itself is written
    m.wait_replies("lock", 1)
    holder = sqlite3.connect(m.data_dir / "mercury.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        status, body = post_status(m, "lock", "while locked", "cid-lock")
        assert_unavailable(status, body, m, "busy")
        assert m.proc is not None and m.proc.poll() is None  # still serving
    finally:
        holder.rollback()
        holder.close()
    assert [e["text"] for e in m.messages("lock")].count("while locked") == 0
    status, body = post_status(m, "lock", "while locked", "cid-lock")
    assert status == 202, body
    m.wait_replies("lock", 2)
    status, _ = post_status(m, "lock", "while locked", "cid-lock")  # a late second retry
    assert status == 202
    time.sleep(1)
    assert replies_to(m, "lock", "while locked") == ["re: while locked"]
    assert db_rows(m, "SELECT count(*) FROM messages WHERE text = 'while locked'") == [(1,)]
    assert db_rows(m, "SELECT count(*) FROM jobs") == [(2,)]
    assert m.stop() == 0


@pytest.mark.docker
def test_a_full_disk_is_a_503_and_the_retry_one_reply(
    site: Any, fake: FakeModelServer, small_disk: Path
) -> None:
    m = site(
        extra={
            "data_dir": str(small_disk / "data"),
            "disk": {"min_free": "4m", "space_limit": "watch"},
        }
    )
    m.start()
    fake.responder = echo_responder()
    m.post("full", "warm up")
    m.wait_replies("full", 1)
    filler = small_disk / "filler"
    fill(filler)  # everything else on the disk fills it up
    status, body = post_status(m, "full", "while full", "cid-full")
    assert_unavailable(status, body, m, "disk is full")
    assert m.proc is not None and m.proc.poll() is None
    filler.unlink()
    status, body = post_status(m, "full", "while full", "cid-full")
    assert status == 202, body
    m.wait_replies("full", 2)
    time.sleep(1)
    assert replies_to(m, "full", "while full") == ["re: while full"]
    assert db_rows(m, "SELECT count(*) FROM messages WHERE text = 'while full'") == [(1,)]
    assert db_rows(m, "SELECT count(*) FROM jobs") == [(2,)]
    assert m.stop() == 0
