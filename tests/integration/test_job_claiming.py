"""Claiming with several processes on one database: SKIP LOCKED claims, leases, recovery.

Groundwork for issue 18. Several `Database` objects (separate pools, so separate
connections and transactions, as separate workers have) and several OS processes claim
from one PostgreSQL at once; every job must be claimed exactly once, never two running
in one space at any moment, each space in FIFO order. Leases are driven with explicit
`now` values, never by waiting. SQLite keeps one process: a live second one is refused.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mercury.core.peers import Here, Peer, live_process_ids, sqlite_refusal
from mercury.pipeline.dispatcher import Dispatcher
from mercury.pipeline.peers import here, second_sqlite_process
from mercury.storage import (
    Database,
    JobRecord,
    JobStatus,
    StaleJobs,
    default_sqlite_url,
    enqueue_job,
    finish_job,
    get_job,
    get_or_create_space,
    list_jobs,
    upgrade,
)
from mercury.storage.adapter_status import ProcessInfo, write_heartbeat
from mercury.storage.jobs import (
    claim_next_jobs,
    renew_leases,
    requeue_job,
    requeue_or_fail_expired,
)
from mercury.storage.replies import add_reply
from tests.integration.mercury_site import Mercury, mercury
from tests.integration.test_storage import (
    db_url,
    fresh_postgres_database,
    postgres_server_url,
)

__all__ = ["db_url", "postgres_server_url"]  # fixtures, imported for pytest

T0 = datetime(2027, 3, 8, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)
REPO = Path(__file__).resolve().parents[2]
SPACES, PER_SPACE = 60, 5
# Any lock wait (another claimer's row or index entry) fails the statement: claimers must
# skip what another holds, never queue behind it.
NO_LOCK_WAITS = "SET LOCAL lock_timeout = '1ms'"


@pytest.fixture
async def db(db_url: str) -> Any:
    await upgrade(db_url)
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def pg_url(postgres_server_url: str) -> Any:
    async with fresh_postgres_database(postgres_server_url) as url:
        await upgrade(url)
        yield url


async def fill_queue(db: Database, seed: int = 18) -> dict[int, tuple[str, int]]:
    """SPACES x PER_SPACE jobs, enqueued interleaved across spaces, mixed priorities."""
    rng = random.Random(seed)
    for n in range(SPACES):
        await get_or_create_space(db, f"s{n:02d}")
    jobs: dict[int, tuple[str, int]] = {}
    for _ in range(PER_SPACE):
        for n in range(SPACES):
            prio = rng.choice([0, 0, 0, 1, 5])
            job = await enqueue_job(db, f"s{n:02d}", priority=prio)
            jobs[job.id] = (job.space_id, prio)
    return jobs


# ------------------------------------------------------------------ concurrent claimers


async def test_concurrent_claimers_take_each_job_once_one_per_space_in_fifo_order(
    pg_url: str,
) -> None:
    workers = [Database(pg_url) for _ in range(3)]
    try:
        jobs = await fill_queue(workers[0])
        running: dict[str, int] = {}  # space -> job, as the claimers see it
        overlaps: list[tuple[str, int, int]] = []
        claims: list[tuple[str, int]] = []  # (worker, job) in claim order
        order: dict[str, list[int]] = defaultdict(list)
        errors: list[BaseException] = []

        async def claimer(name: str, db: Database, seed: int) -> None:
            rng = random.Random(seed)
            idle = 0
            while idle < 3:
                try:
                    async with db.transaction() as s:
                        # A claimer never waits on a lock: any wait fails the claim.
                        await s.execute(text(NO_LOCK_WAITS))
                        got = await claim_next_jobs(
                            s, owner=name, max_total=rng.randint(1, 5), now=T0, lease=LEASE
                        )
                except Exception as exc:  # a lock wait or the unique index would land here
                    errors.append(exc)
                    return
                idle = 0 if got else idle + 1
                for job in got:
                    # Committed: no other claimer may hold this space now.
                    if job.space_id in running:
                        overlaps.append((job.space_id, running[job.space_id], job.id))
                    running[job.space_id] = job.id
                    claims.append((name, job.id))
                    order[job.space_id].append(job.id)
                await asyncio.sleep(0)
                for job in got:
                    # Released before the finish commits, so a next claim never races it.
                    del running[job.space_id]
                    assert await finish_job(db, job.id, JobStatus.DONE, owner=name)
                await asyncio.sleep(rng.random() / 1000)

        await asyncio.gather(*(claimer(f"w{i}", w, i) for i, w in enumerate(workers)))
        assert errors == []
        assert overlaps == []
        claimed = [job_id for _, job_id in claims]
        assert sorted(claimed) == sorted(jobs)  # each job exactly once
        assert {w for w, _ in claims} == {"w0", "w1", "w2"}  # all of them took part
        for space, ids in order.items():
            assert ids == sorted(ids), space  # FIFO within every space
        final = await list_jobs(workers[0], limit=1000)
        assert {j.status for j in final} == {JobStatus.DONE}
        assert {j.attempts for j in final} == {1}
    finally:
        for w in workers:
            await w.dispose()


WORKER = """
import asyncio, random, sys
from datetime import timedelta
from sqlalchemy import text
from mercury.storage import Database, JobStatus
from mercury.storage.jobs import claim_next_jobs, finish_job

