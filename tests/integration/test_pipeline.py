"""The whole pipeline: `mercury run` as a real process, the web chat, the real agent image on
the real engine, and the fake model server on loopback (reached through the host API)."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest

from mercury.sandbox.hardening import LABEL_INSTANCE
from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn
from tests.integration.mercury_site import PASSWORD, echo_responder

pytestmark = pytest.mark.docker


def test_a_message_gets_its_reply_and_a_file(site: Any, fake: FakeModelServer) -> None:
    m = site()
    m.start()
    fake.responder = echo_responder()
    m.post("alpha", "hello there")
    (reply,) = m.wait_replies("alpha", 1)
    assert reply["text"] == "re: hello there"

    fake.responder = None
    fake.script(
        [
            ToolCall("write_file", {"path": "outbox/report.txt", "content": "the report"}),
            Text("Here is the report."),
        ]
    )
    m.post("alpha", "make me a report")
    replies = m.wait_replies("alpha", 2)
    files = replies[1]["files"]
    assert replies[1]["text"] == "Here is the report."
    assert [f["name"] for f in files] == ["report.txt"]
    req = urllib.request.Request(
        m.url + files[0]["url"], headers={"Authorization": f"Bearer {PASSWORD}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.read() == b"the report"
    # the model saw the history: the first exchange is in the second run's messages
    texts = json.dumps(fake.requests[-2].body["messages"])
    assert "hello there" in texts and "re: hello there" in texts
    assert m.stop() == 0


def in_progress(m: Any, labels: dict[str, str]) -> bool:
    """A container running a message: its input.json is in, its result.json not yet."""
    io = m.data_dir / "io" / labels.get("mercury.run", "-")
    return (io / "input.json").exists() and not (io / "result.json").exists()


def test_twenty_messages_over_five_spaces_in_order_under_the_cap(
    site: Any, fake: FakeModelServer
) -> None:
    m = site(max_concurrency=2)
    m.start()
    fake.responder = echo_responder(delay=0.3)
    client = docker.from_env()
    peak = 0
    samples: list[int] = []
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            # Low-level list: no per-container inspect that races with removal.
            running = client.api.containers(
                filters={"label": f"{LABEL_INSTANCE}={m.instance}", "status": "running"}
            )
            # Runs in progress: a warm container waiting for its space's next message is
            # not one until its input.json is handed over, and a run whose result.json
            # is in is over (its container is being removed).
            running = [c for c in running if in_progress(m, c.get("Labels") or {})]
            peak = max(peak, len(running))
            samples.append(len(running))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    spaces = [f"s{i}" for i in range(5)]
    for n in range(4):
        for space in spaces:
            m.post(space, f"{space}-m{n}")
    try:
        for space in spaces:
            replies = m.wait_replies(space, 4, timeout=240)
            assert [r["text"] for r in replies] == [f"re: {space}-m{n}" for n in range(4)]
    finally:
        done.set()
        watcher.join()
        client.close()
    assert 1 <= peak <= 2
    assert len(samples) > 20  # the watcher kept watching for the whole test
    assert len(fake.requests) == 20
    assert m.stop() == 0


def test_sigkill_with_queued_and_running_jobs_loses_nothing(
    site: Any, fake: FakeModelServer
) -> None:
    m = site(max_concurrency=1)
    m.start()
    fake.responder = echo_responder(delay=2.0)
    for n in range(3):
        m.post("crash", f"c{n}")
    deadline = time.monotonic() + 60
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.05)  # the first run has reached the model
    assert fake.requests
    assert m.stop(signal.SIGKILL) == -signal.SIGKILL
    fake.responder = echo_responder()
    m.start()
    replies = m.wait_replies("crash", 3)
    time.sleep(2)  # nothing more arrives
    replies = m.replies("crash")
    assert sorted(r["text"] for r in replies) == ["re: c0", "re: c1", "re: c2"]
    assert m.stop() == 0


def test_redelivered_message_runs_once(site: Any, fake: FakeModelServer) -> None:
    m = site()
    m.start()
    fake.responder = echo_responder()
    first = m.post("dup", "only once", client_id="client-msg-1")
    second = m.post("dup", "only once", client_id="client-msg-1")
    assert first == second
    m.wait_replies("dup", 1)
    time.sleep(2)
    assert len(m.replies("dup")) == 1
    assert len(fake.requests) == 1
    assert m.stop() == 0


def test_stop_aborts_the_run_and_clears_the_queue(site: Any, fake: FakeModelServer) -> None:
    m = site(max_concurrency=2)
    m.start()
    fake.responder = echo_responder(delay=30)
    m.post("halt", "long job")
    m.post("halt", "queued behind it")
    deadline = time.monotonic() + 60
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    m.post("halt", "stop")
    texts: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        texts = [r["text"] for r in m.replies("halt")]
        if any("Stopped" in t for t in texts):
            break
        time.sleep(0.2)
    assert any("Stopped the running request" in t and "Cleared 1" in t for t in texts), texts
    # The aborted run's model call was cut (it would have answered after 30 s), and the
    # run ended without a reply of its own: /stop's line is the one message.
    fake.wait_closed(0, timeout=30)
    time.sleep(1.0)
    texts = [r["text"] for r in m.replies("halt")]
    assert len(texts) == 1, texts
    assert not any(t.startswith("re: ") for t in texts)
    assert len(fake.requests) == 1  # the queued message never ran
    assert m.stop() == 0


def test_burst_limit_and_daily_cap(site: Any, fake: FakeModelServer) -> None:
    # The web chat's operator is an admin: the cap under test is the admin role's.
    m = site(rate_limits={"burst": 2, "burst_window": 3, "daily": {"admin": 3, "member": 3}})
    m.start()
    fake.responder = echo_responder()
    m.post("rl", "a1")
    m.post("rl", "a2")
    m.post("rl", "a3")  # over the burst: refused, and it must not use daily quota
    m.wait_replies("rl", 3)
    texts = [r["text"] for r in m.replies("rl")]
    assert any("Too many requests" in t and "try again in" in t for t in texts), texts
    time.sleep(3.5)
    m.post("rl", "a4")  # third accepted request today: allowed
    m.wait_replies("rl", 4)
    time.sleep(3.5)
    m.post("rl", "a5")  # fourth: over the daily cap of 3
    replies = m.wait_replies("rl", 5)
    texts = [r["text"] for r in replies]
    assert "re: a4" in texts
    assert "Daily limit of 3" in texts[-1] and "resets at 00:00 UTC" in texts[-1]
    assert len(fake.requests) == 3
    assert m.stop() == 0


def test_sigterm_mid_run_requeues_and_the_next_start_answers(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    fake.responder = echo_responder(delay=60)  # outlasts the shutdown grace
    m.post("term", "survive a restart")
    deadline = time.monotonic() + 60
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    assert m.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 60  # bounded: grace, then kill
    assert "Traceback" not in m.logs()
    fake.responder = echo_responder()
    m.start()
    (reply,) = m.wait_replies("term", 1)
    assert reply["text"] == "re: survive a restart"
    time.sleep(1)
    assert len(m.replies("term")) == 1
    assert m.stop() == 0


def test_no_model_configured_says_what_to_configure(
    tmp_path: Path, agent_image: str, fake: FakeModelServer, site: Any
) -> None:
    m = site()
    cfg = json.loads((tmp_path / "mercury.yaml").read_text())
    cfg["model"] = {"chain": [{"provider": "anthropic", "model": "claude-test"}]}
    (tmp_path / "mercury.yaml").write_text(json.dumps(cfg))
    (tmp_path / ".env").write_text(f"MERCURY_DASHBOARD_PASSWORD={PASSWORD}\n")
    m.start()
    m.post("nokey", "hello?")
    (reply,) = m.wait_replies("nokey", 1)
    assert "ANTHROPIC_API_KEY" in reply["text"] and "no model configured" in reply["text"]
    assert fake.requests == []
    assert m.stop() == 0


def test_mercury_run_streams_the_answer_and_hands_the_next_message_to_a_warm_container(
    site: Any, fake: FakeModelServer
) -> None:
    """The shipped defaults through a real `mercury run`: the answer shows as a preview
    while the model writes it (web chat), and the space's second message goes to the
    container that waited for it."""
    m = site(warm=True)
    m.start()
    words = [f"w{i:02d}" for i in range(30)]
    fake.script([Text("first")])
    m.post("warm", "one")
    assert m.wait_replies("warm", 1)[0]["text"] == "first"
    deadline = time.monotonic() + 60
    while "warm.ready" not in m.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    fake.script([Turn([Text(" ".join(words))], first_token_delay=0.3, tokens_per_second=10)])
    m.post("warm", "two")
    previews: list[str] = []
    while time.monotonic() < deadline + 60 and len(m.replies("warm")) < 2:
        previews += [e["text"] for e in m.messages("warm") if e.get("preview")]
        time.sleep(0.05)
    assert m.wait_replies("warm", 2)[1]["text"].split() == words
    assert previews, "no preview was shown while the model wrote"
    assert any(0 < len(p.split()) < len(words) for p in previews)  # part of the answer
    logs = m.logs()
    assert "warm.handover" in logs, logs[-3000:]

    # The preview is withdrawn once the reply is out (just after it: the reply replaces it).
    def previews_left() -> list[dict[str, Any]]:
        return [e for e in m.messages("warm") if e.get("preview")]

    until = time.monotonic() + 30
    while previews_left() and time.monotonic() < until:
        time.sleep(0.1)
    assert not previews_left()
    assert m.stop() == 0
