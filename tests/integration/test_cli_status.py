"""`mercury status` beside a real `mercury run` (fake model server) and after it is gone.

The running process writes its heartbeat (pipeline/heartbeat.py); `mercury status` is a
separate process reading the database. Staleness is judged with `--now` (a later
moment), never by waiting, so nothing here depends on how long a step takes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mercury.storage import Database, RunReason, default_sqlite_url, record_run
from tests.fakes.model_server import FakeModelServer
from tests.integration.mercury_site import PASSWORD, Mercury, echo_responder, mercury

SPACE = "ops"
# Small, so a test machine with little free disk is not "attention" for that alone.
SITE = {"extra": {"disk": {"min_free": "1m"}}}


def fast_site(site: Any) -> Mercury:
    """A site whose `mercury run` beats every second (MERCURY_HEARTBEAT_INTERVAL), so a new
    event shows in the database soon; the test still waits for it, never for a time."""
    m: Mercury = site(**SITE)
    plain = m.env
    m.env = lambda: {**plain(), "MERCURY_HEARTBEAT_INTERVAL": "1"}  # type: ignore[method-assign]
    return m


def wait_for(m: Mercury, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`status --json` until `done(report)`: what the next heartbeats write."""
    deadline = time.monotonic() + 90
    while True:
        _, report = status_json(m)
        if done(report):
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.5)


def web_event_written(report: dict[str, Any]) -> bool:
    live = [p for p in report["processes"] if p["fresh"]]
    events = [a for p in live for a in p["adapters"] if a["name"] == "web"]
    return bool(events) and events[0]["last_event_at"] is not None


def status(m: Mercury, *args: str) -> tuple[int, str]:
    done = mercury("status", *args, cwd=m.root)
    assert PASSWORD not in done.stdout + done.stderr
    assert "sk-ant-" not in done.stdout + done.stderr
    return done.returncode, done.stdout + done.stderr


def status_json(m: Mercury, *args: str) -> tuple[int, dict[str, Any]]:
    done = mercury("status", "--json", *args, cwd=m.root)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def later(minutes: int) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


async def _record_failed_run(m: Mercury) -> None:
    db = Database(default_sqlite_url(m.data_dir))
    try:
        await record_run(
            db,
            space_id=SPACE,
            reason=RunReason.TIMEOUT,
            started_at=datetime.now(UTC) - timedelta(minutes=5),
            duration_ms=60_000,
        )
    finally:
        await db.dispose()


def test_status_of_a_running_mercury_then_a_killed_one_then_a_stopped_one(
    site: Any, fake: FakeModelServer
) -> None:
    fake.responder = echo_responder()
    m = fast_site(site)
    m.start()
    m.post(SPACE, "hello status")
    assert m.wait_replies(SPACE, 1)[0]["text"] == "re: hello status"

    wait_for(m, web_event_written)
    code, report = status_json(m)
    assert code == 0, report["attention"]
    assert report["ok"] is True and report["state"] == "running"
    assert report["instance"] == m.instance
    assert report["attention"] == []
    [proc] = report["processes"]
    assert proc["fresh"] is True and proc["stopped_at"] is None
    web = {a["name"]: a for a in proc["adapters"]}["web"]
    assert web["connected"] is True and web["last_event_at"] is not None
    assert report["today"]["tokens"] > 0 and report["today"]["runs"] >= 1
    assert report["queue"] == {"total": 0, "spaces": {}}
    assert report["failures_last_hour"] == {"total": 0, "by_reason": {}}
    assert report["disk"]["free_bytes"] > 0 and report["disk"]["spaces_bytes"] > 0
    assert report["disk"]["largest_spaces"][0]["space_id"] == SPACE

    code, text = status(m)
    assert code == 0, text
    assert f"Mercury {m.instance}: running" in text and "All fine." in text
    assert "web" in text and "Queue: empty" in text

    # Killed: no last beat. Ten minutes later the heartbeat is stale.
    m.stop(signal.SIGKILL)
    asyncio.run(_record_failed_run(m))
    code, report = status_json(m, "--now", later(10))
    assert code == 1
    assert report["state"] == "silent" and report["ok"] is False
    assert [a["kind"] for a in report["attention"]] == ["not_running"]
    assert "not running or is stuck" in report["attention"][0]["text"]
    code, text = status(m, "--now", later(10))
    assert code == 1 and "NOT RUNNING (silent)" in text and "Needs attention:" in text

    # The failed run of the last hour is counted by reason (under the default threshold).
    code, report = status_json(m)
    assert report["failures_last_hour"] == {"total": 1, "by_reason": {"timeout": 1}}
    code, text = status(m)
    assert "Failures in the last hour: 1 (1 timeout)" in text

    # Started again (a new process), then stopped cleanly: the last beat says so.
    m.start()
    report = wait_for(m, lambda r: len([p for p in r["processes"] if p["fresh"]]) == 1)
    code, report = status_json(m)
    assert code == 0, report["attention"]
    fresh = [p for p in report["processes"] if p["fresh"]]
    assert len(fresh) == 1 and len(report["processes"]) == 2
    assert fresh[0]["id"] != proc["id"]
    assert m.stop() == 0
    code, report = status_json(m)
    assert code == 1 and report["state"] == "stopped"
    assert report["processes"][0]["stopped_at"] is not None
    assert "is not running: it stopped at" in report["attention"][0]["text"]
    assert not any(a["connected"] for a in report["processes"][0]["adapters"])


def test_status_exit_codes_without_a_database_and_with_a_bad_config(site: Any) -> None:
    m: Mercury = site(**SITE)
    code, text = status(m)
    assert code == 1
    assert "no database at" in text and "mercury db upgrade" in text

    (m.root / "mercury.yaml").write_text(json.dumps({"container": {"timeout": "soon"}}))
    code, text = status(m)
    assert code == 2 and "container.timeout" in text
