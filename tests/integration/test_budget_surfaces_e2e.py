"""The caps' surfaces against a real `mercury run`: /budget in its web chat, and
`mercury budget` / `mercury usage` in a terminal beside it, on the same SQLite database.

A change made in one place is what the others show: the operator (an admin of web chat
spaces) sets a cap in the chat, the CLI reads it; the CLI changes it, the chat shows it;
and a run's spend, priced by the running instance, is what `mercury usage` reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.fakes.model_server import FakeModelServer, Text, Turn
from tests.integration.mercury_site import Mercury, mercury

PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}  # $0.001 a token


def test_chat_and_terminal_change_and_show_the_same_caps(
    site: Callable[..., Mercury], fake: FakeModelServer
) -> None:
    m = site(
        extra={
            "model": {"prices": {"claude-test": PRICE}},
            "budgets": {"space_day": "$5", "instance_day": "$50"},
        }
    )
    fake.script([Turn([Text("done")], input_tokens=300, output_tokens=200)])
    m.start()
    try:
        m.post("team", "hello")
        (reply,) = m.wait_replies("team", 1)
        assert reply["text"] == "done"

        m.post("team", "/budget day $3")
        answers = m.wait_replies("team", 2)
        assert answers[-1]["text"] == "This space's daily cap is now $3.00."

        r = mercury("budget", "show", "team", cwd=m.root)
        assert r.returncode == 0, r.stderr
        assert "• This space, per day: $3.00 (set for this space) — $0.50 used" in r.stdout

        r = mercury("budget", "set", "team", "space_day", "off", cwd=m.root)
        assert r.returncode == 0, r.stderr
        m.post("team", "/budget")
        shown = m.wait_replies("team", 3)[-1]["text"]
        assert "• This space, per day: no cap (set for this space)" in shown
        assert "• All spaces, per day: $50.00 — $0.50 used" in shown

        r = mercury("usage", "--json", cwd=m.root)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        (row,) = report["per_space"]
        assert (row["space_id"], row["tokens"], row["cost_usd"]) == ("team", 500, 0.5)
    finally:
        assert m.stop() == 0
