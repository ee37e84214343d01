"""The space's memory end to end: `mercury run` as a real process, the real agent image on
the real engine, the fake model writing MEMORY.md with the write_file tool, and a later
run's system prompt (what the fake model received) holding it.

The fact is told in one conversation and asked for after /clear, so the later run's
history has none of it: only MEMORY.md can bring it back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes.model_server import FakeModelServer, Text, ToolCall

pytestmark = pytest.mark.docker


def system_text(body: dict[str, Any]) -> str:
    """A model request's system prompt (the Anthropic wire format: a list of blocks)."""
    system = body.get("system")
    if isinstance(system, str):
        return system
    return "\n".join(block.get("text", "") for block in system or [])


def test_a_fact_kept_in_memory_reaches_a_later_conversation(
    site: Any, fake: FakeModelServer
) -> None:
    m = site()
    m.start()
    fake.script(
        [
            ToolCall(
                "write_file",
                {"path": "/space/MEMORY.md", "content": "The project codename is BLUEBIRD.\n"},
            ),
            Text("Noted: BLUEBIRD."),
        ]
    )
    m.post("mem", "Please remember: our project codename is BLUEBIRD.")
    assert m.wait_replies("mem", 1)[0]["text"] == "Noted: BLUEBIRD."
    # The first run's prompt had the new space's MEMORY.md, without the fact yet.
    first = system_text(fake.requests[0].body)
    assert "## The space's memory (MEMORY.md)" in first and "BLUEBIRD" not in first

    m.post("mem", "/clear")
    assert "fresh conversation" in m.wait_replies("mem", 2)[-1]["text"]

    fake.script([Text("The codename is BLUEBIRD.")])
    m.post("mem", "What is our project codename?")
    assert m.wait_replies("mem", 3)[-1]["text"] == "The codename is BLUEBIRD."
    body = fake.requests[-1].body
    system = system_text(body)
    assert "<<< MEMORY.md\nThe project codename is BLUEBIRD.\n>>> end of MEMORY.md" in system
    assert "Condense it now" not in system  # within the cap: no note
    # A fresh context: the conversation that told it is not in this run's history.
    messages = json.dumps(body["messages"])
    assert "What is our project codename?" in messages and "BLUEBIRD" not in messages
    assert m.stop() == 0


def test_a_memory_over_the_cap_is_shown_in_part_and_the_agent_asked_to_condense(
    site: Any, fake: FakeModelServer
) -> None:
    m = site(extra={"memory": {"max_chars": 100}})
    m.start()
    notes = "".join(f"- 2026-01-{day:02d}: decision number {day:02d}\n" for day in range(1, 11))
    assert len(notes) == 330  # 33 characters a line
    fake.script(
        [
            ToolCall("write_file", {"path": "/space/MEMORY.md", "content": notes}),
            Text("Written."),
        ]
    )
    m.post("cap", "note ten decisions")
    m.wait_replies("cap", 1)

    fake.script([Text("Condensing.")])
    m.post("cap", "anything new?")
    m.wait_replies("cap", 2)
    system = system_text(fake.requests[-1].body)
    assert "MEMORY.md is 330 characters, over the cap of 100" in system
    assert "only its first 99 characters are shown below, the rest is not shown" in system
    assert "Condense it now" in system
    assert "decision number 03\n>>> not shown: the rest of MEMORY.md" in system
    assert "decision number 04" not in system  # cut at a line, the rest not shown
    assert m.stop() == 0
