"""Scale-out throughput: one gateway and 1, 2, 3 workers, measured in the same run.

    .venv/bin/python bench/scale_out.py [--messages 60] [--spaces 20] [--rounds 3]
                                        [--think 1.0] [--concurrency 2] [--workers 1,2,3]
                                        [--image TAG] [--stream] [--timeout 900]

Each measurement is a fresh install of real processes on one mercury.yaml: a fresh
PostgreSQL database (bench/pgdb.py), a fresh data dir shared by every process, a unique
`instance`; `mercury run --role gateway` (the web chat, the replies' delivery) and N
`mercury worker` processes, each claiming jobs and running up to `--concurrency`
containers (`container.max_concurrency`) on this host's Docker engine (DOCKER_HOST unset).
The agent is the real agent image (container/Dockerfile, rebuilt like
bench/first_response.py does, unless `--image`), with warm containers off (every run
starts a fresh container: the simple, predictable path) and streamed replies off unless
`--stream` (no preview messages to relay between the processes). The model is one fake
model server (tests/fakes/model_server.py) that answers every request with "re: <the
question>" after `--think` seconds, as a real model's latency.

Once the gateway answers /healthz and every worker has logged "mercury started" (role
worker), `--messages` messages are posted at once over `--spaces` web chat spaces; the wall
time runs until every space shows all its replies (assistant messages, not previews nor
withdrawn ones, read back through GET /api/chat/messages like a browser would). With a
model that thinks, throughput is bounded by the run slots (workers x concurrency / think
time), which is what adding workers buys; container start-up, which costs CPU on the same
host, bounds it too. Each N is measured `--rounds` times, the order alternating (1,2,3 then
3,2,1 ...) so drift in the machine's load hits every N. Prints each measurement as it ends,
then a Markdown table of the median throughput per N and its ratio to N=1; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake model server and the site harness live in tests/

from first_response import TAG, build_image  # noqa: E402
from pgdb import create_pg_database, drop_pg_database, postgres_server  # noqa: E402
from runner_latency import base_image  # noqa: E402

from tests.fakes.model_server import FakeModelServer  # noqa: E402
from tests.integration.mercury_site import MERCURY, Mercury, echo_responder  # noqa: E402

STARTED = "mercury started"
POLL_S = 0.25  # the bench's own polling shares the 2 cores: light, and fine for 30+ s walls


@dataclass
class Measurement:
    """One install with `workers` workers: its wall time and how the runs were shared."""

    workers: int
    round: int
    messages: int
    wall: float
    runs: list[list[float]]  # per worker, each run's seconds (its log's "run.done")
    load: float  # the 1-minute load average when it started: how busy the machine was
    leftovers: int  # containers of its instance still there after every process stopped

    @property
    def rate(self) -> float:
        return self.messages / self.wall

    @property
    def shares(self) -> str:
        return "/".join(str(len(r)) for r in self.runs)

    @property
    def run_p50(self) -> float:
        every = [s for r in self.runs for s in r]
        return statistics.median(every) if every else float("nan")


class Cluster:
    """A gateway and `workers` workers on one mercury.yaml, database and data dir.

    The gateway is the tests' `Mercury` site (tests/integration/mercury_site.py) started
    with `--role gateway`, so the config, the .env and the web chat calls are exactly the
    ones the integration tests use; the workers run `mercury worker` in the same folder.
    """

    def __init__(
        self,
        root: Path,
        args: argparse.Namespace,
        fake: FakeModelServer,
        db_url: str,
        workers: int,
    ) -> None:
        extra = {
            "database_url": db_url,
            "workers": {"poll": 0.1},
            "adapters": {"web": {"stream": {"enabled": bool(args.stream)}}},
        }
        # Every message must trigger a run: no burst or daily cap gets in the way.
        limits = {"burst": 100000, "burst_window": 60, "daily": {"admin": None, "member": None}}
        self.root = root
        self.site = Mercury(
            root,
            args.image,
            fake,
            max_concurrency=args.concurrency,
            warm=False,
            rate_limits=limits,
            extra=extra,
        )
        self.count = workers
        self.workers: list[subprocess.Popen[str]] = []
        self._logs: list[IO[str]] = []

    def worker_log(self, i: int) -> Path:
        return self.root / f"worker-{i}.log"

    def start(self) -> None:
        """The gateway first (it migrates the fresh database), then the workers at once;
        returns when the gateway is healthy and every worker has said it started."""
        try:
            self.site.start("--role", "gateway")
        except AssertionError as exc:
            raise SystemExit(f"the gateway did not start:\n{str(exc)[-4000:]}") from None
        for i in range(self.count):
            log = open(self.worker_log(i), "w")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            self.workers.append(
                subprocess.Popen(
                    [*MERCURY, "worker"],
                    cwd=self.root,
                    env=self.site.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        deadline = time.monotonic() + 90
        waiting = set(range(self.count))
        while waiting:
            for i in sorted(waiting):
                if self.workers[i].poll() is not None:
                    tail = self.worker_log(i).read_text()[-4000:]
                    raise SystemExit(f"worker {i} exited at start:\n{tail}")
                if started_as_worker(self.worker_log(i)):
                    waiting.discard(i)
            if waiting and time.monotonic() > deadline:
                raise SystemExit(f"workers {sorted(waiting)} did not log {STARTED!r} in 90 s")
            time.sleep(0.1)

    def exited(self) -> str | None:
        """Which process has exited already, if one has (with its log's tail)."""
        if self.site.proc is not None and self.site.proc.poll() is not None:
            return f"the gateway:\n{self.site.logs()[-4000:]}"
        for i, proc in enumerate(self.workers):
            if proc.poll() is not None:
                return f"worker {i}:\n{self.worker_log(i).read_text()[-4000:]}"
        return None

    def runs(self) -> list[list[float]]:
        """Per worker, the seconds each of its runs took (container start to result), from
        its log's "run.done" lines: how the runs were shared, and how much longer a run
        takes as more of them share the CPUs."""
        found: list[list[float]] = []
        for i in range(len(self.workers)):
            mine: list[float] = []
            for line in self.worker_log(i).read_text().splitlines():
                if '"run.done"' not in line:
                    continue
                try:
                    mine.append(float(json.loads(line)["duration_ms"]) / 1000)
                except (ValueError, KeyError, TypeError):
                    continue
            found.append(mine)
        return found

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (a kill after 90 s)."""
        procs = [*self.workers, *([self.site.proc] if self.site.proc else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                print(f"pid {proc.pid} ignored SIGTERM for 90 s: killed", file=sys.stderr)
                proc.kill()
                proc.wait()
        if self.site.proc is not None:
            self.site.log.close()
        for log in self._logs:
            log.close()

    def remove_containers(self, client: docker.DockerClient) -> int:
        """Remove what is left of this install's containers (none, if every process
        cleaned up after itself); how many there were."""
        label = f"mercury.instance={self.site.instance}"
        left = client.containers.list(all=True, filters={"label": label})
        for container in left:
            container.remove(force=True, v=True)
        return len(left)


def started_as_worker(log: Path) -> bool:
    """Whether a worker's JSON log has its "mercury started" line with role worker."""
    for line in log.read_text().splitlines():
        if STARTED not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == STARTED and event.get("role") == "worker":
            return True
    return False


