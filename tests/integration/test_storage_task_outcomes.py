"""What storage/tasks.py keeps of a task's runs (outcome, retries, silent, catch-up), on a
real SQLite file and a real PostgreSQL (the `db` fixture of test_storage.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercury.storage import Database, get_or_create_space
from mercury.storage.tasks import (
    add_task,
    due_tasks,
    get_task,
    note_task_outcome,
    pass_task_slot,
    set_task_enabled,
    set_task_retry,
    start_task_run,
    task_creator,
    task_page,
)
from tests.integration.test_storage import db, db_url, postgres_server_url

__all__ = ["db", "db_url", "postgres_server_url"]  # fixtures shared with test_storage.py

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


async def test_new_tasks_have_the_defaults_and_take_silent_and_catch_up(db: Database) -> None:
    await get_or_create_space(db, "a")
    plain = await add_task(db, "a", "p", interval_s=3600)
    assert (plain.silent, plain.catch_up, plain.failures, plain.retry_at) == (
        False,
        "once",
        0,
        None,
    )
    assert (plain.last_outcome, plain.last_detail, plain.last_outcome_at) == (None, None, None)
    quiet = await add_task(db, "a", "q", interval_s=3600, silent=True, catch_up="skip")
    assert await get_task(db, quiet.id) == quiet
    assert (quiet.silent, quiet.catch_up) == (True, "skip")
    with pytest.raises(ValueError, match="catch_up must be 'once' or 'skip'"):
        await add_task(db, "a", "x", interval_s=60, catch_up="twice")


async def test_outcomes_and_retries_are_recorded(db: Database) -> None:
    await get_or_create_space(db, "a")
    task = await add_task(db, "a", "p", interval_s=3600, next_run_at=NOW)
    retry = NOW + timedelta(minutes=1)
    await note_task_outcome(db, task.id, "failed", "run failed: timeout", NOW, failures=1,
                            retry_at=retry)  # fmt: skip
    stored = await get_task(db, task.id)
    assert stored is not None
    assert (stored.last_outcome, stored.last_detail, stored.last_outcome_at) == (
        "failed",
        "run failed: timeout",
        NOW,
    )
    assert (stored.failures, stored.retry_at) == (1, retry)
    await note_task_outcome(db, task.id, "ok", None, NOW)  # without failures: kept
    stored = await get_task(db, task.id)
    assert stored is not None and (stored.failures, stored.retry_at) == (1, retry)
    await set_task_retry(db, task.id, failures=0, retry_at=None)
    stored = await get_task(db, task.id)
    assert stored is not None and (stored.failures, stored.retry_at) == (0, None)
    with pytest.raises(ValueError, match="unknown task outcome 'exploded'"):
        await note_task_outcome(db, task.id, "exploded", None, NOW)
    # The dashboard's list still reads tasks with their new fields.
    (row,) = await task_page(db, space_id="a")
    assert row.task.last_outcome == "ok" and row.last is None


async def test_due_tasks_include_due_retries_even_of_a_disabled_one_shot(db: Database) -> None:
    await get_or_create_space(db, "a")
    every = await add_task(db, "a", "every", interval_s=3600, next_run_at=NOW + timedelta(hours=1))
    once = await add_task(db, "a", "once", run_at=NOW - timedelta(minutes=5))
    # The one-shot ran: disabled, its schedule gone; its failed run waits for a retry.
    await start_task_run(db, once.id, ran_at=NOW - timedelta(minutes=5), next_run_at=None,
                         move=True)  # fmt: skip
    await note_task_outcome(db, once.id, "failed", "run failed: error", NOW, failures=1,
                            retry_at=NOW + timedelta(minutes=1))  # fmt: skip
    stored = await get_task(db, once.id)
    assert stored is not None and stored.enabled is False and stored.next_run_at is None
    assert await due_tasks(db, NOW) == []
    assert [t.id for t in await due_tasks(db, NOW + timedelta(minutes=1))] == [once.id]
    # A retry of a recurring task is due before its next slot.
    await set_task_retry(db, every.id, failures=1, retry_at=NOW + timedelta(minutes=2))
    assert [t.id for t in await due_tasks(db, NOW + timedelta(minutes=2))] == [once.id, every.id]
    # Pausing drops a retry; so does resuming.
    await set_task_enabled(db, every.id, False)
    assert [t.id for t in await due_tasks(db, NOW + timedelta(minutes=2))] == [once.id]


async def test_start_and_pass_a_slot(db: Database) -> None:
    await get_or_create_space(db, "a")
    task = await add_task(db, "a", "p", interval_s=3600, next_run_at=NOW)
    nxt = NOW + timedelta(hours=1)
    await set_task_retry(db, task.id, failures=2, retry_at=NOW)
    await start_task_run(db, task.id, ran_at=NOW, next_run_at=nxt, move=False)  # a retry
    stored = await get_task(db, task.id)
    assert stored is not None
    assert (stored.next_run_at, stored.last_run_at, stored.retry_at) == (NOW, NOW, None)
    assert (stored.failures, stored.last_outcome) == (2, "queued")  # tries still count
    await pass_task_slot(db, task.id, "refused", "the space is paused", NOW, next_run_at=nxt,
                         move=True)  # fmt: skip
    stored = await get_task(db, task.id)
    assert stored is not None
    assert (stored.next_run_at, stored.enabled, stored.failures) == (nxt, True, 0)
    assert (stored.last_outcome, stored.last_detail) == ("refused", "the space is paused")
    await pass_task_slot(db, task.id, "skipped", "missed", NOW, next_run_at=None, move=True)
    stored = await get_task(db, task.id)
    assert stored is not None and stored.enabled is False


async def test_a_task_made_by_a_run_acts_for_the_runs_sender(db: Database) -> None:
    await get_or_create_space(db, "a")
    parent = await add_task(db, "a", "p", interval_s=3600, created_by="operator")
    assert await task_creator(db, "web:alice", None) == "web:alice"
    assert await task_creator(db, None, None) is None
    # A run of a task: the task's creator, whoever the run's user key says.
    assert await task_creator(db, None, parent.id) == "operator"
    assert await task_creator(db, "web:alice", 999_999) == "web:alice"  # parent deleted
