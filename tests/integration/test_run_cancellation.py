"""A run's model call ends with the run: after `stop`, at its timeout and at SIGTERM.

`mercury run` as a real process, the real agent image on the real engine, and the fake
model server (reached through the host API's model proxy) made to hang or to send its
answer slowly. The fake records when its client closed the connection: that is what the
provider sees when the proxy cancels a call, and what stops it generating (and billing).
Each cut call is still metered: its "model request" line is logged as not completed and
the run's row holds the tokens of the calls before it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
from typing import Any

import pytest

from mercury.app import RUN_GRACE_S
from tests.fakes.model_server import FakeModelServer, Text, ToolCall, Turn
from tests.integration.mercury_site import PASSWORD, Mercury, echo_responder

pytestmark = pytest.mark.docker

# The first call of each run: a tool call, metered in full before the call that is cut.
FIRST_INPUT, FIRST_OUTPUT = 120, 8
# How long the provider may go on after the run ended before the test calls it a leak. A
# bound, not a measurement: the kill of the container and the cut take well under it.
CUT_WITHIN_S = 15.0


def first_turn() -> Turn:
    return Turn(
        [ToolCall("bash", {"command": "true"})],
        input_tokens=FIRST_INPUT,
        output_tokens=FIRST_OUTPUT,
    )


def hanging_turn() -> Turn:
    """A model that thinks for five minutes before its first byte."""
    return Turn([Text("far too late")], delay=300)


def slow_turn() -> Turn:
    """An answer that has begun (headers and its first words are out) and needs about
    100 s more: streamed (as the agent calls), two words a second."""
    return Turn([Text("a slow and long answer " * 40)], tokens_per_second=2.0)


def two_step_responder() -> Any:
    """Per run: a tool call first, then a second call that hangs ("hang" in the prompt) or
    whose answer comes slowly (any other prompt). Runs in parallel each get their own."""

    def respond(body: dict[str, Any]) -> Turn:
        messages = body.get("messages", [])
        after_tool = any(
            isinstance(msg.get("content"), list)
            and any(b.get("type") == "tool_result" for b in msg["content"])
            for msg in messages
        )
        if not after_tool:
            return first_turn()
        prompt = json.dumps(messages[0].get("content"))
        return hanging_turn() if "hang" in prompt else slow_turn()

    return respond


def log_events(m: Mercury) -> list[dict[str, Any]]:
    events = []
    for line in m.logs().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def model_requests(m: Mercury) -> list[dict[str, Any]]:
    return [e for e in log_events(m) if e.get("event") == "model request"]


def runs_table(m: Mercury) -> list[dict[str, Any]]:
    with sqlite3.connect(m.data_dir / "mercury.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")]


def wait_for(what: str, check: Any, m: Mercury, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:g}s for {what}\n{m.logs()[-4000:]}")


def wait_requests(fake: FakeModelServer, n: int, m: Mercury, timeout: float = 90.0) -> None:
    wait_for(f"{n} model requests", lambda: len(fake.requests) >= n, m, timeout)


def assert_cut_and_metered(m: Mercury, run: dict[str, Any], status: int | None) -> None:
    """The run's two calls are metered once each: the first whole, the cut one incomplete."""
    calls = [e for e in model_requests(m) if e.get("run_id")]
    assert [(c["status"], c["completed"]) for c in calls] == [(200, True), (status, False)], calls
    assert (run["input_tokens"], run["output_tokens"]) == (FIRST_INPUT, FIRST_OUTPUT)
    assert "usage arrived after the run's totals were taken" not in m.logs()


def test_stop_cancels_the_running_model_call(site: Any, fake: FakeModelServer) -> None:
    m = site()
    m.start()
    fake.script([first_turn(), hanging_turn()])
    m.post("halt", "a long job")
    wait_requests(fake, 2, m)  # the second call is waiting for the model
    m.post("halt", "stop")
    cut = fake.wait_closed(1, timeout=CUT_WITHIN_S)
    assert cut.outcome == ""  # never answered
    wait_for("the stop notice", lambda: any("Stopped" in r["text"] for r in m.replies("halt")), m)
    (run,) = wait_for("the run's row", lambda: runs_table(m), m)
    assert run["reason"] == "aborted"
    assert_cut_and_metered(m, run, None)
    assert m.stop() == 0


