"""Dashboard page times with 10,000 runs and 100 spaces, against /healthz on the same server.

    .venv/bin/python bench/dashboard_pages.py [-n 30] [--runs 10000] [--spaces 100]
                                              [--no-postgres] [--health] [--queries]

Issue 12 asks every dashboard page to answer in under 100 ms with 10,000 runs and 100
spaces in the database. This seeds a real database (SQLite, then PostgreSQL when
MERCURY_TEST_POSTGRES_URL is set or scripts/ensure-postgres can start one; a fresh
database, dropped afterwards) through SQLAlchemy Core bulk inserts (bench/dashboard_seed.py):
spaces, conversations, messages, jobs, runs, usage and tasks over 30 days, with the
outcomes and the skew (a few busy spaces, many quiet ones) of a real instance. Then it
starts Mercury's real HTTP app with the dashboard, as `mercury run` builds it minus
Docker (database, the one login layer, adapters' routes, dashboard) on a free 127.0.0.1
port, logs in through /login, and times a GET of each page `-n` times, round-robin so the
machine's drift hits every page alike. --queries adds, per page, its SQL statements'
count and time and the slowest one (where a slow page spends its time).

The baseline is GET /healthz on the same server in the same rounds: the HTTP round trip
with no login check and no database. Each page's ratio to it is what the page itself
costs. The server runs on its own event loop thread; the client is blocking http.client
with keep-alive in the main thread, so the client's own overhead is small and the same for
every line. A page that answers 404 is not written yet and is skipped with a note. /health
runs the doctor's checks (Docker, disk, model endpoints), not database reads, and is
timed only with --health. Prints medians and p95; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import random
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Coroutine
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from dashboard_seed import Seeded, seed
from pgdb import create_pg_database, drop_pg_database, postgres_server
from pydantic import SecretStr
from sqlalchemy import event

from mercury.app import App
from mercury.config import Config, LoadedConfig, Secrets
from mercury.http.sessions import SESSION_COOKIE
from mercury.logging import configure_logging
from mercury.storage import Database
from mercury.storage.migrate import upgrade

T = TypeVar("T")

PASSWORD = "bench-dashboard-password-0123"
METRICS_TOKEN = "bench-metrics-token-0123456789"
TARGET_MS = 100.0

# ------------------------------------------------------------------ the server


class Loop:
    """An event loop on its own thread: the server lives there, the client does not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_app(data_dir: Path, url: str) -> App:
    """A real App's HTTP side (database, login, adapters' routes, dashboard), no Docker."""
    config = Config.model_validate(
        {"instance": "bench-dashboard", "data_dir": str(data_dir), "database_url": url,
         "server": {"port": free_port()}, "log": {"level": "warning"}}
    )  # fmt: skip
    secrets_ = Secrets(
        dashboard_password=SecretStr(PASSWORD), metrics_token=SecretStr(METRICS_TOKEN)
    )
    app = App(LoadedConfig(config, secrets_, None))
    app.db = Database(url)
    app._build_adapters()
    app._build_dashboard()
    await app.http.start()
    return app


async def stop_app(app: App) -> None:
    await app.http.stop()
    await app.db.dispose()


