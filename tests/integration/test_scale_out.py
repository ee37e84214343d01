"""Scale-out, end to end: one gateway and three workers on two Docker engines, one
PostgreSQL, faults injected mid-load; every message answered exactly once, in order.

Real processes (`mercury run --role gateway`, `mercury worker`), real hardened containers
and the fake Telegram Bot API in its own thread (it outlives every Mercury process: what
it recorded is what the users saw). Workers 1 and 2 run on the machine's engine
(DOCKER_HOST); worker 3 on a private `dockerd` of the test (tests/integration/dockerd.py),
named by `container.docker_host` in its own config file.

The containers run the scripted test agent (tests/images/testagent: "echo-after S TEXT"),
not the real one: 300 runs of the real agent cost about ten minutes of CPU on a 2-core
machine, and what this test is about is the host side (claims, leases, recovery, the
outbox, delivery), which is the same code whichever agent the image holds. The real
agent's runs through the host API are end-to-end tested in test_agent_e2e.py and the
adapters' conformance suite.

300 messages over 60 chats are pushed at once. Mid-run:
1. worker 1 is SIGKILLed while it holds running jobs (its leases run out; another worker
   requeues them once and runs them);
2. worker 3's engine is stopped while it runs jobs (the runs it cut go back to the queue;
   worker 3 holds while its engine is away, the others serve);
3. the gateway is stopped and started again a few seconds later, while the workers go on
   storing answers: they are sent once when it is back (a gateway SIGKILLed in the middle
   of a send is tests/integration/test_exactly_once.py's and test_gateway_parts.py's:
   what it was sending is settled, not sent twice).
Then every chat must have exactly its five answers, in the order it asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import docker
import pytest
from sqlalchemy.engine import make_url

from mercury.core.roles import run_tag
from mercury.sandbox.hardening import LABEL_INSTANCE
from tests.fakes.model_server import FakeModelServer
from tests.integration.dockerd import PrivateEngine
from tests.integration.mercury_site import PASSWORD, free_port
from tests.integration.test_exactly_once import TOKEN, ThreadedTelegram
from tests.integration.test_storage import fresh_postgres_database, postgres_server_url

__all__ = ["postgres_server_url"]  # a fixture, imported for pytest

pytestmark = pytest.mark.postgres

CHATS = 60
PER_CHAT = 5
LEASE_S = 6  # workers.lease: a killed worker's jobs move after at most this long
RUN_S = 0.5  # how long each run takes


@pytest.fixture(scope="module")
def engine(test_image: str) -> Iterator[PrivateEngine]:
    """A second Docker engine, with the test agent's image loaded into it."""
    private = PrivateEngine()
    try:
        private.start()
        private.load(test_image)
        yield private
    finally:
        private.close()


@pytest.fixture
async def pg_url(postgres_server_url: str) -> AsyncIterator[str]:
    async with fresh_postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def telegram() -> Iterator[ThreadedTelegram]:
    tg = ThreadedTelegram()
    yield tg
    tg.close()