def test_a_run_timeout_cancels_its_model_calls(site: Any, fake: FakeModelServer) -> None:
    m = site(timeout=30, max_concurrency=2)
    m.start()
    fake.responder = two_step_responder()
    m.post("wait", "hang on the model")
    m.post("trickle", "answer slowly")
    wait_requests(fake, 4, m, timeout=30)  # each run is in its second call before its timeout
    for space in ("wait", "trickle"):
        (reply,) = m.wait_replies(space, 1)
        assert "too long" in reply["text"], reply
    assert_second_calls_cut(m, fake)
    assert [r["reason"] for r in runs_table(m)] == ["timeout", "timeout"]
    assert m.stop() == 0


def assert_second_calls_cut(m: Mercury, fake: FakeModelServer) -> None:
    """Each run's second call (one waiting for its answer, one receiving it) was closed by
    the proxy, and every call was metered once: the first whole, the second incomplete."""
    cut = [r for r in fake.requests if r.closed_at is not None]
    assert sorted(r.outcome for r in cut) == ["", "turn"], fake.requests
    runs = wait_for("both runs' rows", lambda: len(runs_table(m)) == 2 and runs_table(m), m)
    tokens = {run["space_id"]: (run["input_tokens"], run["output_tokens"]) for run in runs}
    # The hanging call sent nothing: the run used its first call's tokens. The streamed
    # one had begun: what its stream reported before the cut (its input, the output so
    # far) is metered on top.
    assert tokens.pop("wait") == (FIRST_INPUT, FIRST_OUTPUT), tokens
    ((streamed_in, streamed_out),) = tokens.values()
    assert streamed_in > FIRST_INPUT and streamed_out >= FIRST_OUTPUT, tokens
    calls = [(c["space_id"], c["status"] or 0, c["completed"]) for c in model_requests(m)]
    assert sorted(calls) == [
        ("trickle", 200, False),
        ("trickle", 200, True),
        ("wait", 0, False),  # never answered: no status
        ("wait", 200, True),
    ], calls
    assert "usage arrived after the run's totals were taken" not in m.logs()


def test_sigterm_cuts_the_model_calls_and_stops_within_the_grace(
    site: Any, fake: FakeModelServer
) -> None:
    m = site(max_concurrency=2)
    m.start()
    fake.responder = two_step_responder()
    m.post("wait", "hang on the model")
    m.post("trickle", "answer slowly")
    wait_requests(fake, 4, m)  # each run is in its second call
    # The operator's browser has the web chat open: a live event stream must not hold up
    # the shutdown either.
    browser = urllib.request.urlopen(
        urllib.request.Request(
            f"{m.url}/api/chat/stream?space=wait", headers={"Authorization": f"Bearer {PASSWORD}"}
        ),
        timeout=30,
    )
    assert m.proc is not None
    m.proc.send_signal(signal.SIGTERM)
    # The runs get RUN_GRACE_S to finish; then they are killed, their calls cut, and
    # Mercury exits. A shutdown that waits on a model call fails here.
    try:
        code = m.proc.wait(timeout=RUN_GRACE_S + 8)
    except Exception:
        raise AssertionError(
            f"mercury still running {RUN_GRACE_S + 8:g}s after SIGTERM\n{m.logs()[-4000:]}"
        ) from None
    browser.close()
    assert m.stop() == code == 0, m.logs()[-4000:]
    # Both second calls were cut by the proxy, not merely dropped when the process exited:
    # each was metered and logged as incomplete.
    assert_second_calls_cut(m, fake)
    logs = m.logs()
    assert "shutdown timed out" not in logs and "Traceback" not in logs, logs[-4000:]
    assert [r["reason"] for r in runs_table(m)] == ["aborted", "aborted"]

    # The interrupted jobs were requeued: the next start answers each, once.
    fake.responder = echo_responder()
    m.start()
    assert [r["text"] for r in m.wait_replies("wait", 1)] == ["re: hang on the model"]
    assert [r["text"] for r in m.wait_replies("trickle", 1)] == ["re: answer slowly"]
    time.sleep(1)
    assert len(m.replies("wait")) == len(m.replies("trickle")) == 1
    assert m.stop() == 0