def post_and_wait(cluster: Cluster, messages: int, spaces: int, timeout: float) -> float:
    """Post `messages` over `spaces` spaces at once (round robin); seconds from the first
    post until every space shows all its replies."""
    site = cluster.site
    names = [f"s{i}" for i in range(spaces)]
    want = Counter(names[k % spaces] for k in range(messages))
    t0 = time.perf_counter()
    for k in range(messages):
        site.post(names[k % spaces], f"question {k}")
    pending = set(want)
    while pending:
        if time.perf_counter() - t0 > timeout:
            got = {s: len(site.replies(s)) for s in sorted(pending)}
            raise SystemExit(
                f"not every reply after {timeout:g} s; replies/wanted in the spaces left: "
                + ", ".join(f"{s} {got[s]}/{want[s]}" for s in got)
                + f"\n{site.logs()[-4000:]}"
            )
        time.sleep(POLL_S)
        gone = cluster.exited()
        if gone:  # its jobs would wait out their lease: not a figure worth having
            raise SystemExit(f"{gone} exited during the measurement")
        pending = {s for s in pending if len(site.replies(s)) < want[s]}
    return time.perf_counter() - t0


def measure(
    args: argparse.Namespace,
    client: docker.DockerClient,
    fake: FakeModelServer,
    server_url: str,
    tmp: Path,
    workers: int,
    round_no: int,
) -> Measurement:
    """One fresh install with `workers` workers, measured once, then taken down whole."""
    root = tmp / f"round{round_no}-workers{workers}"
    root.mkdir()
    db_url = asyncio.run(create_pg_database(server_url))
    try:
        cluster = Cluster(root, args, fake, db_url, workers)
        try:
            cluster.start()
            load = os.getloadavg()[0]
            wall = post_and_wait(cluster, args.messages, args.spaces, args.timeout)
        finally:
            cluster.stop()
            leftovers = cluster.remove_containers(client)
        runs = cluster.runs()
    finally:
        asyncio.run(drop_pg_database(db_url))
    return Measurement(workers, round_no, args.messages, wall, runs, load, leftovers)


