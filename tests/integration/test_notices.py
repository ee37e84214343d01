"""Failure notices say what happened, and who must act, through a real `mercury run`."""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.model_server import Error, FakeModelServer, Text, Turn


def test_a_rejected_api_key_tells_the_user_the_operator_must_fix_it(
    site: Any, fake: FakeModelServer
) -> None:
    fake.responder = lambda _body: Error(401, "invalid x-api-key")
    m = site()
    m.start()
    m.post("keys", "hello")
    [reply] = m.wait_replies("keys", 1)
    assert "API key" in reply["text"] and "operator must" in reply["text"], reply
    assert "try again in a moment" not in reply["text"]
    assert "invalid x-api-key" not in reply["text"]  # provider detail is for the log
    assert m.stop() == 0


def test_a_timeout_notice_names_the_limit(site: Any, fake: FakeModelServer) -> None:
    fake.responder = lambda _body: Turn([Text("late")], delay=60)
    m = site(timeout=4)
    m.start()
    m.post("slow", "take your time")
    [reply] = m.wait_replies("slow", 1)
    assert reply["text"] == "Sorry — that took too long (over 4 s) and was stopped.", reply
    assert m.stop() == 0


def test_stop_posts_one_message(site: Any, fake: FakeModelServer) -> None:
    fake.responder = lambda _body: Turn([Text("late")], delay=60)
    m = site()
    m.start()
    m.post("halt", "work hard")
    deadline = time.monotonic() + 60
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.05)  # the run has reached the model
    m.post("halt", "/stop")
    answers = m.wait_replies("halt", 1)
    time.sleep(3)  # a second message would have arrived by now
    answers = m.replies("halt")
    assert [a["text"] for a in answers] == ["Stopped the running request."], answers
    assert m.stop() == 0
