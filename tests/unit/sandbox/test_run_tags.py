"""Run ids that carry their process's tag, and which runs cleanup spares (sandbox/contract.py).

Several processes of one instance (a gateway's workers) may share one Docker engine and
one data dir. Each puts its tag in front of its run ids; at start a process removes its
own leftovers and dead processes', and leaves the runs of live others alone.
"""

from __future__ import annotations

import re
import uuid

import pytest

from mercury.core.roles import run_tag
from mercury.sandbox.contract import new_run_id, run_tag_of, spared_run
from mercury.sandbox.hardening import check_id

MINE = "aaaaaaaaaaaa"
LIVE = "bbbbbbbbbbbb"
DEAD = "cccccccccccc"


def test_an_untagged_run_id_is_sixteen_hex_digits() -> None:
    run_id = new_run_id()
    assert re.fullmatch(r"[0-9a-f]{16}", run_id)
    assert check_id("run id", run_id) == run_id
    assert run_tag_of(run_id) is None


def test_a_tagged_run_id_is_the_tag_a_dash_and_sixteen_hex_digits() -> None:
    tag = run_tag(f"mercury-{uuid.uuid4().hex[:12]}")
    run_id = new_run_id(tag)
    assert re.fullmatch(rf"{tag}-[0-9a-f]{{16}}", run_id)
    # A run id names an io dir, an outputs folder, a socket folder and a container: each
    # of those refuses a run id this check refuses.
    assert check_id("run id", run_id) == run_id
    assert run_tag_of(run_id) == tag


def test_run_ids_are_fresh_each_time() -> None:
    ids = {new_run_id(MINE) for _ in range(200)}
    assert len(ids) == 200


@pytest.mark.parametrize(
    ("run_id", "tag"),
    [
        ("0123456789abcdef", None),  # `mercury sandbox run`, or made before tags
        ("aaaaaaaaaaaa-0123456789abcdef", "aaaaaaaaaaaa"),
        ("run-12", "run"),  # anything before the first dash
        ("-0123456789abcdef", None),  # an empty tag is no tag
        ("", None),
    ],
)
def test_the_tag_read_back_from_a_run_id(run_id: str, tag: str | None) -> None:
    assert run_tag_of(run_id) == tag


@pytest.mark.parametrize(
    ("run_id", "mine", "live", "spared"),
    [
        # Another live process's run: its container and folders stay.
        (f"{LIVE}-0123456789abcdef", MINE, {LIVE}, True),
        (f"{LIVE}-0123456789abcdef", MINE, {LIVE, DEAD}, True),
        # A dead (or never seen) process's run: an orphan.
        (f"{DEAD}-0123456789abcdef", MINE, {LIVE}, False),
        (f"{LIVE}-0123456789abcdef", MINE, set(), False),
        # This process's own leftovers are its own to remove, even if its tag is listed.
        (f"{MINE}-0123456789abcdef", MINE, {LIVE}, False),
        (f"{MINE}-0123456789abcdef", MINE, {MINE, LIVE}, False),
        # An untagged run cannot be told apart: removed, as before tags.
        ("0123456789abcdef", MINE, {LIVE}, False),
        ("0123456789abcdef", MINE, {LIVE, ""}, False),
        # A process without a tag (a runner the App did not tag) still spares live others.
        (f"{LIVE}-0123456789abcdef", "", {LIVE}, True),
    ],
)
def test_which_runs_cleanup_spares(run_id: str, mine: str, live: set[str], spared: bool) -> None:
    assert spared_run(run_id, mine, live) is spared


def test_a_fresh_run_of_a_live_process_is_spared_by_the_others() -> None:
    # End to end over the helpers: what one process makes, another recognises as live.
    theirs = new_run_id(LIVE)
    assert spared_run(theirs, MINE, frozenset({LIVE}))
    assert not spared_run(new_run_id(MINE), MINE, frozenset({LIVE, MINE}))
    assert not spared_run(new_run_id(), MINE, frozenset({LIVE}))