class QueryLog:
    """Every SQL statement the server runs while `on`, with its time (for --queries)."""

    def __init__(self, db: Database) -> None:
        self.on = False
        self.statements: list[tuple[float, str]] = []
        engine = db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, _cursor: Any, _sql: str, *_: Any) -> None:
        conn.info.setdefault("bench_t0", []).append(time.perf_counter())

    def _after(self, conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        t0 = conn.info["bench_t0"].pop()
        if self.on:
            self.statements.append((time.perf_counter() - t0, " ".join(sql.split())))

    def take(self) -> list[tuple[float, str]]:
        found, self.statements = self.statements, []
        return found


# ------------------------------------------------------------------ the client


class Client:
    """One keep-alive connection with the session cookie; returns status, bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookie = ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        hdrs = {"Cookie": self.cookie} if self.cookie else {}
        hdrs |= headers or {}
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return resp.status, resp.headers, data

    def login(self) -> None:
        form = urlencode({"username": "admin", "password": PASSWORD}).encode()
        status, headers, body = self.request(
            "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status != 303:
            raise SystemExit(f"login failed: {status} {body[:300]!r}")
        jar: SimpleCookie = SimpleCookie()
        for value in headers.get_all("Set-Cookie") or []:
            jar.load(value)
        self.cookie = f"{SESSION_COOKIE}={jar[SESSION_COOKIE].value}"

    def timed_get(self, path: str) -> tuple[float, int, int]:
        t0 = time.perf_counter()
        status, _, data = self.request("GET", path)
        return time.perf_counter() - t0, status, len(data)


# ------------------------------------------------------------------ the bench


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def page_paths(s: Seeded, with_health: bool) -> list[str]:
    paths = [
        "/overview",
        "/spaces",
        f"/spaces/{s.busiest_space}",
        "/runs",
        f"/runs/{s.failed_run}",
        "/runs?reason=timeout",
        f"/runs?space={s.busiest_space}&status=failed",
        "/tasks",
        "/usage",
        "/usage.csv",
        "/config",
        "/metrics",
        "/dashboard/chat",
    ]
    return [*paths, "/health"] if with_health else paths


def measure(
    client: Client, paths: list[str], n: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Round-robin GETs of /healthz and each page; (seconds per path, notes)."""
    notes: dict[str, str] = {}
    live: list[str] = []
    for path in paths:  # the first round is the warm-up, and finds what exists
        _, status, size = client.timed_get(path)
        if status == 200:
            live.append(path)
        elif status == 404:
            notes[path] = "404: not written yet, skipped"
        else:
            notes[path] = f"answered {status}, skipped"
    client.timed_get("/healthz")
    times: dict[str, list[float]] = {p: [] for p in ["/healthz", *live]}
    sizes: dict[str, int] = {}
    for _ in range(n):
        for path in ["/healthz", *live]:
            seconds, status, size = client.timed_get(path)
            if status != 200:
                raise SystemExit(f"GET {path} answered {status} during the timing")
            times[path].append(seconds)
            sizes[path] = size
    for path, size in sizes.items():
        notes.setdefault(path, f"{size / 1024:.1f} KiB")
    return times, notes


def report(label: str, s: Seeded, times: dict[str, list[float]], notes: dict[str, str],
           paths: list[str], n: int) -> None:  # fmt: skip
    counts = ", ".join(f"{v} {k}" for k, v in s.counts.items())
    print(f"\n== {label}: {counts} (seeded in {s.seconds:.1f} s); {n} GETs each")
    base = statistics.median(times["/healthz"])
    print(f"{'page':44} {'p50 ms':>8} {'p95 ms':>8} {'x healthz':>10}  note")
    for path in ["/healthz", *paths]:
        if path not in times:
            print(f"{path:44} {'-':>8} {'-':>8} {'-':>10}  {notes.get(path, '')}")
            continue
        p50 = statistics.median(times[path])
        p95 = pct(times[path], 0.95)
        flag = "  OVER 100 ms" if p50 * 1000 > TARGET_MS else ""
        flag = flag or ("  (p95 over 100 ms)" if p95 * 1000 > TARGET_MS else "")
        note = "baseline" if path == "/healthz" else notes.get(path, "")
        print(f"{path:44} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {p50 / base:9.1f}x  {note}{flag}")


def query_profile(client: Client, log: QueryLog, paths: list[str]) -> None:
    """One more GET of each page with its SQL recorded: count, total, the slowest."""
    print(f"{'SQL per page':44} {'stmts':>5} {'sql ms':>8}  slowest statement")
    for path in paths:
        log.on = True
        client.timed_get(path)
        log.on = False
        found = log.take()
        if not found:
            continue
        slowest, sql = max(found)
        total = sum(t for t, _ in found) * 1000
        print(f"{path:44} {len(found):5} {total:8.1f}  {slowest * 1000:.1f} ms: {sql[:100]}")


def bench_one(label: str, url: str, data_dir: Path, args: argparse.Namespace) -> None:
    loop = Loop()
    try:
        loop.run(upgrade(url))
        db = Database(url)
        try:
            seeded = loop.run(
                seed(db, n_spaces=args.spaces, n_runs=args.runs, rng=random.Random(12))
            )
        finally:
            loop.run(db.dispose())
        app = loop.run(start_app(data_dir, url))
        try:
            log = QueryLog(app.db)
            client = Client(app.http.bound_port)
            client.login()
            paths = page_paths(seeded, args.health)
            times, notes = measure(client, paths, args.n)
            report(label, seeded, times, notes, paths, args.n)
            if args.queries:
                query_profile(client, log, [p for p in paths if p in times])
            client.conn.close()
        finally:
            loop.run(stop_app(app))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=30, help="GETs of each page (default 30)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--spaces", type=int, default=100)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--postgres-url", default=None, help="a server to create a db on")
    parser.add_argument("--health", action="store_true", help="also time /health (doctor)")
    parser.add_argument("--queries", action="store_true", help="also list each page's SQL")
    args = parser.parse_args()
    configure_logging("warning", "console")

    with tempfile.TemporaryDirectory(prefix="mercury-bench-") as tmp:
        sqlite_dir = Path(tmp) / "sqlite"
        sqlite_dir.mkdir(mode=0o700)
        bench_one("SQLite", f"sqlite+aiosqlite:///{sqlite_dir / 'mercury.db'}", sqlite_dir, args)
        if args.no_postgres:
            return
        server = postgres_server(args.postgres_url)
        if server is None:
            print("\nPostgreSQL: no server (set MERCURY_TEST_POSTGRES_URL); skipped")
            return
        url = asyncio.run(create_pg_database(server))
        pg_dir = Path(tmp) / "pg"
        pg_dir.mkdir(mode=0o700)
        try:
            bench_one("PostgreSQL", url, pg_dir, args)
        finally:
            asyncio.run(drop_pg_database(url))


if __name__ == "__main__":
    main()
