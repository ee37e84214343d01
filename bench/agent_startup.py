"""The agent runtime's start-up inside its image, and what a waiting (warm) container holds.

    .venv/bin/python bench/agent_startup.py [-n 5] [--importtime-runs 3] [--base IMAGE]

Builds the agent image from container/Dockerfile (as bench/first_response.py does), then,
each container limited to one CPU as Mercury's runs are (`container.cpus: 1.0`), with no
network, as the run's user:

1. `python -X importtime -c "import mercury_agent.main, mercury_agent.agent; import
   anthropic"` (`--importtime-runs` times): the total import time (the sum of every
   module's own time) and the 10 imports with the largest cumulative time (median over
   the runs), also the total for the agent's own modules without the model SDK;
2. alternating, `-n` times: `mercury-agent --version` (create + start + wait for the exit:
   Python and the agent's own modules) against the waiting mode a warm container runs,
   `mercury-agent --wait` with MERCURY_PRELOAD=anthropic (create + start until its
   "waiting for input.json" line is in its log: everything a run imports, done);
3. the memory each of those waiting containers holds once ready (`docker stats`, one
   shot: usage less inactive page cache, as the CLI shows it), median: the memory cost
   of one warm container.

Prints medians and p90s; no assertions.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_response import READY_LINE, TAG, build_image, memory_of
from runner_latency import UID, base_image, pct

PYTHON = "/opt/mercury-agent/bin/python"
AGENT = "/opt/mercury-agent/bin/mercury-agent"
IMPORTS = "import mercury_agent.main, mercury_agent.agent; import anthropic"
AGENT_ONLY = "import mercury_agent.main, mercury_agent.agent"
# "import time: self [us] | cumulative | imported package", the name indented by depth.
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def host_config(api: docker.APIClient) -> dict[str, object]:
    """One CPU, no network, read-only root with a /tmp: like a run's container, without
    the mounts (the figures here are the image's, not the host's)."""
    return api.create_host_config(
        network_mode="none",
        nano_cpus=1_000_000_000,
        mem_limit="1g",
        read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},
    )


def create(api: docker.APIClient, command: list[str], **kw: object) -> str:
    return str(
        api.create_container(
            TAG,
            entrypoint=command[:1],
            command=command[1:],
            user=f"{UID}:{UID}",
            host_config=host_config(api),
            **kw,
        )["Id"]
    )


def importtime(client: docker.DockerClient, code: str) -> tuple[float, dict[str, tuple[int, int]]]:
    """Seconds of import time in all (the sum of self times) and, per module, (cumulative
    us, depth) from one `python -X importtime -c code` in the image."""
    api = client.api
    cid = create(api, [PYTHON, "-X", "importtime", "-c", code])
    try:
        api.start(cid)
        code_ = api.wait(cid, timeout=120)["StatusCode"]
        err = api.logs(cid, stdout=False, stderr=True).decode()
    finally:
        api.remove_container(cid, force=True)
    if code_ != 0:
        raise SystemExit(f"python -X importtime exited {code_}:\n{err[-2000:]}")
    total = 0
    modules: dict[str, tuple[int, int]] = {}
    for line in err.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            total += int(m.group(1))
            depth = len(m.group(3)) // 2
            modules.setdefault(m.group(4), (int(m.group(2)), depth))
    return total / 1e6, modules


def version_once(client: docker.DockerClient) -> float:
    """create + start + wait of `mercury-agent --version`, in seconds."""
    api = client.api
    t0 = time.perf_counter()
    cid = create(api, [AGENT, "--version"])
    api.start(cid)
    code = api.wait(cid, timeout=60)["StatusCode"]
    elapsed = time.perf_counter() - t0
    api.remove_container(cid, force=True)
    if code != 0:
        raise SystemExit(f"mercury-agent --version exited {code}")
    return elapsed


def waiting_once(client: docker.DockerClient) -> tuple[float, tuple[int, int]]:
    """create + start of `mercury-agent --wait` until its ready line; (seconds, memory)."""
    api = client.api
    t0 = time.perf_counter()
    cid = create(
        api,
        [AGENT, "--wait", "--wait-timeout", "120"],
        environment={"MERCURY_PRELOAD": "anthropic", "MERCURY_IO_DIR": "/run/mercury-io"},
    )
    try:
        api.start(cid)
        seen = b""
        for chunk in api.logs(cid, stdout=False, stderr=True, stream=True, follow=True):
            seen += chunk
            if READY_LINE in seen:
                break
        elapsed = time.perf_counter() - t0
        if READY_LINE not in seen:
            raise SystemExit(f"the waiting mode never said it was ready:\n{seen[-2000:]!r}")
        return elapsed, memory_of(client, cid)
    finally:
        api.remove_container(cid, force=True)


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:7.1f} ms  p90 {pct(values, 0.9) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5, help="start-ups of each (default 5)")
    parser.add_argument("--importtime-runs", type=int, default=3, metavar="N")
    parser.add_argument("--base", default=None, help="base image for the agent image")
    args = parser.parse_args()

    client = docker.from_env()
    build_image(client, base_image(args.base))
    version_once(client)  # warm-up: the image's layers into the page cache

    totals: list[float] = []
    agent_totals: list[float] = []
    cumulative: dict[str, list[int]] = defaultdict(list)
    depth: dict[str, int] = {}
    for _ in range(args.importtime_runs):
        total, modules = importtime(client, IMPORTS)
        totals.append(total)
        for name, (cum, d) in modules.items():
            cumulative[name].append(cum)
            depth[name] = d
        agent_totals.append(importtime(client, AGENT_ONLY)[0])

    version: list[float] = []
    ready: list[float] = []
    mem_shown: list[int] = []
    mem_raw: list[int] = []
    for _ in range(args.n):
        version.append(version_once(client))
        seconds, (raw, shown) = waiting_once(client)
        ready.append(seconds)
        mem_raw.append(raw)
        mem_shown.append(shown)

    print(
        f"agent image {TAG}, containers with 1 CPU; importtime runs: {args.importtime_runs}, "
        f"start-ups of each: {args.n}"
    )
    print(f'python -X importtime -c "{IMPORTS}"')
    print(
        f"  total import time (sum of self)          : {statistics.median(totals) * 1000:7.1f} ms"
    )
    print(
        f"  the agent's modules alone (no anthropic): "
        f"{statistics.median(agent_totals) * 1000:7.1f} ms (a run of the line without anthropic)"
    )
    print("  top 10 cumulative imports (median, depth 0 = imported by the -c line):")
    top = sorted(cumulative, key=lambda k: statistics.median(cumulative[k]), reverse=True)[:10]
    for name in top:
        print(
            f"    {statistics.median(cumulative[name]) / 1000:8.1f} ms  "
            f"{'  ' * depth[name]}{name} (depth {depth[name]})"
        )
    print(f"mercury-agent --version (create+start+exit)  : {ms(version)}")
    print(f"mercury-agent --wait until its ready line    : {ms(ready)}")
    print(
        f"ready - version (p50)                        : "
        f"{(statistics.median(ready) - statistics.median(version)) * 1000:7.1f} ms"
    )
    print(
        f"memory of a waiting container (median of {args.n}) : "
        f"{statistics.median(mem_shown) / 2**20:.1f} MiB as docker stats shows it "
        f"(min {min(mem_shown) / 2**20:.1f}, max {max(mem_shown) / 2**20:.1f}; "
        f"usage with page cache {statistics.median(mem_raw) / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
