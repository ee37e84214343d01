"""Time to the first model request and to the first visible text: cold vs warm containers.

    .venv/bin/python bench/first_response.py [-n 12] [--first-token-delay 0.3]
                                             [--tokens-per-second 50] [--words 20]
                                             [--no-floors] [--no-stream]

Two real `mercury run` sites side by side (tests/integration/mercury_site.py), the same
real agent image (container/Dockerfile, built FROM the local base image), each with its
own fake model server paced alike (the first token after `--first-token-delay`, then
`--tokens-per-second`, for a reply of `--words` words):

- cold: `container.warm.enabled: false`, so every message starts a fresh container and
  the agent in it from nothing (the path of every message before issue 13);
- warm: the defaults (warm containers on), one space; a first, unmeasured message makes
  the space active, and from then on each message should be handed to the container the
  runner made and started for it while the previous one ran (`mercury-agent --wait`).

Messages alternate cold, warm, cold, warm..., so drift in the machine's load hits both.
Before each pair the bench waits until the warm space's next container has printed its
"ready" line (imports done, polling for input.json): a user's next message usually comes
seconds after the last reply (bench/back_to_back.py measures messages that do not wait),
and nothing is left running in the background while the cold message is measured.
Streamed replies are on for both (the web chat's default: a preview posted with the first
text and edited every 0.1 s); `--no-stream` turns them off on both. For each:

- message -> first model request: from just before POST /api/chat/messages until the
  site's fake model server has the agent's first request (same process, same clock);
- message -> first visible text: until the web chat's event stream (GET /api/chat/stream)
  delivers the first assistant text (the preview, or the reply when nothing streams);
- message -> reply: until the final reply (not the preview) is on the stream.

Also per warm message: when Mercury's log has its "warm.handover" (input.json written
into the waiting container), which splits the first-request time into Mercury's part and
the agent's, and the memory the waiting container held just before (docker stats, one
shot: usage less inactive page cache, as the CLI shows it). Interleaved with two floors
unless `--no-floors`: a bare SDK `docker run` of `true` and of `mercury-agent --version`
(no hardening, no CPU limit: a container, and Python with the agent's own modules).
Prints p50, p90 and ratios; no assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake model server and the site harness live in tests/

from runner_latency import UID, base_image, pct  # noqa: E402

from mercury.sandbox.images import build_agent_image, resolve_base  # noqa: E402
from mercury.sandbox.iodir import INPUT_NAME, io_root  # noqa: E402
from tests.fakes.model_server import FakeModelServer, Text, Turn  # noqa: E402
from tests.integration.mercury_site import PASSWORD, Mercury  # noqa: E402

TAG = "mercury-bench-agent:latest"
SPACE = "first"
READY_LINE = b"waiting for input.json"  # the agent's waiting mode, once its imports are done


@dataclass
class Seen:
    """One event of the web chat's stream, with the monotonic time it was read."""

    at: float
    kind: str
    data: dict[str, Any]


@dataclass
class Timeline:
    """One message as the web chat's stream showed it; seconds from the post."""

    first_text: float
    reply: float
    first_status: float | None = None
    previewed: bool = False  # a preview message was shown (edited, then deleted)
    edits: int = 0


@dataclass
class Series:
    """The figures of one site."""

    request: list[float] = field(default_factory=list)
    text: list[float] = field(default_factory=list)
    reply: list[float] = field(default_factory=list)
    previewed: int = 0
    # message -> the run's "warm.handover" in Mercury's log (messages that had one)
    handover: list[float] = field(default_factory=list)
    handover_to_request: list[float] = field(default_factory=list)


