"""Runner latency: ContainerRunner.run() against a bare Docker floor, interleaved.

    .venv/bin/python bench/runner_latency.py [-n 20] [--base IMAGE]

The floor is the least any runner could do with the Docker SDK on the same image:
low-level create + start, then poll for result.json every 10 ms. A second floor also
stops the container (kill + wait) before reading the result, as the threat model demands
(nothing in the container may change a file between the host's check and its read). The
runner adds the hardening, io dir, input.json, the space folder, liveness probes, the
stop, and result parsing and output copying off the event loop. Both are timed from
"asked" to "reply in hand"; container removal happens afterwards, outside the timing,
for both. Runs alternate (runner, floor, runner, ...) so drift in the machine's load
affects both equally. Prints medians and the ratio; the figures go in
docs/performance.md. No assertion on time: it measures, it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import docker

from mercury.config import AUTO_CONTAINER_ID, Config
from mercury.logging import configure_logging
from mercury.sandbox.runner import ContainerRunner
from mercury.sandbox.types import ImageBuildState, RunRequest

ROOT = Path(__file__).resolve().parents[1]

TAG = "mercury-bench-echo:latest"
UID = AUTO_CONTAINER_ID  # what the runner uses as root


def base_image(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("MERCURY_TEST_BASE_IMAGE"):
        return os.environ["MERCURY_TEST_BASE_IMAGE"]
    return subprocess.run(
        [str(ROOT / "scripts" / "ensure-base-image")], check=True, capture_output=True, text=True
    ).stdout.strip()


def build_echo(client: docker.DockerClient, base: str) -> None:
    client.images.build(
        path=str(ROOT / "bench" / "echo"), tag=TAG, buildargs={"BASE_IMAGE": base}, rm=True
    )


def floor_once(client: docker.DockerClient, io_root: Path, *, stop: bool = False) -> float:
    """Bare SDK: create + start + 10 ms poll (+ kill and wait when `stop`). Returns seconds;
    removal is not timed."""
    io = io_root / uuid.uuid4().hex
    io.mkdir()
    os.chown(io, UID, UID) if os.geteuid() == 0 else io.chmod(0o777)
    (io / "input.json").write_text(json.dumps({"prompt": "hi"}))
    api = client.api
    t0 = time.perf_counter()
    cid = api.create_container(
        TAG,
        user=f"{UID}:{UID}",
        environment={"MERCURY_IO_DIR": "/run/mercury-io"},
        host_config=api.create_host_config(
            binds={str(io): {"bind": "/run/mercury-io", "mode": "rw"}}, network_mode="none"
        ),
    )["Id"]
    api.start(cid)
    result = io / "result.json"
    while not result.exists():
        time.sleep(0.010)
    if stop:
        with contextlib.suppress(docker.errors.APIError):
            api.kill(cid)
        api.wait(cid, timeout=10)
    json.loads(result.read_text())
    elapsed = time.perf_counter() - t0
    api.remove_container(cid, force=True)
    for f in io.iterdir():
        f.unlink()
    io.rmdir()
    return elapsed


async def runner_once(runner: ContainerRunner, i: int) -> float:
    req = RunRequest(run_id=uuid.uuid4().hex[:12], space_id="bench", input={"prompt": f"hi {i}"})
    t0 = time.perf_counter()
    result = await runner.run(req)
    elapsed = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"runner run failed: {result.reason} {result.error}")
    await runner.wait_cleanups()  # removal is not timed, as for the floor
    return elapsed


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="runs of each (default 20)")
    parser.add_argument("--base", default=None, help="base image for the echo image")
    args = parser.parse_args()
    configure_logging("warning", "console")

    client = docker.from_env()
    build_echo(client, base_image(args.base))
    with tempfile.TemporaryDirectory(prefix="mercury-bench-") as tmp:
        data = Path(tmp)
        config = Config.model_validate(
            {"instance": "bench", "data_dir": str(data / "data"), "container": {"image": TAG}}
        )
        runner = ContainerRunner(config, ImageBuildState(TAG), client=client)
        io_root = data / "floor-io"
        io_root.mkdir()
        # Warm-up: first container start pays one-off costs (page cache, image layers).
        await runner_once(runner, -1)
        await asyncio.to_thread(floor_once, client, io_root)
        runner_s: list[float] = []
        floor_s: list[float] = []
        stop_s: list[float] = []
        for i in range(args.n):
            runner_s.append(await runner_once(runner, i))
            floor_s.append(await asyncio.to_thread(floor_once, client, io_root))
            stop_s.append(await asyncio.to_thread(floor_once, client, io_root, stop=True))
        await runner.aclose()

    r50, f50, s50 = (statistics.median(x) for x in (runner_s, floor_s, stop_s))
    print(f"runs each: {args.n}  (interleaved, after one warm-up of each)")
    for label, values in (
        ("floor  (SDK create+start+10ms poll)", floor_s),
        ("floor + stop before read (kill+wait)", stop_s),
        ("runner (ContainerRunner.run)", runner_s),
    ):
        print(
            f"{label:37}: p50 {statistics.median(values) * 1000:7.1f} ms"
            f"  p90 {pct(values, 0.9) * 1000:7.1f} ms"
        )
    print(f"ratio runner/floor p50: {r50 / f50:.3f}x   (target <= 1.1x)")
    print(f"ratio runner/floor-with-stop p50: {r50 / s50:.3f}x")


if __name__ == "__main__":
    asyncio.run(main())