async def main(url, name, seed):
    db = Database(url)
    rng = random.Random(seed)
    idle = 0
    while idle < 20:
        async with db.transaction() as s:
            await s.execute(text("SET LOCAL lock_timeout = '1ms'"))  # never wait on a lock
            got = await claim_next_jobs(s, owner=name, max_total=rng.randint(1, 4),
                                        lease=timedelta(seconds=60))
        idle = 0 if got else idle + 1
        for job in got:
            async with db.transaction() as s:
                await s.execute(text("INSERT INTO claim_audit (job_id, space_id, event, worker)"
                                     " VALUES (:j, :s, 'start', :w)"),
                                {"j": job.id, "s": job.space_id, "w": name})
        await asyncio.sleep(rng.random() / 200)
        for job in got:
            async with db.transaction() as s:
                await s.execute(text("INSERT INTO claim_audit (job_id, space_id, event, worker)"
                                     " VALUES (:j, :s, 'end', :w)"),
                                {"j": job.id, "s": job.space_id, "w": name})
            assert await finish_job(db, job.id, JobStatus.DONE, owner=name)
        if not got:
            await asyncio.sleep(0.01)
    await db.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_claimers_in_separate_os_processes_never_overlap_in_a_space(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        jobs = await fill_queue(db, seed=7)
        async with db.transaction() as s:
            # Written by the workers after a claim commits and before its finish commits:
            # replayed in sequence order, each space must alternate start, end.
            await s.execute(
                text(
                    "CREATE TABLE claim_audit (seq bigserial PRIMARY KEY, job_id bigint,"
                    " space_id text, event text, worker text)"
                )
            )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, pg_url, f"p{i}", str(i)],
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        async with db.transaction() as s:
            audit = (
                await s.execute(
                    text("SELECT job_id, space_id, event, worker FROM claim_audit ORDER BY seq")
                )
            ).all()
        starts = [row.job_id for row in audit if row.event == "start"]
        assert sorted(starts) == sorted(jobs)  # each job exactly once
        assert len({row.worker for row in audit}) == 3
        holder: dict[str, int] = {}
        per_space: dict[str, list[int]] = defaultdict(list)
        for row in audit:
            if row.event == "start":
                assert row.space_id not in holder, (row.space_id, holder.get(row.space_id))
                holder[row.space_id] = row.job_id
                per_space[row.space_id].append(row.job_id)
            else:
                assert holder.pop(row.space_id) == row.job_id
        for space, ids in per_space.items():
            assert ids == sorted(ids), space
    finally:
        await db.dispose()


async def test_priority_first_then_age_and_a_held_space_is_skipped(db: Database) -> None:
    for s in ("a", "b", "c", "d"):
        await get_or_create_space(db, s)
    a1 = await enqueue_job(db, "a")
    b1 = await enqueue_job(db, "b", priority=5)
    await enqueue_job(db, "b", priority=9)  # behind b1: FIFO beats its priority
    c1 = await enqueue_job(db, "c", priority=5)
    d1 = await enqueue_job(db, "d")
    got = await claim_next_jobs(db, owner="w", max_total=3, now=T0, lease=LEASE)
    assert [j.id for j in got] == [b1.id, c1.id, a1.id]
    assert {j.lease_until for j in got} == {T0 + LEASE}
    assert {j.attempts for j in got} == {1}
    [nxt] = await claim_next_jobs(db, owner="w2", max_total=5, now=T0, lease=LEASE)
    assert nxt.id == d1.id  # a, b, c run: their next jobs wait


