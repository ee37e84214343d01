"""Pipeline latency and throughput through the web chat API of a real `mercury run`.

    .venv/bin/python bench/pipeline.py [-n 20] [--messages 200] [--spaces 50]

1. Latency: one message at a time, from the POST to /api/chat/messages until the reply is
   readable from /api/chat/messages (polled every 5 ms), interleaved with the runner floor
   from bench/runner_latency.py (bare SDK create + start + 10 ms poll on the same image).
2. Throughput: `--messages` messages spread over `--spaces` spaces, posted at once, with
   container.max_concurrency 4; wall time against the ideal = messages / 4 x floor p50.

The agent is the trivial echo image (reads input.json, writes result.json), so the figures
are Mercury's own overhead, not a model's. Prints medians and ratios; no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker
from runner_latency import TAG, base_image, build_echo, floor_once, pct

ROOT = Path(__file__).resolve().parents[1]

PASSWORD = "bench-password-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "instance": "bench-pipeline",
            "data_dir": str(root / "data"),
            "server": {"port": self.port},
            "log": {"level": "warning", "format": "json"},
            "container": {"image": TAG, "max_concurrency": 4, "memory": "256m"},
            # The echo agent never calls a model; a base_url makes the chain "configured".
            "model": {"chain": [{"provider": "openai", "model": "echo",
                                 "base_url": "http://127.0.0.1:9/v1"}]},
            "rate_limits": {"burst": 100000, "daily": {"admin": None, "member": None}},
        }  # fmt: skip
        (root / "mercury.yaml").write_text(json.dumps(config))
        (root / ".env").write_text(f"MERCURY_DASHBOARD_PASSWORD={PASSWORD}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERCURY_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mercury.cli", "run"], cwd=root, env=env,
            stdout=subprocess.DEVNULL, stderr=open(root / "mercury.log", "w"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("mercury run did not start: see mercury.log") from None
                time.sleep(0.05)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            self.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def post(self, space: str, text: str) -> None:
        self.call("POST", "/api/chat/messages", {"space": space, "text": text})

    def replies(self, space: str) -> int:
        msgs = self.call("GET", f"/api/chat/messages?space={space}")["messages"]
        return sum(1 for m in msgs if m["role"] == "assistant")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def one_message(site: Site, space: str, i: int) -> float:
    before = site.replies(space)
    t0 = time.perf_counter()
    site.post(space, f"ping {i}")
    while site.replies(space) <= before:
        time.sleep(0.005)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="latency samples (default 20)")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--spaces", type=int, default=50)
    parser.add_argument("--base", default=None)
    args = parser.parse_args()

    client = docker.from_env()
    build_echo(client, base_image(args.base))
    with tempfile.TemporaryDirectory(prefix="mercury-bench-") as tmp:
        root = Path(tmp)
        io_root = root / "floor-io"
        io_root.mkdir()
        site = Site(root)
        try:
            one_message(site, "warm", -1)
            floor_once(client, io_root)
            lat: list[float] = []
            floor: list[float] = []
            for i in range(args.n):
                lat.append(one_message(site, "lat", i))
                floor.append(floor_once(client, io_root))
            f50 = statistics.median(floor)

            spaces = [f"t{i}" for i in range(args.spaces)]
            per_space = args.messages // args.spaces
            t0 = time.perf_counter()
            for n in range(per_space):
                for space in spaces:
                    site.post(space, f"m{n}")
            pending = set(spaces)
            while pending:
                # Polling is load on the same 2 cores: keep it light (0.25 s resolution).
                time.sleep(0.25)
                pending = {s for s in pending if site.replies(s) < per_space}
            wall = time.perf_counter() - t0
        finally:
            site.stop()
        # The same number of bare-SDK runs, 4 at a time on this machine: what 4-way
        # parallelism really gives here (container start-up is CPU-bound on few cores).
        from concurrent.futures import ThreadPoolExecutor

        total_runs = (args.messages // args.spaces) * args.spaces
        t1 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: floor_once(client, io_root), range(total_runs)))
        parallel_floor = time.perf_counter() - t1

    total = per_space * args.spaces
    ideal = total / 4 * f50
    l50 = statistics.median(lat)
    print(f"latency samples: {args.n} (interleaved with the floor, after one warm-up)")
    print(
        f"floor (SDK create+start+10ms poll): p50 {f50 * 1000:7.1f} ms  "
        f"p90 {pct(floor, 0.9) * 1000:7.1f} ms"
    )
    print(
        f"message -> reply via web API     : p50 {l50 * 1000:7.1f} ms  "
        f"p90 {pct(lat, 0.9) * 1000:7.1f} ms"
    )
    print(f"ratio latency/floor p50: {l50 / f50:.3f}x")
    print(f"throughput: {total} messages over {args.spaces} spaces, max_concurrency 4")
    print(
        f"  wall {wall:6.1f} s   ideal (messages/4 x floor p50) {ideal:6.1f} s   "
        f"ratio {wall / ideal:.2f}x   {total / wall:.1f} msg/s"
    )
    print(
        f"  bare SDK floor, the same {total} runs 4 at a time: {parallel_floor:6.1f} s   "
        f"ratio pipeline/parallel floor {wall / parallel_floor:.2f}x"
    )


if __name__ == "__main__":
    main()
