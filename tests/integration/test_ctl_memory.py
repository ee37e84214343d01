"""`mercury-ctl memory` as a real process against the real host API on 127.0.0.1 (the
fixture of test_ctl.py): each run reaches only the note of the person it answers."""

from __future__ import annotations

from mercury.storage import get_note
from mercury.storage.person_notes import MAX_NOTE_CHARS
from tests.integration.test_ctl import Relay, relay

__all__ = ["relay"]  # the fixture shared with test_ctl.py


async def test_show_set_append_clear_for_the_runs_own_person(relay: Relay) -> None:
    ada = relay.tokens.mint("run-ada", "space-a", "member", user_key="telegram:501")
    bob = relay.tokens.mint("run-bob", "space-a", "member", user_key="telegram:502")

    r = await relay.run("memory", token=ada)
    assert (r.code, r.out.strip(), r.err) == (0, "(no note about this person yet)", "")
    r = await relay.run("memory", "set", "prefers metric units", token=ada)
    assert (r.code, r.out.strip()) == (0, f"note saved (20 of {MAX_NOTE_CHARS} characters)")
    r = await relay.run("memory", "append", "works on the Q3 report", token=ada)
    assert r.code == 0, r.err
    r = await relay.run("memory", "show", token=ada)
    assert r.out.strip() == "prefers metric units\nworks on the Q3 report"
    stored = await get_note(relay.db, "space-a", "telegram:501")
    assert stored is not None and stored.updated_by == "run:run-ada"

    # Bob's run sees nothing of Ada's, and its clear is Bob's own.
    r = await relay.run("memory", "show", token=bob)
    assert r.out.strip() == "(no note about this person yet)"
    r = await relay.run("memory", "clear", token=bob)
    assert (r.code, r.out.strip()) == (0, "there was no note to clear")
    assert await get_note(relay.db, "space-a", "telegram:501") is not None

    r = await relay.run("--json", "memory", token=ada)
    assert '"user_key": "telegram:501"' in r.out
    r = await relay.run("memory", "clear", token=ada)
    assert (r.code, r.out.strip()) == (0, "note cleared")
    assert await get_note(relay.db, "space-a", "telegram:501") is None


async def test_refusals_reach_stderr_with_what_to_do(relay: Relay) -> None:
    ada = relay.tokens.mint("run-ada", "space-a", "member", user_key="telegram:501")
    r = await relay.run("memory", "set", "x" * (MAX_NOTE_CHARS + 1), token=ada)
    assert r.code == 1 and "condense the note" in r.err and "HTTP 400" in r.err
    # The fixture's member token acts for nobody (a task without a creator).
    r = await relay.run("memory", "show")
    assert r.code == 1 and "acts for no person" in r.err and "HTTP 409" in r.err
