"""What the run executor stores for a run's dashboard page, through its real paths.

- In process, on a real SQLite database: `_store_outcome` of a crashed run keeps the
  prompt summary, result.json's attempts, the model calls the usage meter saw for that
  run (through the executor's hook on a real UsageMeter; the rest of the host API is not
  needed, so the test hands the executor just the meter), and the container log tail.
- End to end: `mercury run` as a real process with the real agent image and the fake
  model server; a good run and a model-refused run are recorded with their details.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mercury.api.usage import TokenUsage, UsageMeter
from mercury.config import Config
from mercury.pipeline.payload import JobPayload
from mercury.pipeline.runs import RunExecutor
from mercury.sandbox.types import RunReason, RunResult
from mercury.storage import (
    Database,
    default_sqlite_url,
    enqueue_job,
    get_or_create_space,
    list_runs,
    upgrade,
)
from mercury.storage.runs import get_run
from tests.fakes.model_server import Error, FakeModelServer
from tests.integration.mercury_site import echo_responder


async def test_store_outcome_keeps_prompt_attempts_calls_and_log_tail(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    db = Database(url)
    try:
        await get_or_create_space(db, "space-a")
        payload = JobPayload(
            platform="web",
            chat_id="main",
            thread_id=None,
            reply_to=None,
            message_id=None,
            prompt="Please\nwrite the weekly report",
            author_id="u1",
            author_name="Ann",
            role="member",
        )
        job = await enqueue_job(db, "space-a", payload=payload.to_dict())
        meter = UsageMeter()
        # Only the meter is used by the record; the stream hook feeds previews, unused here.
        host: Any = SimpleNamespace(meter=meter, add_stream_hook=lambda hook: None)
        executor = RunExecutor(
            Config(data_dir=tmp_path / "data"), db, runner=None, host=host, adapters={}
        )  # type: ignore[arg-type]
        executor._calls["run-1"] = []  # as `_run` does when the run's access opens
        await meter.record(
            "run-1", "space-a", "anthropic", TokenUsage(100, 7), "claude-x", status=200
        )
        await meter.record("run-other", "space-a", "anthropic", TokenUsage(1, 1), "claude-x")
        await meter.record(
            "run-1", "space-a", "anthropic", TokenUsage(0, 0), "claude-x", status=None
        )
        usage = meter.pop_run("run-1")
        result = RunResult(
            run_id="run-1",
            space_id="space-a",
            reason=RunReason.CRASHED,
            exit_code=139,
            error="exited with code 139 without writing result.json",
            duration_ms=2500,
            image="agent:test",
            container_name="mercury-run-1",
            log_tail="starting\nSegmentation fault\n",
            result={"attempts": [{"leg": 0, "model": "claude-x", "outcome": "fail"}]},
        )
        started = datetime.now(UTC)
        await executor._store_outcome(job, payload, result, usage, started)

        (run,) = await list_runs(db)
        stored = await get_run(db, run.id)
        assert stored is not None
        assert stored.prompt_summary == "Please write the weekly report"
        assert stored.attempts == [{"leg": 0, "model": "claude-x", "outcome": "fail"}]
        assert stored.log_tail == "starting\nSegmentation fault\n"
        assert stored.model_calls is not None
        assert [
            (c["input_tokens"], c["output_tokens"], c["status"]) for c in stored.model_calls
        ] == [
            (100, 7, 200),
            (0, 0, None),
        ]
        assert all(
            c["model"] == "claude-x" and c["provider"] == "anthropic" for c in stored.model_calls
        )
        assert (stored.input_tokens, stored.output_tokens) == (100, 7)
        assert (stored.container_name, stored.exit_code) == ("mercury-run-1", 139)
    finally:
        await db.dispose()


async def test_a_successful_run_keeps_no_log_tail(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    db = Database(url)
    try:
        await get_or_create_space(db, "space-a")
        payload = JobPayload("web", "main", None, None, None, "hi", "u1", "Ann", "member")
        job = await enqueue_job(db, "space-a", payload=payload.to_dict())
        executor = RunExecutor(
            Config(data_dir=tmp_path / "data"), db, runner=None, host=None, adapters={}
        )  # type: ignore[arg-type]
        result = RunResult(
            run_id="run-2",
            space_id="space-a",
            reason=RunReason.OK,
            reply="hello",
            log_tail="debug noise",
        )
        await executor._store_outcome(job, payload, result, None, datetime.now(UTC))
        (run,) = await list_runs(db)
        assert (run.prompt_summary, run.log_tail, run.model_calls) == ("hi", None, [])
    finally:
        await db.dispose()


def _stored_runs(data_dir: Path) -> list[Any]:
    async def read() -> list[Any]:
        db = Database(default_sqlite_url(data_dir))
        try:
            return list(reversed(await list_runs(db)))  # oldest first
        finally:
            await db.dispose()

    return asyncio.run(read())


@pytest.mark.docker
def test_a_real_run_stores_its_details(site: Any, fake: FakeModelServer) -> None:
    m = site()
    m.start()
    fake.responder = echo_responder()
    m.post("alpha", "hello   there\nfriend")
    m.wait_replies("alpha", 1)

    fake.responder = None
    fake.script([Error(401, "invalid x-api-key")])
    m.post("alpha", "this one is refused")
    m.wait_replies("alpha", 2)
    assert m.stop() == 0

    good, refused = _stored_runs(m.data_dir)
    assert good.reason == "ok"
    assert good.prompt_summary == "hello there friend"
    assert good.attempts and good.attempts[-1]["outcome"] == "ok"
    assert good.attempts[-1]["model"] == "claude-test"
    assert good.model_calls and good.model_calls[0]["status"] == 200
    assert good.model_calls[0]["model"] == "claude-test"
    assert sum(c["input_tokens"] for c in good.model_calls) == good.input_tokens > 0
    assert good.log_tail is None

    assert refused.reason == "error"
    assert refused.prompt_summary == "this one is refused"
    assert refused.attempts and refused.attempts[-1]["status"] == 401
    assert [c["status"] for c in refused.model_calls] == [401]
