"""A month of a busy Mercury instance, bulk-inserted, for bench/dashboard_pages.py.

`seed()` fills a migrated, empty database through SQLAlchemy Core executemany (seconds,
not minutes, for 10,000 runs): spaces with a Zipf-like spread of activity, their
conversations, messages (user, assistant, overheard), jobs with real JobPayloads, runs
with the outcomes, durations, tokens, attempts, model calls and log tails the run page
shows, usage rows summed from the runs, tasks whose jobs carry their task_id, and a
backlog of queued and running jobs. Its own module so the page benchmark stays readable.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert, text

from mercury.pipeline.payload import JobPayload
from mercury.storage import Database
from mercury.storage.models import (
    Conversation,
    Job,
    JobStatus,
    Message,
    MessageRole,
    Run,
    RunReason,
    Space,
    Task,
    Usage,
)

DAYS = 30
CHUNK = 2000  # rows per executemany

# How runs end on a plausible instance (weights), and what each looks like.
REASONS: dict[RunReason, float] = {
    RunReason.OK: 0.86,
    RunReason.ERROR: 0.04,
    RunReason.CRASHED: 0.02,
    RunReason.TIMEOUT: 0.03,
    RunReason.OOM: 0.01,
    RunReason.ABORTED: 0.03,
    RunReason.DISK: 0.01,
}
EXIT_CODES = {
    RunReason.OK: 0,
    RunReason.ERROR: 1,
    RunReason.CRASHED: 2,
    RunReason.TIMEOUT: 137,
    RunReason.OOM: 137,
    RunReason.ABORTED: 143,
    RunReason.DISK: 137,
}
JOB_STATUS = {RunReason.OK: JobStatus.DONE, RunReason.ABORTED: JobStatus.ABORTED}
MODELS = (  # (provider, model, $ per 1M input, $ per 1M output)
    ("anthropic", "claude-sonnet-4", 3.0, 15.0),
    ("openai", "gpt-4.1-mini", 0.4, 1.6),
    ("openai", "local-llama", 0.0, 0.0),
)
PLATFORMS = ("web", "telegram", "slack", "discord")
LOG_LINE = "2026-12-01T10:00:00Z agent: step {i}: tool call read_file ok ({n} bytes)\n"


# ------------------------------------------------------------------------ seeding


@dataclass
class Seeded:
    """What was put in, and the ids the page list needs."""

    counts: dict[str, int] = field(default_factory=dict)
    busiest_space: str = ""
    failed_run: int = 0
    seconds: float = 0.0


def _weights(n: int) -> list[float]:
    """Zipf-like activity: space 0 is busiest, the last ones hardly used."""
    return [1.0 / (rank + 1) ** 0.9 for rank in range(n)]


def _duration_ms(rng: random.Random, reason: RunReason) -> int:
    if reason is RunReason.TIMEOUT:
        return 600_000 + rng.randint(0, 900)
    return max(300, int(rng.lognormvariate(9.0, 0.9)))  # median ~8 s


def _log_tail(rng: random.Random, reason: RunReason) -> str:
    lines = [LOG_LINE.format(i=i, n=rng.randint(10, 90000)) for i in range(60)]
    return "".join(lines) + f"agent: run ended: {reason.value}\n"


def _attempts(provider: str, model: str, reason: RunReason, ms: int) -> list[dict[str, Any]]:
    outcome = "ok" if reason is RunReason.OK else "error"
    return [
        {"leg": 0, "provider": provider, "model": model, "turn": 1, "outcome": outcome,
         "status": 200, "duration_ms": ms // 2, "error": None, "error_class": None},
    ]  # fmt: skip


def _model_calls(
    provider: str, model: str, tin: int, tout: int, cost: float, at: datetime
) -> list[dict[str, Any]]:
    half_in, half_out = tin // 2, tout // 2
    return [
        {"provider": provider, "model": model, "input_tokens": part_in,
         "output_tokens": part_out, "cost_usd": round(cost / 2, 6), "status": 200,
         "incomplete": False, "at": at.isoformat()}
        for part_in, part_out in ((half_in, half_out), (tin - half_in, tout - half_out))
    ]  # fmt: skip


async def _bulk(db: Database, table: Table, rows: list[dict[str, Any]]) -> None:
    async with db.engine.begin() as conn:
        for i in range(0, len(rows), CHUNK):
            await conn.execute(insert(table), rows[i : i + CHUNK])


async def seed(db: Database, *, n_spaces: int, n_runs: int, rng: random.Random) -> Seeded:
    """Fill a migrated, empty database; ids are given explicitly so rows can refer to
    each other without reading anything back."""
    t0 = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=DAYS)
    space_ids = [f"space-{i:03d}" for i in range(n_spaces)]
    spaces = [
        {"id": sid, "name": f"Team {i:03d}", "profile": ("general", "coder")[i % 2],
         "created_at": start - timedelta(days=10), "context_reset_at": None,
         "paused_until": now + timedelta(hours=2) if i % 37 == 5 else None}
        for i, sid in enumerate(space_ids)
    ]  # fmt: skip
    conversations: list[dict[str, Any]] = []
    convs_of: dict[str, list[dict[str, Any]]] = {}
    for i, sid in enumerate(space_ids):
        mine = []
        for k in range(1 + (i % 3 == 0)):  # a third of the spaces have a linked chat
            platform = PLATFORMS[(i + k) % len(PLATFORMS)]
            conv = {"id": len(conversations) + 1, "space_id": sid, "platform": platform,
                    "chat_id": f"{platform}-chat-{i}-{k}", "thread_id": None,
                    "created_at": start - timedelta(days=9)}  # fmt: skip
            conversations.append(conv)
            mine.append(conv)
        convs_of[sid] = mine

    tasks: list[dict[str, Any]] = []
    for i, sid in enumerate(space_ids[: max(1, n_spaces // 2)]):
        for k in range(2):
            kind = (i + k) % 3
            tasks.append({
                "id": len(tasks) + 1, "space_id": sid,
                "conversation_id": convs_of[sid][0]["id"],
                "prompt": f"Summarise yesterday's activity in {sid} ({k})",
                "cron": "0 7 * * *" if kind == 0 else None,
                "interval_s": 3600 * (k + 1) if kind == 1 else None,
                "run_at": now + timedelta(days=2) if kind == 2 else None,
                "created_by": "admin", "enabled": (i + k) % 5 != 0,
                "next_run_at": now + timedelta(minutes=7 * (i + 1)), "last_run_at": None,
                "created_at": start,
            })  # fmt: skip

    weights = _weights(n_spaces)
    picks = rng.choices(space_ids, weights=weights, k=n_runs)
    times = sorted(start + timedelta(seconds=rng.uniform(0, DAYS * 86400 - 120)) for _ in picks)
    reasons = rng.choices(list(REASONS), weights=list(REASONS.values()), k=n_runs)
    messages: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    usage: dict[tuple[str, date, str], dict[str, Any]] = {}
    task_ids_of: dict[str, list[int]] = defaultdict(list)
    for t in tasks:
        task_ids_of[t["space_id"]].append(t["id"])

    def message(sid: str, conv: dict[str, Any], role: MessageRole, body: str, at: datetime,
                author: str) -> int:  # fmt: skip
        mid = len(messages) + 1
        messages.append({
            "id": mid, "space_id": sid, "conversation_id": conv["id"],
            "platform": conv["platform"], "platform_message_id": f"pm-{mid}", "role": role,
            "author_id": author, "author_name": author.title(), "text": body,
            "attachments": [{"path": f"inbox/report-{mid}.pdf", "name": "report.pdf"}]
            if mid % 23 == 0 else [],
            "is_bot": role is MessageRole.ASSISTANT, "created_at": at,
        })  # fmt: skip
        return mid

    for n, (sid, started, reason) in enumerate(zip(picks, times, reasons, strict=True)):
        conv = convs_of[sid][n % len(convs_of[sid])]
        author = f"user{n % 17}"
        from_task = bool(task_ids_of[sid]) and n % 10 == 0
        prompt = f"Please look at item {n} and tell me what changed since last week."
        if n % 4 == 0:  # chatter the bot only overheard
            message(sid, conv, MessageRole.AMBIENT, f"fyi {n}", started - timedelta(seconds=40),
                    f"user{(n + 3) % 17}")  # fmt: skip
        mid = None
        if not from_task:
            mid = message(sid, conv, MessageRole.USER, prompt, started - timedelta(seconds=1),
                          author)  # fmt: skip
        provider, model, p_in, p_out = MODELS[n % len(MODELS)]
        ms = _duration_ms(rng, reason)
        finished = started + timedelta(milliseconds=ms)
        tin, tout = rng.randint(800, 30000), rng.randint(50, 3000)
        if reason in (RunReason.CRASHED, RunReason.DISK):
            tin = tout = 0
        cost = round((tin * p_in + tout * p_out) / 1e6, 6)
        payload = JobPayload(
            platform=conv["platform"], chat_id=conv["chat_id"], thread_id=None,
            reply_to=None if mid is None else f"pm-{mid}", message_id=mid, prompt=prompt,
            author_id=author, author_name=author.title(), role="member",
            user_key=None if mid is None else f"{conv['platform']}:{author}",
            task_id=task_ids_of[sid][n % len(task_ids_of[sid])] if from_task else None,
        )  # fmt: skip
        job_id = len(jobs) + 1
        failed = reason is not RunReason.OK
        jobs.append({
            "id": job_id, "space_id": sid, "message_id": mid,
            "status": JOB_STATUS.get(reason, JobStatus.FAILED), "attempts": 1, "priority": 0,
            "enqueued_at": started - timedelta(milliseconds=300), "started_at": started,
            "finished_at": finished, "error": f"run {reason.value}" if failed else None,
            "owner": "bench:1:boot", "payload": payload.to_dict(),
        })  # fmt: skip
        runs.append({
            "id": n + 1, "job_id": job_id, "space_id": sid, "reason": reason,
            "exit_code": EXIT_CODES[reason], "duration_ms": ms,
            "image": "mercury-agent:latest", "container_name": f"mercury-bench-{n + 1}",
            "input_tokens": tin, "output_tokens": tout, "cost_usd": cost, "model": model,
            "error": f"agent run ended: {reason.value}" if failed else None,
            "started_at": started, "finished_at": finished, "prompt_summary": prompt,
            "attempts": _attempts(provider, model, reason, ms),
            "model_calls": _model_calls(provider, model, tin, tout, cost, started)
            if tin else [],
            "log_tail": _log_tail(rng, reason) if failed else None,
        })  # fmt: skip
        if not failed:
            message(sid, conv, MessageRole.ASSISTANT, f"Here is what changed for item {n}: ...",
                    finished, "mercury")  # fmt: skip
        row = usage.setdefault(
            (sid, started.date(), model),
            {"space_id": sid, "day": started.date(), "model": model, "input_tokens": 0,
             "output_tokens": 0, "cost_usd": 0.0, "runs": 0},
        )  # fmt: skip
        row["input_tokens"] += tin
        row["output_tokens"] += tout
        row["cost_usd"] += cost
        row["runs"] += 1

    # Right now: a backlog in the busiest spaces, and a few runs under way.
    for k in range(40):
        sid = space_ids[k % 8]
        conv = convs_of[sid][0]
        at = now - timedelta(seconds=60 - k)
        mid = message(sid, conv, MessageRole.USER, f"queued {k}", at, "user1")
        running = k < 3
        jobs.append({
            "id": len(jobs) + 1, "space_id": sid, "message_id": mid,
            "status": JobStatus.RUNNING if running else JobStatus.QUEUED, "attempts": int(running),
            "priority": 0, "enqueued_at": at, "started_at": at if running else None,
            "finished_at": None, "error": None, "owner": "bench:1:boot" if running else None,
            "payload": JobPayload(platform=conv["platform"], chat_id=conv["chat_id"],
                                  thread_id=None, reply_to=f"pm-{mid}", message_id=mid,
                                  prompt=f"queued {k}", author_id="user1", author_name="User1",
                                  role="member", user_key=f"{conv['platform']}:user1").to_dict(),
        })  # fmt: skip
    for t in tasks:
        t["last_run_at"] = now - timedelta(hours=1)

    for table, rows in (
        (Space.__table__, spaces),
        (Conversation.__table__, conversations),
        (Task.__table__, tasks),
        (Message.__table__, messages),
        (Job.__table__, jobs),
        (Run.__table__, runs),
        (Usage.__table__, list(usage.values())),
    ):
        await _bulk(db, table, rows)  # type: ignore[arg-type]
    if db.dialect == "postgresql":  # explicit ids: move the sequences past them
        async with db.engine.begin() as conn:
            for name in ("conversations", "tasks", "messages", "jobs", "runs"):
                await conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"(SELECT max(id) FROM {name}))"
                    )
                )
    # Statistics and (PostgreSQL) the visibility map, as autovacuum would have them on a
    # database that grew over a month: without them the planner guesses on empty tables.
    async with db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE" if db.dialect == "postgresql" else "ANALYZE"))

    newest_timeout = max(
        (r for r in runs if r["reason"] is RunReason.TIMEOUT), key=lambda r: r["id"],
        default=runs[-1],
    )  # fmt: skip
    return Seeded(
        counts={"spaces": len(spaces), "conversations": len(conversations),
                "messages": len(messages), "jobs": len(jobs), "runs": len(runs),
                "usage rows": len(usage), "tasks": len(tasks)},
        busiest_space=space_ids[0],
        failed_run=int(newest_timeout["id"]),
        seconds=time.perf_counter() - t0,
    )  # fmt: skip
