"""Time to the first model request and to the first visible text, on today's cold path.

    .venv/bin/python bench/first_response.py [-n 20] [--first-token-delay 0.3]
                                             [--tokens-per-second 50] [--words 20]

A real `mercury run` (tests/integration/mercury_site.py) with the real agent image
(container/Dockerfile, built FROM the local base image) and the fake model server as its
model, paced like a real one: the first token after `--first-token-delay`, then
`--tokens-per-second`, for a reply of `--words` words. One message at a time in one web
space; for each:

- message -> first model request: from just before POST /api/chat/messages until the
  fake model server has the agent's first request (its `received_at`; same process, same
  monotonic clock). This is the container start plus the agent's own start-up.
- message -> first visible text: until the web chat's event stream
  (GET /api/chat/stream) delivers the first assistant text. Today that is the whole
  reply, after the whole answer was generated.

Interleaved with two floors on the same image, so machine drift hits all alike: a bare
SDK `docker run` of `true` (create + start + wait, no hardening, no mounts), and the same
with the agent's entry point (`mercury-agent --version`: container plus Python and the
agent's imports). Issue 13's warm containers are measured against these figures. Prints
p50 and p90 and the ratios; no assertions.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake model server and the site harness live in tests/

from runner_latency import UID, base_image, pct  # noqa: E402

from mercury.sandbox.images import build_agent_image, resolve_base  # noqa: E402
from tests.fakes.model_server import FakeModelServer, Text, Turn  # noqa: E402
from tests.integration.mercury_site import PASSWORD, Mercury  # noqa: E402

TAG = "mercury-bench-agent:latest"
SPACE = "first"


@dataclass
class Seen:
    """One event of the web chat's stream, with the monotonic time it was read."""

    at: float
    kind: str
    data: dict[str, Any]


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

    def first_text(self, since: float, timeout: float = 120) -> tuple[float, float | None]:
        """Seconds from `since` to the first assistant text; also to the first status
        (the run indicator) if one came before it. Drains the events of this message."""
        status: float | None = None
        deadline = time.monotonic() + timeout
        while True:
            seen = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if seen.at < since or seen.kind not in ("message", "edit"):
                continue
            role, text = seen.data.get("role"), seen.data.get("text")
            if role == "status" and status is None:
                status = seen.at - since
            if role == "assistant" and text:
                return seen.at - since, status

    def close(self) -> None:
        self._resp.close()


def build_image(client: docker.DockerClient, base: str) -> None:
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


def one_message(site: Mercury, fake: FakeModelServer, stream: ChatStream, i: int) -> Any:
    """(first model request, first assistant text, first status or None), in seconds."""
    before = len(fake.requests)
    t0 = time.monotonic()
    site.post(SPACE, f"question {i}")
    text, status = stream.first_text(t0)
    new = fake.requests[before:]
    if not new or new[0].received_at is None:
        raise SystemExit(f"message {i}: a reply without a model request?\n{site.logs()[-3000:]}")
    return new[0].received_at - t0, text, status


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:<44}: p50 {statistics.median(values) * 1000:7.1f} ms  "
        f"p90 {pct(values, 0.9) * 1000:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20, help="messages (default 20)")
    parser.add_argument("--first-token-delay", type=float, default=0.3, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=50.0, metavar="RATE")
    parser.add_argument("--words", type=int, default=20, help="words in each reply")
    parser.add_argument("--base", default=None, help="base image for the agent image")
    args = parser.parse_args()

    client = docker.from_env()
    build_image(client, base_image(args.base))
    reply = " ".join(f"word{k}" for k in range(args.words))
    model_time = args.first_token_delay + (args.words - 1) / args.tokens_per_second

    fake = FakeModelServer(
        first_token_delay=args.first_token_delay, tokens_per_second=args.tokens_per_second
    )
    fake.responder = lambda _body: Turn([Text(reply)])
    with fake, tempfile.TemporaryDirectory(prefix="mercury-bench-") as tmp:
        site = Mercury(Path(tmp), TAG, fake, max_concurrency=4)
        site.start()
        stream = ChatStream(site, SPACE)
        try:
            one_message(site, fake, stream, -1)  # warm-up: the space's first run
            floor_once(client, ["true"])
            first_req: list[float] = []
            first_text: list[float] = []
            first_status: list[float] = []
            floor_true: list[float] = []
            floor_agent: list[float] = []
            for i in range(args.n):
                req, text, status = one_message(site, fake, stream, i)
                first_req.append(req)
                first_text.append(text)
                if status is not None:
                    first_status.append(status)
                floor_true.append(floor_once(client, ["true"]))
                floor_agent.append(floor_once(client, ["mercury-agent", "--version"]))
        finally:
            stream.close()
            site.stop()

    f50 = statistics.median(floor_true)
    a50 = statistics.median(floor_agent)
    r50 = statistics.median(first_req)
    t50 = statistics.median(first_text)
    print(
        f"{args.n} messages in one space, one at a time, interleaved with the floors; "
        f"model: first token {args.first_token_delay * 1000:.0f} ms, "
        f"{args.tokens_per_second:g} tokens/s, {args.words} words "
        f"(whole answer {model_time * 1000:.0f} ms)"
    )
    print(line("floor: docker run true (create+start+wait)", floor_true))
    print(line("floor: docker run mercury-agent --version", floor_agent))
    print(line("message -> first model request", first_req))
    if first_status:
        print(line(f"message -> first status ({len(first_status)} seen)", first_status))
    print(line("message -> first visible text (web stream)", first_text))
    print(f"ratio first request / floor true p50        : {r50 / f50:.2f}x")
    print(f"ratio first request / floor agent p50       : {r50 / a50:.2f}x")
    print(f"ratio first text / first-token delay p50     : {t50 / args.first_token_delay:.2f}x")
    print(
        f"first text - first request p50               : {(t50 - r50) * 1000:7.1f} ms "
        f"(model answer {model_time * 1000:.0f} ms + reply delivery)"
    )


if __name__ == "__main__":
    main()