def report(args: argparse.Namespace, results: list[Measurement]) -> None:
    """The Markdown table: per N, every round's rate, the median, and the ratio to N=1."""
    counts = sorted({m.workers for m in results})
    medians = {n: statistics.median(m.rate for m in results if m.workers == n) for n in counts}
    base = medians[counts[0]]
    print()
    print(
        f"{args.messages} messages over {args.spaces} spaces per measurement, model think "
        f"time {args.think:g} s, container.max_concurrency {args.concurrency} per worker, "
        f"warm containers off, streamed replies {'on' if args.stream else 'off'}, "
        f"{args.rounds} round(s); {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| workers | run slots | bound: slots / think | msg/s per round | median msg/s "
        f"| median wall | run p50 | load avg | vs {counts[0]} worker{'s' * (counts[0] > 1)} |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in counts:
        mine = [m for m in results if m.workers == n]
        slots = n * args.concurrency
        rates = ", ".join(f"{m.rate:.2f}" for m in mine)
        wall = statistics.median(m.wall for m in mine)
        run = statistics.median(s for m in mine for r in m.runs for s in r)
        load = statistics.median(m.load for m in mine)
        print(
            f"| {n} | {slots} | {slots / args.think:.2f} msg/s | {rates} | "
            f"**{medians[n]:.2f}** | {wall:.1f} s | {run:.1f} s | {load:.1f} | "
            f"**{medians[n] / base:.2f}x** |"
        )
    print()
    print(
        "runs per worker, each measurement: "
        + "; ".join(f"{m.workers}w {m.shares}" for m in results)
        + "  (run p50: container start to result.json, from the workers' logs; load avg: "
        "1-minute load when the messages were posted)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=60, help="per measurement (60)")
    parser.add_argument("--spaces", type=int, default=20, help="spread over (20)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per N (3)")
    parser.add_argument("--think", type=float, default=1.0, metavar="SECONDS",
                        help="the fake model's delay before each answer (1.0)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=2,
                        help="container.max_concurrency of each worker (2)")  # fmt: skip
    parser.add_argument("--workers", default="1,2,3", help="worker counts to compare (1,2,3)")
    parser.add_argument("--image", default=None,
                        help=f"agent image tag (default: build {TAG} from container/)")  # fmt: skip
    parser.add_argument("--stream", action="store_true", help="streamed replies on")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one measurement may take (900)")  # fmt: skip
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    if min(counts) < 1 or args.messages < 1 or not 1 <= args.spaces <= args.messages:
        parser.error("need workers >= 1 and 1 <= --spaces <= --messages")

    # Every worker on this host's engine (the processes inherit this environment): the
    # figures compare worker counts on one machine, not one engine against another.
    os.environ.pop("DOCKER_HOST", None)
    client = docker.from_env()
    server_url = postgres_server(None)
    if not server_url:
        raise SystemExit(
            "no PostgreSQL: set MERCURY_TEST_POSTGRES_URL or run scripts/ensure-postgres"
        )
    if args.image is None:
        build_image(client, base_image(None))
        args.image = TAG

    fake = FakeModelServer()
    fake.responder = echo_responder(delay=args.think)
    results: list[Measurement] = []
    started = time.monotonic()
    with (
        fake,
        tempfile.TemporaryDirectory(prefix="mercury-scale-", ignore_cleanup_errors=True) as tmp,
    ):
        for r in range(args.rounds):
            # Alternate the order so that drift in the machine's load hits every N alike.
            for n in counts if r % 2 == 0 else counts[::-1]:
                m = measure(args, client, fake, server_url, Path(tmp), n, r + 1)
                results.append(m)
                print(
                    f"round {m.round}, {n} worker(s): {m.messages} messages in "
                    f"{m.wall:6.1f} s = {m.rate:.2f} msg/s; runs per worker {m.shares} "
                    f"(p50 {m.run_p50:.1f} s a run); "
                    f"load {m.load:.1f}; leftover containers {m.leftovers}",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"bench wall time {time.monotonic() - started:.0f} s", file=sys.stderr)
    report(args, results)


if __name__ == "__main__":
    main()