class ChatStream:
    """Follows GET /api/chat/stream for a space on a thread, timestamping every event.

    A thread with a blocking read: the time an event is read is the time a browser's
    EventSource would have it, give or take a thread switch.
    """

    def __init__(self, site: Mercury, space: str) -> None:
        self.events: queue.Queue[Seen] = queue.Queue()
        req = urllib.request.Request(
            f"{site.url}/api/chat/stream?space={space}",
            headers={"Authorization": f"Bearer {PASSWORD}", "Accept": "text/event-stream"},
        )
        self._resp = urllib.request.urlopen(req, timeout=600)
        self._thread = threading.Thread(target=self._read, name="chat-stream", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, data = "message", ""
        try:
            for raw in self._resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    self.events.put(Seen(time.monotonic(), kind, json.loads(data)))
                    kind, data = "message", ""
        except (OSError, ValueError, AttributeError):
            pass  # closed under the read at the end (http.client drops its file: None)

    def follow(self, since: float, reply: str, timeout: float = 120) -> Timeline:
        """The events of the message posted at `since`, until its final reply is shown.

        The final reply is an assistant "message" with the whole `reply` text that is not
        a preview: a preview is marked (`preview`), or edited, or deleted; and the reply
        is only complete to a reader once every preview is gone (a preview is deleted
        right after the reply is posted).
        """
        first_text: float | None = None
        status: float | None = None
        previews: set[str] = set()
        deleted: set[str] = set()
        finals: dict[str, float] = {}
        edits = 0
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply within {timeout:g} s")
            try:
                seen = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if seen.at < since:
                continue  # the tail of an earlier message
            data, at = seen.data, seen.at - since
            if seen.kind == "delete":
                deleted.add(str(data.get("id")))
            elif seen.kind in ("message", "edit"):
                role, text, mid = data.get("role"), data.get("text"), str(data.get("id"))
                if role == "status" and status is None:
                    status = at
                if role == "assistant" and text:
                    if first_text is None:
                        first_text = at
                    if seen.kind == "edit" or data.get("preview"):
                        previews.add(mid)
                        edits += seen.kind == "edit"
                    elif text.strip() == reply:
                        finals.setdefault(mid, at)
            done = [t for mid, t in finals.items() if mid not in previews | deleted]
            if done and first_text is not None and previews <= deleted:
                return Timeline(first_text, min(done), status, bool(previews), edits)

    def close(self) -> None:
        self._resp.close()


def build_image(client: docker.DockerClient, base: str) -> None:
    """The agent image from container/Dockerfile (it must have the `--wait` mode)."""
    lines: list[str] = []
    try:
        build_agent_image(client, base=resolve_base(client, base), tag=TAG, on_event=lines.append)
    except Exception:
        print("\n".join(lines[-40:]), file=sys.stderr)
        raise


def floor_once(client: docker.DockerClient, command: list[str]) -> float:
    """Bare SDK `docker run --rm IMAGE command`: create + start + wait; removal not timed."""
    api = client.api
    t0 = time.perf_counter()
    cid = api.create_container(
        TAG,
        entrypoint=command[:1],
        command=command[1:],
        user=f"{UID}:{UID}",
        host_config=api.create_host_config(network_mode="none"),
    )["Id"]
    api.start(cid)
    code = api.wait(cid, timeout=60)["StatusCode"]
    elapsed = time.perf_counter() - t0
    api.remove_container(cid, force=True)
    if code != 0:
        raise SystemExit(f"floor container {command} exited {code}")
    return elapsed


def memory_of(client: docker.DockerClient, cid: str) -> tuple[int, int]:
    """(usage, usage less inactive page cache) in bytes: `docker stats`' one-shot figures
    (the CLI shows the second one)."""
    stats = client.api.stats(cid, stream=False, one_shot=True)
    mem = stats.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    inner = mem.get("stats") or {}
    cache = int(inner.get("total_inactive_file", inner.get("inactive_file", 0)) or 0)
    return usage, usage - cache


def waiting_container(client: docker.DockerClient, site: Mercury) -> str | None:
    """The id of the site's warm container that waits now with its imports done (no
    input.json handed over yet, and its "ready" line in its log); None if there is none."""
    found = client.api.containers(
        filters={"label": [f"mercury.instance={site.instance}", "mercury.warm=true"]}
    )
    for info in found:
        run_id = (info.get("Labels") or {}).get("mercury.run", "")
        if not run_id or (io_root(site.data_dir) / run_id / INPUT_NAME).exists():
            continue  # handed over already: a run now
        try:
            log = client.api.logs(info["Id"], stdout=False, stderr=True)
        except docker.errors.APIError:
            continue  # removed meanwhile
        if READY_LINE in log:
            return str(info["Id"])
    return None


def wait_ready(client: docker.DockerClient, site: Mercury, timeout: float = 60) -> str | None:
    """Wait for the site's next container to be waiting; its id, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cid = waiting_container(client, site)
        if cid is not None:
            return cid
        time.sleep(0.05)
    return None


def handovers(site: Mercury) -> int:
    """How many runs Mercury's log says were handed to a waiting container so far."""
    return sum('"warm.handover"' in line for line in site.logs().splitlines())


@dataclass
class Site:
    """One `mercury run` with its fake model, its chat stream and its figures."""

    name: str
    mercury: Mercury
    fake: FakeModelServer
    stream: ChatStream | None = None
    series: Series = field(default_factory=Series)


def start_site(name: str, root: Path, fake: FakeModelServer, *, warm: bool, stream: bool) -> Site:
    extra = {
        "container": {"warm": {"enabled": warm}},
        "adapters": {"web": {"stream": {"enabled": stream}}},
    }
    site = Mercury(root, TAG, fake, max_concurrency=4, extra=extra)
    site.start()
    return Site(name, site, fake, ChatStream(site, SPACE))


def one_message(site: Site, reply: str, label: str, record: bool = True) -> Timeline:
    """Post one message to the site's space and follow it to its final reply."""
    assert site.stream is not None
    before = len(site.fake.requests)
    t0, wall0 = time.monotonic(), time.time()
    site.mercury.post(SPACE, f"question {label}")
    try:
        seen = site.stream.follow(t0, reply)
    except TimeoutError as exc:
        raise SystemExit(f"{site.name} {label}: {exc}\n{site.mercury.logs()[-4000:]}") from None
    new = site.fake.requests[before:]
    if not new or new[0].received_at is None:
        raise SystemExit(f"{site.name} {label}: a reply without a model request?")
    if record:
        s = site.series
        s.request.append(new[0].received_at - t0)
        s.text.append(seen.first_text)
        s.reply.append(seen.reply)
        s.previewed += seen.previewed
        handed = handover_at(site.mercury, wall0)
        if handed is not None:
            s.handover.append(handed - wall0)
            s.handover_to_request.append(new[0].received_at - t0 - (handed - wall0))
    return seen


def handover_at(site: Mercury, since: float) -> float | None:
    """The wall-clock time (time.time()) of the first "warm.handover" in Mercury's log at
    or after `since`: when the runner wrote the run's input.json into its waiting
    container (the log's timestamps are the same machine's clock, in microseconds)."""
    for raw in site.logs().splitlines():
        if '"warm.handover"' not in raw:
            continue
        try:
            stamp = json.loads(raw)["timestamp"].replace("Z", "+00:00")
        except (ValueError, KeyError):
            continue
        at = datetime.fromisoformat(stamp).timestamp()
        if at >= since:
            return at
    return None


def fake_model(args: argparse.Namespace, reply: str) -> FakeModelServer:
    fake = FakeModelServer(
        first_token_delay=args.first_token_delay, tokens_per_second=args.tokens_per_second
    )
    fake.responder = lambda _body: Turn([Text(reply)])
    return fake


@contextlib.contextmanager
def cold_and_warm_sites(
    args: argparse.Namespace, reply: str, *, stream: bool
) -> Iterator[tuple[Site, Site]]:
    """The two `mercury run` sites the benches compare, each with its own paced fake
    model: warm containers off, and the defaults. Stopped (and their streams closed) on
    the way out."""
    with (
        fake_model(args, reply) as cold_fake,
        fake_model(args, reply) as warm_fake,
        tempfile.TemporaryDirectory(prefix="mercury-bench-") as tmp,
    ):
        (Path(tmp) / "cold").mkdir()
        (Path(tmp) / "warm").mkdir()
        cold = start_site("cold", Path(tmp) / "cold", cold_fake, warm=False, stream=stream)
        warm = start_site("warm", Path(tmp) / "warm", warm_fake, warm=True, stream=stream)
        try:
            yield cold, warm
        finally:
            for site in (cold, warm):
                if site.stream is not None:
                    site.stream.close()
                site.mercury.stop()


def line(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<46}: (none)"
    return (
        f"{label:<46}: p50 {statistics.median(values) * 1000:7.1f} ms  "
        f"p90 {pct(values, 0.9) * 1000:7.1f} ms"
    )


def mib(values: list[int]) -> str:
    return f"{statistics.median(values) / 2**20:.1f} MiB" if values else "(none)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=12, help="messages per site (default 12)")
    parser.add_argument("--first-token-delay", type=float, default=0.3, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=50.0, metavar="RATE")
    parser.add_argument("--words", type=int, default=20, help="words in each reply")
    parser.add_argument("--no-floors", action="store_true", help="skip the docker run floors")
    parser.add_argument("--no-stream", action="store_true", help="streamed replies off")
    parser.add_argument("--base", default=None, help="base image for the agent image")
    args = parser.parse_args()

    client = docker.from_env()
    build_image(client, base_image(args.base))
    reply = " ".join(f"word{k}" for k in range(args.words))
    model_time = args.first_token_delay + (args.words - 1) / args.tokens_per_second
    stream = not args.no_stream

    floor_true: list[float] = []
    floor_agent: list[float] = []
    ready_wait: list[float] = []
    mem_raw: list[int] = []
    mem_shown: list[int] = []
    not_ready = 0
    with cold_and_warm_sites(args, reply, stream=stream) as (cold, warm):
        # Unmeasured: each space's first run (always cold; on the warm site it makes
        # the space active, so its next container is made) and the floors' first run.
        one_message(cold, reply, "warm-up", record=False)
        one_message(warm, reply, "warm-up", record=False)
        if not args.no_floors:
            floor_once(client, ["true"])
        warm_done = time.monotonic()
        for i in range(args.n):
            # First the warm site's next container must have done its imports: then
            # nothing runs in the background while the floors and the cold message
            # are measured, and the warm message finds it ready.
            # (Not a minute each time once one never came: the warm path is broken.)
            cid = wait_ready(client, warm.mercury, timeout=5 if not_ready else 60)
            if cid is None:
                not_ready += 1
            else:
                ready_wait.append(time.monotonic() - warm_done)
                raw, shown = memory_of(client, cid)
                mem_raw.append(raw)
                mem_shown.append(shown)
            if not args.no_floors:
                floor_true.append(floor_once(client, ["true"]))
                floor_agent.append(floor_once(client, ["mercury-agent", "--version"]))
            one_message(cold, reply, str(i))
            one_message(warm, reply, str(i))
            warm_done = time.monotonic()
        cold_handed, warm_handed = handovers(cold.mercury), handovers(warm.mercury)
        warm_log = warm.mercury.logs()

    c, w = cold.series, warm.series
    print(
        f"{args.n} messages per site, alternating cold / warm, one space each; model: first "
        f"token {args.first_token_delay * 1000:.0f} ms, {args.tokens_per_second:g} tokens/s, "
        f"{args.words} words (whole answer {model_time * 1000:.0f} ms); streamed replies "
        f"{'on (web chat interval 0.1 s)' if stream else 'off'}"
    )
    if floor_true:
        print(line("floor: docker run true (create+start+wait)", floor_true))
        print(line("floor: docker run mercury-agent --version", floor_agent))
    for label, values in (
        ("cold: message -> first model request", c.request),
        ("warm: message -> first model request", w.request),
        ("warm:   message -> hand-over (Mercury's log)", w.handover),
        ("warm:   hand-over -> first model request", w.handover_to_request),
        ("cold: message -> first visible text", c.text),
        ("warm: message -> first visible text", w.text),
        ("cold: message -> reply (final message)", c.reply),
        ("warm: message -> reply (final message)", w.reply),
        ("warm: reply -> next container ready (imports)", ready_wait),
    ):
        print(line(label, values))
    r_cold, r_warm = statistics.median(c.request), statistics.median(w.request)
    t_warm = statistics.median(w.text)
    print(f"ratio first request cold / warm p50          : {r_cold / r_warm:.1f}x (target >= 20x)")
    print(
        f"ratio first request cold / warm p90          : "
        f"{pct(c.request, 0.9) / pct(w.request, 0.9):.1f}x"
    )
    print(f"warm first request p50                       : {r_warm * 1000:.1f} ms (target <= 50)")
    print(
        f"warm first text p50 - first-token delay      : "
        f"{(t_warm - args.first_token_delay) * 1000:.1f} ms (target <= 100)"
    )
    print(
        f"ratio first text cold / warm p50             : {statistics.median(c.text) / t_warm:.1f}x"
    )
    print(
        f"previews shown (cold, warm)                  : "
        f"{c.previewed}/{args.n}, {w.previewed}/{args.n}"
    )
    print(
        f"hand-overs in the logs (cold, warm)          : {cold_handed}, {warm_handed} "
        f"(warm: {args.n} measured messages; {not_ready} found no waiting container)"
    )
    print(
        f"memory of a waiting container (median of {len(mem_raw)}): {mib(mem_shown)} as docker "
        f"stats shows it (usage {mib(mem_raw)} with page cache)"
    )
    if warm_handed < args.n:
        events = [x for x in warm_log.splitlines() if '"warm.' in x]
        print("warm site's warm.* log events:\n" + "\n".join(events[-30:]), file=sys.stderr)


if __name__ == "__main__":
    main()