async def test_a_claimer_skips_a_space_another_transaction_is_claiming(pg_url: str) -> None:
    """Two transactions at once: the second neither waits for nor takes the first's space."""
    one, two = Database(pg_url), Database(pg_url)
    try:
        for s in ("a", "b"):
            await get_or_create_space(one, s)
        a1 = await enqueue_job(one, "a", priority=1)
        await enqueue_job(one, "a", priority=1)
        b1 = await enqueue_job(one, "b")
        async with one.transaction() as s1:
            [first] = await claim_next_jobs(s1, owner="w1", max_total=1, now=T0)
            assert first.id == a1.id
            # w1 has not committed: w2 sees space a as free, but must skip it, not block.
            got = await asyncio.wait_for(
                claim_next_jobs(two, owner="w2", max_total=5, now=T0), timeout=30
            )
            assert [j.id for j in got] == [b1.id]
        assert await claim_next_jobs(two, owner="w2", max_total=5, now=T0) == []
    finally:
        await one.dispose()
        await two.dispose()


# ------------------------------------------------------------------ leases


async def test_an_expired_lease_is_recovered_once_then_failed(db: Database) -> None:
    await get_or_create_space(db, "a")
    job = await enqueue_job(db, "a")
    [claimed] = await claim_next_jobs(db, owner="w1", max_total=1, now=T0, lease=LEASE)
    assert await renew_leases(db, "w1", [job.id], T0 + timedelta(seconds=80)) == {job.id}
    # Within the renewed lease nobody touches it.
    assert await requeue_or_fail_expired(db, T0 + timedelta(seconds=79)) == StaleJobs()
    # w1 "dies": no more renewals. After the lease, any process requeues it, once.
    later = T0 + timedelta(seconds=81)
    first = await requeue_or_fail_expired(db, later, exclude_owner="w2")
    assert [j.id for j in first.requeued] == [job.id] and first.failed == []
    assert (await requeue_or_fail_expired(db, later)).requeued == []  # only once
    # w1's renewal now reports the job taken away; its late end changes nothing.
    assert await renew_leases(db, "w1", [job.id], later + LEASE) == set()
    assert not await finish_job(db, job.id, JobStatus.DONE, owner="w1")
    assert not await requeue_job(db, job.id, owner="w1")
    [again] = await claim_next_jobs(db, owner="w2", max_total=1, now=later, lease=LEASE)
    assert (again.id, again.attempts, again.owner) == (job.id, 2, "w2")
    assert not await finish_job(db, job.id, JobStatus.DONE, owner="w1")
    assert (await get_job(db, job.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]
    # w2 dies too: the second expiry fails it (the callers send the notice).
    gone = await requeue_or_fail_expired(db, later + LEASE + timedelta(seconds=1))
    assert gone.requeued == [] and [j.id for j in gone.failed] == [job.id]
    failed = await get_job(db, job.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert "stopped 2 times" in (failed.error or "")
    assert claimed.lease_until == T0 + LEASE


async def test_expiry_spares_own_jobs_replied_jobs_and_takes_unleased_ones(db: Database) -> None:
    for s in ("a", "b", "c"):
        await get_or_create_space(db, s)
    a = await enqueue_job(db, "a")
    b = await enqueue_job(db, "b")
    c = await enqueue_job(db, "c")
    await claim_next_jobs(db, owner="me", max_total=1, now=T0, lease=LEASE)  # a
    await claim_next_jobs(db, owner="other", max_total=2, now=T0, lease=LEASE)  # b, c
    # b's answer is already in the outbox: the outbox delivers it, it never runs again.
    await add_reply(
        db, job_id=b.id, space_id="b", job_status=JobStatus.DONE, payload={"text": "hi"}
    )
    async with db.transaction() as s:  # c was claimed before leases existed
        await s.execute(text("UPDATE jobs SET lease_until = NULL WHERE id = :i"), {"i": c.id})
    early = await requeue_or_fail_expired(db, T0 + timedelta(seconds=1), exclude_owner="me")
    assert [j.id for j in early.requeued] == [c.id]
    late = await requeue_or_fail_expired(db, T0 + 2 * LEASE, exclude_owner="me")
    assert late.requeued == [] and late.failed == []  # a is ours, b is replied
    assert (await get_job(db, a.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]


# ------------------------------------------------------------------ start-up recovery


@pytest.fixture
def pids() -> Iterator[tuple[int, int]]:
    """(a live pid that is not ours, a pid that no longer exists)."""
    live = subprocess.Popen(["sleep", "300"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        yield live.pid, dead.pid
    finally:
        live.kill()
        live.wait()


async def beat(
    db: Database, pid_: str, *, host: str, pid: int, at: datetime, stopped: bool = False
) -> None:
    info = ProcessInfo(pid_, "inst", host, pid, "test", 15.0, T0 - timedelta(hours=1))
    await write_heartbeat(db, info, {}, now=at, stopped=stopped)


async def test_start_recovers_dead_processes_jobs_at_once_and_spares_live_ones(
    db: Database, pids: tuple[int, int]
) -> None:
    live_pid, dead_pid = pids
    host = socket.gethostname()
    now = T0 + timedelta(seconds=5)
    owners = {
        "live-here": dict(host=host, pid=live_pid, at=T0),
        "live-elsewhere": dict(host="other-machine", pid=1, at=T0),
        "crashed-here": dict(host=host, pid=dead_pid, at=T0),
        "our-old-self": dict(host=host, pid=os.getpid(), at=T0),  # a container restart
        "stopped": dict(host=host, pid=live_pid, at=T0, stopped=True),
        "silent-elsewhere": dict(host="other-machine", pid=1, at=T0 - timedelta(minutes=5)),
    }
    jobs: dict[str, JobRecord] = {}
    for owner, hb in [*owners.items(), ("never-beat", None)]:
        await get_or_create_space(db, owner)
        await enqueue_job(db, owner)
        [jobs[owner]] = await claim_next_jobs(db, owner=owner, max_total=1, now=T0, lease=LEASE)
        if hb is not None:
            await beat(db, owner, **hb)  # type: ignore[arg-type]

    async def never(job: JobRecord) -> JobStatus:
        raise AssertionError("not started here")

    dispatcher = Dispatcher(db, never, max_concurrency=1, owner="new", clock=lambda: now)
    stale = await dispatcher.recover()
    assert {jobs[o].id for o in ("crashed-here", "our-old-self", "stopped", "silent-elsewhere",
                                 "never-beat")} == {j.id for j in stale.requeued}  # fmt: skip
    assert stale.failed == []
    for owner in ("live-here", "live-elsewhere"):
        job = await get_job(db, jobs[owner].id)
        assert job is not None and (job.status, job.owner) == (JobStatus.RUNNING, owner)
    # Once their lease runs out, the live-looking ones are recovered too (by lease).
    later = await requeue_or_fail_expired(db, T0 + LEASE, exclude_owner="new")
    assert {j.id for j in later.requeued} == {jobs["live-here"].id, jobs["live-elsewhere"].id}


def test_liveness_rules_are_pure() -> None:
    me = Here(host="h", pid=10, process_id="me")

    def peer(id_: str, **kw: Any) -> Peer:
        base = dict(host="h", pid=11, interval_s=15.0, started_at=T0, updated_at=T0)
        return Peer(id=id_, **{**base, **kw})  # type: ignore[arg-type]

    peers = [
        peer("me", pid=10, pid_alive=True),
        peer("alive", pid_alive=True),
        peer("dead-pid", pid_alive=False),
        peer("my-pid", pid=10, pid_alive=True),
        peer("far", host="g"),
        peer("far-silent", host="g", updated_at=T0 - timedelta(seconds=61)),
        peer("stopped", pid_alive=True, stopped_at=T0),
    ]
    assert live_process_ids(peers, T0, me) == {"me", "alive", "far"}
    refusal = sqlite_refusal(peers, T0 + timedelta(seconds=3), me)
    assert refusal is not None and refusal.startswith(
        "SQLite serves one Mercury process and another is running (pid 11 on h, seen 3s ago)"
    )
    assert "docs/operations.md#moving-to-postgresql" in refusal
    assert sqlite_refusal([peers[0], peers[2], peers[3], peers[5]], T0, me) is None


# ------------------------------------------------------------------ a dispatcher's leases


async def test_dispatcher_renews_and_lets_go_of_a_job_taken_after_its_lease(
    db: Database,
) -> None:
    await get_or_create_space(db, "a")
    job = await enqueue_job(db, "a")
    clock = [T0]
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(j: JobRecord) -> JobStatus:
        started.set()
        await release.wait()
        return JobStatus.DONE

    hold: list[str | None] = [None]
    d = Dispatcher(
        db,
        handler,
        max_concurrency=1,
        poll_interval=0.05,
        owner="w1",
        clock=lambda: clock[0],
        gate=lambda: hold[0],
    )
    d.start()
    try:
        await asyncio.wait_for(started.wait(), 30)
        clock[0] = T0 + timedelta(seconds=20)
        assert await d.renew() == set()
        held = await get_job(db, job.id)
        assert held is not None and held.lease_until == T0 + timedelta(seconds=80)
        # w1 stalls; another process finds the lease expired and requeues the job.
        stale = await requeue_or_fail_expired(db, T0 + timedelta(seconds=81), exclude_owner="w2")
        assert [j.id for j in stale.requeued] == [job.id]
        clock[0] = T0 + timedelta(seconds=82)
        assert await d.renew() == {job.id}
        hold[0] = "test: claim nothing more"
        release.set()
        for _ in range(200):
            if not d.running_spaces():
                break
            await asyncio.sleep(0.05)
        after = await get_job(db, job.id)
        # The late run did not end the job: it waits for whoever claims it next.
        assert after is not None and (after.status, after.attempts) == (JobStatus.QUEUED, 1)
    finally:
        await d.stop(5, on_timeout=_nothing)


async def _nothing() -> None:
    return None


# ------------------------------------------------------------------ SQLite: one process


async def test_sqlite_refuses_a_second_live_process_but_not_a_crashed_one(
    tmp_path: Path, pids: tuple[int, int], postgres_server_url: str
) -> None:
    live_pid, dead_pid = pids
    url = default_sqlite_url(tmp_path)
    await upgrade(url)
    db = Database(url)
    try:
        now = datetime.now(UTC)
        host = here().host
        await beat(db, "crashed", host=host, pid=dead_pid, at=now)
        assert await second_sqlite_process(db, now=now) is None
        await beat(db, "other", host=host, pid=live_pid, at=now - timedelta(seconds=4))
        refusal = await second_sqlite_process(db, now=now)
        assert refusal == (
            f"SQLite serves one Mercury process and another is running (pid {live_pid} on "
            f"{host}, seen 4s ago): stop it, or move to PostgreSQL to run several "
            "(docs/operations.md#moving-to-postgresql)"
        )
    finally:
        await db.dispose()
    async with fresh_postgres_database(postgres_server_url) as pg:
        await upgrade(pg)
        other = Database(pg)
        try:
            await beat(other, "other", host=host, pid=live_pid, at=now)
            assert await second_sqlite_process(other, now=now) is None
        finally:
            await other.dispose()


def wait_for_heartbeat(data_dir: Path, pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(data_dir / "mercury.db") as conn:
            rows = conn.execute("SELECT pid FROM processes WHERE stopped_at IS NULL").fetchall()
        if (pid,) in rows:
            return
        time.sleep(0.1)
    raise AssertionError("no heartbeat")


def test_a_second_mercury_run_on_one_sqlite_site_is_refused(site: Any) -> None:
    m: Mercury = site()
    m.start()
    assert m.proc is not None
    wait_for_heartbeat(m.data_dir, m.proc.pid)
    second = mercury("run", cwd=m.root, env=m.env(), timeout=120)
    out = second.stdout + second.stderr
    assert second.returncode != 0, out[-2000:]
    assert (
        f"SQLite serves one Mercury process and another is running (pid {m.proc.pid} on "
        f"{socket.gethostname()}, seen"
    ) in out, out[-2000:]
    # A crashed process never blocks a restart.
    assert m.stop(signal.SIGKILL) == -signal.SIGKILL
    m.start()
    assert m.stop() == 0