class Cluster:
    """A gateway and workers of one instance: one config, one data dir, one database."""

    def __init__(self, root: Path, image: str, fake: FakeModelServer, db_url: str,
                 tg: ThreadedTelegram) -> None:  # fmt: skip
        self.root = root
        self.instance = f"s{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.db_url = db_url
        self.config: dict[str, Any] = {
            "instance": self.instance,
            "data_dir": str(root / "data"),
            "database_url": db_url,
            "server": {"host": "127.0.0.1", "port": self.port},
            "log": {"format": "json", "level": "info"},
            "container": {"image": image, "memory": "512m", "timeout": 60,
                          "max_concurrency": 2, "warm": {"enabled": False}},
            "model": {"chain": [{"provider": "anthropic", "model": "claude-test",
                                 "base_url": fake.url}]},
            # One person sends all 300: no limit may refuse any of them.
            "rate_limits": {"burst": 10000, "burst_window": 60, "daily": {"member": None}},
            "workers": {"lease": LEASE_S, "poll": 0.1},
            "adapters": {"telegram": {"enabled": True, "api_base_url": tg.fake.base_url,
                                      "file_base_url": tg.fake.file_url,
                                      "stream": {"enabled": False}}},
        }  # fmt: skip
        self.write_config("mercury.yaml")
        (root / ".env").write_text(
            f"MERCURY_DASHBOARD_PASSWORD={PASSWORD}\n"
            "ANTHROPIC_API_KEY=sk-ant-scale-out-test-000\n"
            f"MERCURY_TELEGRAM_BOT_TOKEN={TOKEN}\n"
        )
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, Path] = {}

    def write_config(self, name: str, **container: Any) -> Path:
        config = json.loads(json.dumps(self.config))
        config["container"].update(container)
        path = self.root / name
        path.write_text(json.dumps(config))
        return path

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
        full.update(env or {})
        log = self.root / f"{name}-{time.monotonic_ns()}.log"
        self.logs[name] = log
        with open(log, "w") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "mercury.cli", *args],
                cwd=self.root, env=full, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

    def start_gateway(self) -> None:
        self._spawn("gateway", ["run", "--role", "gateway"])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.procs["gateway"].poll() is None, self.log("gateway")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the gateway did not come up:\n" + self.log("gateway"))

    def start_worker(self, name: str, config: str = "mercury.yaml") -> None:
        self._spawn(name, ["worker", "--config", config])

    def wait_started(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.procs[name].poll() is None, self.log(name)
            for event in self.events(name):
                if event.get("event") == "mercury started":
                    return event
            time.sleep(0.1)
        raise AssertionError(f"{name} did not start:\n{self.log(name)}")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.logs[name].read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def log(self, name: str) -> str:
        return self.logs[name].read_text()[-4000:] if name in self.logs else ""

    def all_logs(self) -> str:
        return "\n".join(f"== {n}\n{self.log(n)}" for n in self.procs)

    def stop(self, name: str) -> int:
        self.procs[name].send_signal(signal.SIGTERM)
        return self.procs[name].wait(90)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(30)

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(30)
        return codes

    def sql(self, query: str, *args: Any) -> list[Any]:
        url = make_url(self.db_url).set(drivername="postgresql")

        async def go() -> list[Any]:
            conn = await asyncpg.connect(url.render_as_string(hide_password=False))
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def page(self, path: str) -> str:
        """A dashboard page of the gateway, logged in through its form as the operator."""
        base = f"http://127.0.0.1:{self.port}"
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        form = urllib.parse.urlencode({"username": "admin", "password": PASSWORD}).encode()
        opener.open(urllib.request.Request(f"{base}/login", data=form), timeout=10).close()
        with opener.open(f"{base}{path}", timeout=10) as resp:
            return str(resp.read().decode())

    def process_id(self, name: str) -> str:
        return str(self.wait_started(name)["process"])

    def running_jobs_of(self, owner: str, claimed_within: float | None = None) -> list[int]:
        """The jobs `owner` runs; with `claimed_within`, only if one was claimed that
        recently (seconds, by the database's clock)."""
        rows = self.sql(
            "SELECT id, started_at > now() - make_interval(secs => $2) AS fresh FROM jobs"
            " WHERE status = 'running' AND owner = $1",
            owner,
            claimed_within if claimed_within is not None else 1e9,
        )
        return [r["id"] for r in rows] if any(r["fresh"] for r in rows) else []


@pytest.fixture
def cluster(tmp_path: Path, test_image: str, fake: FakeModelServer, pg_url: str,
            telegram: ThreadedTelegram) -> Iterator[Cluster]:  # fmt: skip
    c = Cluster(tmp_path, test_image, fake, pg_url, telegram)
    yield c
    c.stop_all()
    client = docker.from_env()
    try:
        for box in client.containers.list(
            ignore_removed=True, all=True, filters={"label": f"{LABEL_INSTANCE}={c.instance}"}
        ):
            box.remove(force=True)
    finally:
        client.close()


def wait_for(what: str, cond: Any, cluster: Cluster, timeout: float = 300) -> Any:
    """Until `cond()` is truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.all_logs()}")


def test_a_gateway_and_three_workers_on_two_engines_answer_each_message_once_in_order(
    cluster: Cluster, engine: PrivateEngine, fake: FakeModelServer, telegram: ThreadedTelegram
) -> None:
    if not engine.answers():
        engine.start()
    third = cluster.write_config("worker3.yaml", docker_host=engine.host)
    cluster.start_gateway()
    for name, config in (("w1", "mercury.yaml"), ("w2", "mercury.yaml"), ("w3", str(third))):
        cluster.start_worker(name, config)
    owners = {name: cluster.process_id(name) for name in ("w1", "w2", "w3")}
    assert cluster.wait_started("w3")["role"] == "worker"

    wanted = {1000 + c: [f"m{c}-{i}" for i in range(PER_CHAT)] for c in range(CHATS)}
    for i in range(PER_CHAT):
        for chat, texts in wanted.items():
            # Long enough that a worker always holds runs when a fault hits it.
            telegram.push(chat, f"echo-after {RUN_S} re: {texts[i]}")

    def answered() -> int:
        return sum(1 for t in telegram.replies() if t.startswith("re:"))

    # 1. Worker 1 dies with runs in flight.
    wait_for("30 answers", lambda: answered() >= 30, cluster)
    # At a moment it has just claimed one: that run cannot have its answer yet.
    held_by_w1 = wait_for(
        "w1 starting a run", lambda: cluster.running_jobs_of(owners["w1"], 0.3), cluster, 60
    )
    cluster.kill("w1")
    # 2. Worker 3's engine goes away with runs in flight.
    wait_for("100 answers", lambda: answered() >= 100, cluster)
    held_by_w3 = wait_for(
        "w3 starting a run", lambda: cluster.running_jobs_of(owners["w3"], 0.3), cluster, 60
    )
    engine.stop()
    # 3. The gateway goes away for a few seconds while the workers go on.
    wait_for("160 answers", lambda: answered() >= 160, cluster)
    assert cluster.stop("gateway") == 0
    stored = cluster.sql("SELECT count(*) AS n FROM replies")[0]["n"]
    time.sleep(3)
    assert cluster.sql("SELECT count(*) AS n FROM replies")[0]["n"] > stored  # still working
    cluster.start_gateway()

    total = CHATS * PER_CHAT
    wait_for("every answer", lambda: answered() >= total, cluster, timeout=600)
    time.sleep(3)  # anything sent twice would arrive now

    sent = [t for t in telegram.replies() if t.startswith("re:")]
    per_chat: dict[int, list[str]] = {}
    for call in telegram.fake.calls:
        text = str(call.params.get("text", ""))
        if call.method == "sendMessage" and call.status == 200 and text.startswith("re:"):
            per_chat.setdefault(int(call.params["chat_id"]), []).append(text)
    doubled = {t: n for t, n in Counter(sent).items() if n > 1}
    assert doubled == {}, f"sent more than once: {doubled}"
    for chat, texts in wanted.items():
        assert per_chat.get(chat) == [f"re: {t}" for t in texts], (chat, per_chat.get(chat))
    # Nobody was told to send a message again: no job was given up.
    assert [t for t in telegram.replies() if not t.startswith("re:")] == []
    # Each message ran to its answer once; those whose runs the faults cut short ran at
    # most once more.
    runs = cluster.sql("SELECT job_id, count(*) AS n FROM runs GROUP BY job_id")
    assert max(r["n"] for r in runs) <= 2, [dict(r) for r in runs if r["n"] > 2]

    jobs = cluster.sql("SELECT id, status, owner, attempts FROM jobs ORDER BY id")
    assert len(jobs) == total
    assert {j["status"] for j in jobs} == {"done"}, [dict(j) for j in jobs if j["status"] != "done"]
    by_id = {j["id"]: j for j in jobs}
    # The killed worker's jobs were taken over (requeued once: a second attempt); one
    # whose answer was stored in the moment before the kill is w1's, rightly ...
    w1_ok = {
        r["job_id"]
        for r in cluster.sql(
            "SELECT job_id FROM runs WHERE reason = 'ok' AND container_name LIKE $1",
            f"%-{run_tag(owners['w1'])}-%",
        )
    }
    taken_over = [j for j in held_by_w1 if by_id[j]["owner"] != owners["w1"]]
    detail = [dict(by_id[j]) for j in held_by_w1]
    assert taken_over and all(by_id[j]["attempts"] == 2 for j in taken_over), detail
    assert all(j in w1_ok for j in held_by_w1 if j not in taken_over), detail
    # ... and the runs the stopped engine cut short were handed back and run by the
    # other live worker, not counted as an attempt of the worker that could not finish
    # them. A run whose answer landed just before the engine went is w3's, rightly.
    w3_runs = cluster.sql(
        "SELECT job_id, reason, error FROM runs WHERE container_name LIKE $1",
        f"%-{run_tag(owners['w3'])}-%",
    )
    cut = {r["job_id"] for r in w3_runs if "handed back to the queue" in (r["error"] or "")}
    done_on_w3 = {r["job_id"] for r in w3_runs if r["reason"] == "ok"}
    detail = (
        [dict(by_id[j]) for j in held_by_w3],
        [dict(r) for r in w3_runs if r["job_id"] in held_by_w3 or r["reason"] != "ok"],
        owners,
    )
    assert cut, detail
    assert all(
        by_id[j]["owner"] == owners["w2"] and by_id[j]["attempts"] == 1 + (j in taken_over)
        for j in cut
    ), detail
    assert held_by_w3 and all(
        (j in done_on_w3 and by_id[j]["owner"] == owners["w3"]) or by_id[j]["owner"] == owners["w2"]
        for j in held_by_w3
    ), detail
    # Every worker did some of the work; the live ones most of it.
    done_by = Counter(j["owner"] for j in jobs)
    assert all(done_by[owners[w]] > 0 for w in ("w1", "w2", "w3")), done_by
    replies = cluster.sql("SELECT status, count(*) AS n FROM replies GROUP BY status")
    statuses = {r["status"]: r["n"] for r in replies}
    assert sum(statuses.values()) == total and set(statuses) == {"sent"}, statuses
    # The clean stop left nothing half-sent: no reply was settled without a send.
    assert cluster.sql("SELECT count(*) AS n FROM replies WHERE error IS NOT NULL")[0]["n"] == 0
    codes = cluster.stop_all()
    assert codes["gateway"] == 0 and codes["w2"] == 0 and codes["w3"] == 0, codes


def test_stop_heard_by_the_gateway_stops_the_run_on_the_worker(
    cluster: Cluster, telegram: ThreadedTelegram
) -> None:
    cluster.start_gateway()
    cluster.start_worker("w1")
    worker = cluster.process_id("w1")
    telegram.push(2001, "echo-after 120 never said")
    wait_for("the run", lambda: cluster.running_jobs_of(worker), cluster, 60)
    (job,) = cluster.running_jobs_of(worker)
    # The gateway's dashboard shows the worker's run under "running now" (read from the
    # database: the gateway runs no container itself).
    shown = f"{worker} (job {job})"
    wait_for("the run on the dashboard", lambda: shown in cluster.page("/overview"), cluster, 30)
    # Its Health page does not look for a Docker engine the gateway does not use.
    assert "not on a gateway: the workers run the containers" in cluster.page("/health")
    telegram.push(2001, "stop")
    wait_for("the job's end", lambda: not cluster.running_jobs_of(worker), cluster, 60)
    time.sleep(1)  # a reply, were one sent, would arrive now
    assert telegram.replies() == ["Stopped the running request."]
    (row,) = cluster.sql("SELECT status, abort_requested_at FROM jobs WHERE id = $1", job)
    assert row["status"] == "aborted" and row["abort_requested_at"] is not None
    (run,) = cluster.sql("SELECT reason FROM runs WHERE job_id = $1", job)
    assert run["reason"] == "aborted"
    # The worker goes on with the next message of the space.
    telegram.push(2001, "echo-after 0 still here")
    wait_for("the next answer", lambda: "still here" in telegram.replies(), cluster, 60)
    codes = cluster.stop_all()
    assert codes == {"gateway": 0, "w1": 0}, codes


def test_a_worker_or_gateway_on_sqlite_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "mercury.yaml").write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
    for args in (["worker"], ["run", "--role", "gateway"]):
        done = subprocess.run(
            [sys.executable, "-m", "mercury.cli", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: database_url: "), lines
        assert "SQLite serves one process" in lines[0] and "docs/scale-out.md" in lines[0]
    # Nothing was created: not even the database file.
    assert not (tmp_path / "data" / "mercury.db").exists()
